"""Benchmark ``gnn-ooc train``: one epoch, four ways, on a graph whose features are >= 4x a memory cap.

Generates (or reuses, from ``--work``) a graph with ``gnn-ooc synth`` + ``gnn-ooc preprocess
--undirected --dedup --split`` (default 6 M nodes, 8 edges per node before symmetrising, 256
float32 features: 1 KiB rows, a 6.1 GB feature file, 4.1x the default 1.5 GB cap; 4 % of the
nodes train, 0.5 % each validate and test), then trains it with ``gnn-ooc train`` four ways,
each in a child process, the page cache dropped first:

* ``memory``: features read into RAM first (the reference; no cap, it cannot run under one);
* ``mmap``: online sampling + gathers through a memory map (the naive way), under the cap;
* ``online``: online sampling + the tiered store (a device cache of high in-degree rows, a SIEVE
  host cache, io_uring O_DIRECT reads), under the cap;
* ``offline``: plan + packed segments + caches placed by the plan, under the cap.

Every way trains the same batches (same seeds, same sampling keys, same model and seed) and the
same settings (``--memory-budget`` for the capped ways; ``memory``'s is that plus the features',
which it holds). The figure compared is one epoch's time
(the training pipeline from the first batch to the last step; evaluation and setup are reported
apart). ``memory`` and ``offline`` run three epochs and the middle one is compared: for
``offline`` that is the steady state, an epoch that waits for its own pack if it is late and
trains while the next epoch is planned and packed in the background. ``mmap`` and ``online``
run one epoch (their cost is reads; a second would take as long) and skip evaluation
(``--eval-every 0``). Setup is what runs before the first batch: reading the features into RAM
(memory), planning and packing epoch 0 in the foreground (offline). ``memory`` and ``offline``
evaluate after their last epoch: their valid and test accuracies must agree within a point.

Reported per way: epoch seconds, ratio to memory, speedup over mmap, per-stage seconds (the
stages overlap: their sum exceeds the epoch), overlap, disk bytes and read amplification, hit
rates per tier, the cgroup's peak (memcap.sh: page cache + process memory) and the child's
wall time; and a PNG (``--plot``, needs matplotlib: ``pip install 'gnn-ooc[bench]'``) of the
epoch times and the stage breakdown. Goals: offline epoch <= 1.2x memory, >= 10x faster than mmap.

Example:
    $ python -m gnn_ooc.tools.bench.train
    $ python -m gnn_ooc.tools.bench.train --ways memory,offline --json > train.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gnn_ooc.graphstore.io.owned import PLAN, RUN
from gnn_ooc.tools.bench.preprocess import drop_caches, emit, remove_own
from gnn_ooc.units import parse_size

GOAL_VS_MEMORY = 1.2
GOAL_VS_MMAP = 10.0
MIN_FILE_OVER_CAP = 4.0
WAYS = ("memory", "mmap", "online", "offline")
EPOCHS = {"memory": 3, "mmap": 1, "online": 1, "offline": 3}
MEASURED = {"memory": 1, "offline": 1}  # offline's steady state: waits for its pack if late, packs epoch 2
EVALUATES = ("memory", "offline")
DEFAULT_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-train"
MEMCAP = Path(__file__).resolve().parents[3] / "shared" / "tools" / "memcap.sh"
STAGE_ORDER = ("wait", "plan", "sample", "gather", "read", "assemble", "compute")


def say(msg: str) -> None:
    print(f"[bench-train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the dataset -------------------------------------------------------------------------------------
def ensure_dataset(args: argparse.Namespace) -> dict[str, Any]:
    from gnn_ooc.tools.bench.preprocess import ensure_dataset as build

    flags = ["--undirected", "--dedup", "--split", args.split]
    return build(args.work, args, marker="bench-train.json", flags=flags, say=say)


def dataset_info(args: argparse.Namespace) -> dict[str, Any]:
    from gnn_ooc.graphstore.format.dataset import Dataset

    ds = Dataset.open(args.work / "dataset")
    feats = ds.path / ds.manifest.files["features"].name
    topo = sum((ds.path / ds.manifest.files[k].name).stat().st_size for k in ("indptr", "indices"))
    return {"path": str(ds.path.resolve()), "nodes": ds.num_nodes, "edges": ds.num_edges,
            "feature_dim": ds.feature_dim, "feature_bytes": feats.stat().st_size, "topology_bytes": topo,
            "train": int(ds.split("train").size), "valid": int(ds.split("valid").size),
            "test": int(ds.split("test").size)}


# --- one way -----------------------------------------------------------------------------------------
def train_command(args: argparse.Namespace, way: str, run: Path) -> list[str]:
    cmd = [sys.executable, "-m", "gnn_ooc.tools.cli", "train", str(args.work / "dataset"), "--mode", way,
           "--epochs", str(EPOCHS[way]), "--eval-every", str(EPOCHS[way]) if way in EVALUATES else "0", "--out", str(run),
           "--fanouts", args.fanouts, "--batch-size", str(args.batch_size), "--hidden", str(args.hidden),
           "--seed", str(args.seed), "--memory-budget", str(memory_way_budget(args) if way == "memory" else args.budget),
           "--no-progress"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if way == "memory":
        return cmd
    return ["bash", str(args.memcap), str(args.cap), *cmd]


def memory_way_budget(args: argparse.Namespace) -> int:
    """The reference holds the features in RAM: its budget is theirs plus what the capped ways get,
    plus the allocator's slack on both (a twelfth of a budget: ``memory.allocator_slack``; a budget
    that cannot hold the features is refused in memory mode)."""
    feats = args.work / "dataset" / "features.npy"
    if not feats.is_file():
        return int(args.budget)
    return (int(feats.stat().st_size) + int(args.budget)) * 12 // 11 + (1 << 20)


def run_way(args: argparse.Namespace, way: str) -> dict[str, Any]:
    from gnn_ooc.tools.bench.sampler import run_group

    run = args.work / "runs" / way
    remove_own(run, RUN)
    if way == "memory":
        drop_caches()  # memcap.sh drops it for the others
    say(f"{way}: training {EPOCHS[way]} epoch(s)" + ("" if way == "memory" else f" under a {args.cap >> 20} MiB cap"))
    t0 = time.perf_counter()
    try:
        rc, out, err = run_group(train_command(args, way, run), args.timeout)
    finally:
        _remove_plans(args.work / "dataset")
    result: dict[str, Any] = {"exit": rc, "wall_s": time.perf_counter() - t0}
    peak = re.search(r"peak_bytes=(\d+)", err)
    result["peak_bytes"] = int(peak.group(1)) if peak else None
    if rc:
        return {**result, "error": err.strip()[-3000:]}
    summary = json.loads((run / "summary.json").read_text())
    remove_own(run, RUN)
    return {**result, **digest(summary, MEASURED.get(way, 0))}


def _remove_plans(dataset: Path) -> None:
    for plan in (dataset / "plans").glob("run-*"):
        remove_own(plan, PLAN)


def digest(summary: dict[str, Any], epoch: int) -> dict[str, Any]:
    """What the report needs from a run's summary.json: the measured epoch and the run's totals."""
    e0, last = summary["epochs"][epoch], summary["epochs"][-1]
    stages = {k[:-2]: v for k, v in e0.items() if k.endswith("_s")}
    return {"epoch_s": e0["seconds"], "overlap": e0["overlap"], "stages": stages, "loss": e0["loss"],
            "valid_acc": last.get("valid_acc"), "test_acc": last.get("test_acc"),
            "measured_epoch": epoch, "epochs_s": [r["seconds"] for r in summary["epochs"]],
            "setup_s": summary.get("setup_seconds"), "disk_bytes": summary.get("disk_bytes_read", 0),
            "kernel_bytes": summary.get("kernel_read_bytes"),
            "read_amp": summary.get("read_amplification", 0.0), "hit_rates": summary.get("hit_rates", {}),
            "steps": summary["steps"]}


# --- the report --------------------------------------------------------------------------------------
def goals(runs: dict[str, Any]) -> dict[str, Any]:
    def epoch(way: str) -> float | None:
        r = runs.get(way, {})
        return None if r.get("exit", 1) else float(r["epoch_s"])

    mem, naive, off = epoch("memory"), epoch("mmap"), epoch("offline")
    out: dict[str, Any] = {}
    if mem and off:
        out["offline_vs_memory"] = {"value": off / mem, "goal": GOAL_VS_MEMORY, "met": off / mem <= GOAL_VS_MEMORY}
    if naive and off:
        out["mmap_vs_offline"] = {"value": naive / off, "goal": GOAL_VS_MMAP, "met": naive / off >= GOAL_VS_MMAP}
    accs = [runs.get(w, {}).get("test_acc") for w in EVALUATES]
    if all(a is not None for a in accs):
        gap = abs(accs[0] - accs[1])
        out["test_acc_gap"] = {"value": gap, "goal": 0.01, "met": gap <= 0.01}
    return out


def way_lines(report: dict[str, Any]) -> list[str]:
    runs, lines = report["runs"], []
    mem = runs.get("memory", {}).get("epoch_s") if not runs.get("memory", {}).get("exit", 1) else None
    naive = runs.get("mmap", {}).get("epoch_s") if not runs.get("mmap", {}).get("exit", 1) else None
    head = (f"{'way':<8} {'epoch s':>8} {'x memory':>9} {'mmap /':>7} {'overlap':>7} {'setup s':>8} "
            f"{'disk MB':>8} {'kern MB':>8} {'read amp':>8} {'peak MB':>8} {'wall s':>7}  hit rates")
    lines.append(head)
    notes = ["  disk MB, read amp: the store's own accounting of training over the run (evaluation apart; memory and",
             "  offline 3 epochs, mmap and online 1); kern MB: the kernel's read_bytes of the training process (mmap",
             "  page faults included; the background planner's reads not); peak MB: the cgroup's peak (page cache +",
             "  processes) from memcap.sh"]
    for way, r in runs.items():
        if r["exit"]:
            lines.append(f"{way:<8} FAILED (exit {r['exit']}): {r.get('error', '')[-400:]}")
            continue
        e = r["epoch_s"]
        hits = " ".join(f"{k} {100 * v:.0f}%" for k, v in r["hit_rates"].items())
        lines.append(
            f"{way:<8} {e:8.2f} {_ratio(e, mem):>9} {_ratio(naive, e):>7} {r['overlap']:7.2f} "
            f"{_num(r['setup_s']):>8} {r['disk_bytes'] / 1e6:8.0f} "
            f"{_num(None if r['kernel_bytes'] is None else r['kernel_bytes'] / 1e6, 0):>8} {r['read_amp']:8.2f} "
            f"{_num(None if r['peak_bytes'] is None else r['peak_bytes'] / 1e6, 0):>8} {r['wall_s']:7.0f}  {hits}")
    return lines + notes


def stage_lines(report: dict[str, Any]) -> list[str]:
    lines = ["stage seconds in the measured epoch (stages overlap; compute = forward, backward, step):"]
    for way, r in report["runs"].items():
        if not r["exit"]:
            stages = " ".join(f"{k} {v:.2f}" for k, v in sorted(r["stages"].items(), key=_stage_key))
            accs = "" if r["test_acc"] is None else f" | valid {100 * r['valid_acc']:.2f}% test {100 * r['test_acc']:.2f}%"
            rest = "" if len(r["epochs_s"]) < 2 else " | epochs " + ", ".join(f"{x:.2f}" for x in r["epochs_s"]) + " s"
            lines.append(f"  {way:<8} {stages}{accs}{rest}")
    return lines


def _stage_key(item: tuple[str, float]) -> int:
    return STAGE_ORDER.index(item[0]) if item[0] in STAGE_ORDER else len(STAGE_ORDER)


def _ratio(a: float | None, b: float | None) -> str:
    return "" if not a or not b else f"{a / b:.2f}x"


def _num(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def table(report: dict[str, Any]) -> str:
    g, s = report["graph"], report["setup"]
    lines = [
        f"graph: {g['nodes']:,} nodes, {g['edges']:,} edges, {g['feature_dim']} features "
        f"({g['feature_bytes'] / 1e9:.2f} GB, {s['file_over_cap']:.1f}x the {s['cap'] / 1e6:.0f} MB cap; "
        f"topology {g['topology_bytes'] / 1e6:.0f} MB); train {g['train']:,}, valid {g['valid']:,}, test {g['test']:,}",
        f"settings: sage, hidden {s['hidden']}, fan-outs {s['fanouts']}, batch {s['batch_size']}, memory budget "
        f"{s['budget'] >> 20} MiB, {os.cpu_count()} cores, threads {s['threads'] or 'all'}",
        "", *way_lines(report), "", *stage_lines(report), "",
    ]
    for name, goal in report["goals"].items():
        lines.append(f"goal {name}: {goal['value']:.3f} (goal {goal['goal']}) {'met' if goal['met'] else 'NOT MET'}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Epoch time per way (log scale) and each way's stage seconds, side by side."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"no plot: matplotlib is not installed (pip install 'gnn-ooc[bench]'); {path} not written")
        return
    runs = {w: r for w, r in report["runs"].items() if not r["exit"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ways = list(runs)
    left.barh(ways, [runs[w]["epoch_s"] for w in ways], color=["#4c72b0", "#c44e52", "#dd8452", "#55a868"][: len(ways)])
    left.set_xscale("log")
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a log axis
    left.set_xlim(right=max(runs[w]["epoch_s"] for w in ways) * 3)
    left.set_xlabel("epoch seconds (log)")
    left.invert_yaxis()
    for i, w in enumerate(ways):
        left.text(runs[w]["epoch_s"], i, f" {runs[w]['epoch_s']:.1f} s", va="center")
    left.set_title(f"one epoch, features {report['setup']['file_over_cap']:.1f}x the memory cap")
    stages = [s for s in STAGE_ORDER if any(s in runs[w]["stages"] for w in ways)]
    width = 0.8 / max(1, len(stages))
    for j, st in enumerate(stages):
        right.barh([i + j * width for i in range(len(ways))], [runs[w]["stages"].get(st, 0.0) for w in ways],
                   height=width, label=st)
    right.set_yticks([i + 0.4 - width / 2 for i in range(len(ways))], ways)
    right.set_xscale("log")
    right.invert_yaxis()
    right.set_xlabel("stage seconds in the epoch (stages overlap; log)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    say(f"plot written to {path}")


# --- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"graph folder, reused (default {DEFAULT_WORK})")
    p.add_argument("--nodes", type=int, default=8_000_000)
    p.add_argument("--avg-degree", type=float, default=8.0, help="synth edges per node (undirected: x2)")
    p.add_argument("--feature-dim", type=int, default=256)
    p.add_argument("--split", default="0.03,0.004,0.004", help="train,valid,test fractions (preprocess --split)")
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="--threads of every run (default: all cores)")
    p.add_argument("--cap", type=parse_size, default=2_000_000_000, help="memcap bytes (default 2 GB)")
    p.add_argument("--budget", type=parse_size, default=parse_size("512M"), help="--memory-budget of the runs")
    p.add_argument("--ways", default=",".join(WAYS), help=f"which of {','.join(WAYS)} to run")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed")
    p.add_argument("--memcap", type=Path, default=MEMCAP)
    p.add_argument("--plot", type=Path, default=Path("bench-train.png"), help="PNG to write (default bench-train.png)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    bad = [w for w in args.ways if w not in WAYS]
    if bad:
        p.error(f"--ways: unknown {', '.join(bad)}; expected some of {', '.join(WAYS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    built = ensure_dataset(args)
    graph = dataset_info(args)
    over = graph["feature_bytes"] / args.cap
    if over < MIN_FILE_OVER_CAP:
        say(f"warning: the features are only {over:.1f}x the cap; the issue asks for >= {MIN_FILE_OVER_CAP}x")
    runs = {way: run_way(args, way) for way in args.ways}
    report = {"graph": {**graph, "built": built}, "runs": runs,
              "setup": {"cap": args.cap, "file_over_cap": over, "budget": args.budget, "hidden": args.hidden,
                        "fanouts": args.fanouts, "batch_size": args.batch_size, "threads": args.threads}}
    report["goals"] = goals(runs)
    emit(table(report), report, args.json)
    plot(report, args.plot)
    return 0 if all(not r["exit"] for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
