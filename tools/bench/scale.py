"""The scale benchmark: a billion-edge graph whose topology and features do not fit in memory.

Generates a graph with ``gnn-ooc synth`` (default 50 M nodes, 10 edges per node, symmetrised by
``preprocess --undirected`` to 1 B CSC edges: 4 GB of int32 ``indices``, 0.4 GB of ``indptr``;
128-dim float16 features, 12.8 GB, with ``--noise-kind uniform4``; 1 % of the nodes train, 0.1 %
each validate and test), then
runs every stage as a user would, each in a child process under ``../shared/tools/memcap.sh``
at ``--cap`` (default 4 GB, page cache included, the cache dropped first):

* ``synth`` and ``preprocess`` (its I/O floor measured in the same run: reading the raw files and
  writing the dataset's bytes, the faster of buffered and O_DIRECT each); the raw folder is
  deleted once preprocessed;
* ``plan``: ``gnn-ooc sample`` of ``--plan-epochs`` epochs (``--topology auto``: the log says it
  sweeps), and the same epochs uncapped, the topology read into the page cache first
  (``--topology memory``), for the ratio; the two plans must be byte-identical. The ratio is of
  the epochs after the first (the steady state: the first also builds the seeds' first-hop
  index, one sweep); the first epoch's ratio is reported beside it;
* ``train``: ``gnn-ooc train --mode offline`` for three epochs with evaluation after the last,
  capped, and the same uncapped; the middle epoch (trained while the next is planned and packed
  in the background: the steady state) is compared.

Reported per stage: seconds, the child's peak RSS and the cgroup's peak (page cache included),
bytes read from and written to the disk (``/sys/block`` counters of the work folder's disk),
sampled edges/s for plans, and the disk the work folder uses after it.

Example:
    $ python -m gnn_ooc.tools.bench.scale                                  # ~1 B edges, ~25 minutes here
    $ python -m gnn_ooc.tools.bench.scale --nodes 2000000 --cap 1e9 --budget 256M --json
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gnn_ooc.graphstore.io.owned import PLAN, RUN, SYNTH_RAW
from gnn_ooc.tools.bench.preprocess import (
    drop_caches,
    emit,
    files_under,
    read_once,
    remove_own,
    write_once,
)
from gnn_ooc.units import format_size, parse_size

DEFAULT_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-scale"
MEMCAP = Path(__file__).resolve().parents[3] / "shared" / "tools" / "memcap.sh"
CHILD_TAG = "bench-scale-child "
GOALS = {"plan_capped_vs_uncapped": (">=", 0.5), "epoch_capped_vs_uncapped": ("<=", 1.5),
         "preprocess_vs_floor": ("<=", 3.0)}


def say(msg: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- measuring a child ---------------------------------------------------------------------------
def child_main(cmd: list[str]) -> int:
    """Run ``cmd``, then print its resource usage (peak RSS of the largest descendant) on stderr."""
    rc = subprocess.call(cmd)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(CHILD_TAG + json.dumps({"maxrss": ru.ru_maxrss * 1024, "user_s": ru.ru_utime, "sys_s": ru.ru_stime}),
          file=sys.stderr, flush=True)
    return rc


def disk_counters(path: Path) -> tuple[int, int]:
    """Bytes read and written so far by the disk holding ``path`` (sectors of 512 B)."""
    st = os.stat(path)
    stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat")
    try:
        fields = stat.read_text().split()
    except OSError:
        return 0, 0
    return int(fields[2]) * 512, int(fields[6]) * 512


def used_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path)) if path.exists() else 0


def run_stage(args: argparse.Namespace, name: str, cmd: list[str], *, capped: bool) -> dict[str, Any]:
    wrapped = [sys.executable, "-m", "gnn_ooc.tools.bench.scale", "--child", "--", *cmd]
    if capped:
        wrapped = ["bash", str(args.memcap), str(args.cap), *wrapped]
    say(f"{name}: {' '.join(cmd[2:] if cmd[:2] == [sys.executable, '-m'] else cmd)}" + (" (capped)" if capped else ""))
    r0, w0 = disk_counters(args.work)
    t0 = time.perf_counter()
    proc = subprocess.run(wrapped, capture_output=True, text=True, timeout=args.timeout)
    seconds = time.perf_counter() - t0
    r1, w1 = disk_counters(args.work)
    child: dict[str, Any] = next((json.loads(line[len(CHILD_TAG):]) for line in proc.stderr.splitlines() if line.startswith(CHILD_TAG)), {})
    peak = re.search(r"peak_bytes=(\d+)", proc.stderr)
    out = {"stage": name, "capped": capped, "exit": proc.returncode, "seconds": seconds,
           "peak_rss": child.get("maxrss"), "cgroup_peak": int(peak.group(1)) if peak else None,
           "read_bytes": r1 - r0, "written_bytes": w1 - w0, "disk_used": used_bytes(args.work),
           "log": [line for line in proc.stderr.splitlines() if "topology" in line or "sweeps" in line][-4:]}
    if proc.returncode:
        out["error"] = proc.stderr.strip()[-3000:]
        say(f"{name} failed ({proc.returncode}):\n{out['error']}")
    out["stdout"] = proc.stdout
    say(f"{name}: {seconds:.1f} s, peak RSS {format_size(child.get('maxrss') or 0)}, read {format_size(r1 - r0)}, "
        f"wrote {format_size(w1 - w0)}, disk used {format_size(used_bytes(args.work))}")
    return out


def cli(*argv: object) -> list[str]:
    return [sys.executable, "-m", "gnn_ooc.tools.cli", *(str(a) for a in argv)]


# --- the stages ----------------------------------------------------------------------------------
def build(args: argparse.Namespace, stages: list[dict[str, Any]]) -> None:
    raw, ds = args.work / "raw", args.work / "dataset"
    marker = args.work / "bench-scale.json"
    want = {k: getattr(args, k) for k in ("nodes", "avg_degree", "feature_dim")}
    if marker.is_file() and json.loads(marker.read_text()).get("graph") == want and (ds / "manifest.json").is_file():
        say(f"reusing {ds}")
        return
    stages.append(run_stage(args, "synth", cli("synth", raw, "--nodes", args.nodes, "--avg-degree", args.avg_degree,
                                               "--feature-dim", args.feature_dim, "--feature-dtype", "float16", "--noise-kind", "uniform4",
                                               "--classes", 16, "--split", "0.01,0.001,0.001", "--overwrite"),
                            capped=True))
    if stages[-1]["exit"]:
        return  # e.g. synth refused a raw folder that is not its own: nothing below may touch it
    stages.append(run_stage(args, "preprocess", cli("preprocess", raw, "-o", ds, "--undirected", "--feature-dtype",
                                                    "float16", "--memory-budget", args.budget, "--force",
                                                    "--no-progress", "--json"), capped=True))
    if stages[-1]["exit"]:
        return
    stages[-1]["floor"] = io_floor(raw, used_bytes(ds), args.work)
    remove_own(raw, SYNTH_RAW)  # what preprocess read: 21 GB at the default size; the dataset is what is reused
    marker.write_text(json.dumps({"graph": want}))


def io_floor(raw: Path, out_bytes: int, scratch: Path) -> dict[str, float]:
    """Reading the raw files (the faster of buffered and O_DIRECT) plus writing ``out_bytes``
    (measured on at most 4 GB, scaled: the disk has no room for a second dataset)."""
    files = files_under(raw)
    timed = {}
    for direct in (False, True):
        drop_caches()
        t = time.perf_counter()
        read_once(files, direct)
        timed[f"read_{'direct' if direct else 'buffered'}_s"] = time.perf_counter() - t
    sample = min(out_bytes, 4 << 30)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".floor-") as tmp:  # a name of its own in --work
        for direct in (False, True):
            drop_caches()
            t = time.perf_counter()
            write_once(Path(tmp) / "floor.bin", sample, direct)
            timed[f"write_{'direct' if direct else 'buffered'}_s"] = (time.perf_counter() - t) * out_bytes / max(1, sample)
    floor = min(timed["read_buffered_s"], timed["read_direct_s"]) + min(timed["write_buffered_s"], timed["write_direct_s"])
    return {**timed, "floor_s": floor, "read_bytes": sum(p.stat().st_size for p in files), "write_bytes": out_bytes}


def plan(args: argparse.Namespace, stages: list[dict[str, Any]]) -> None:
    ds = args.work / "dataset"
    base = ("sample", ds, "--fanouts", args.fanouts, "--batch-size", args.batch_size, "--memory-budget", args.budget,
            "--epochs", args.plan_epochs, "--force", "--no-progress", "--json")
    warm_topology(ds)
    stages.append(run_stage(args, "plan uncapped", cli(*base, "--name", "uncapped", "--topology", "memory"),
                            capped=False))
    stages.append(run_stage(args, "plan capped", cli(*base, "--name", "capped", "--topology", "auto"), capped=True))
    for st in stages[-2:]:
        if not st["exit"]:
            epochs = json.loads(st["stdout"])["epochs"]
            first, rest = epochs[0], epochs[1:] or epochs[:1]
            st.update(edges=first["edges"], plan_s=first["seconds"], epochs_s=[e["seconds"] for e in epochs],
                      first_edges_per_s=first["edges"] / first["seconds"],
                      edges_per_s=sum(e["edges"] for e in rest) / sum(e["seconds"] for e in rest),
                      sweeps=[e.get("sweeps") for e in epochs], sweep_bytes=[e.get("bytes_read") for e in epochs])
    stages[-1]["identical"] = same_plans(ds / "plans" / "uncapped", ds / "plans" / "capped", args.plan_epochs)
    for name in ("uncapped", "capped"):
        remove_own(ds / "plans" / name, PLAN)


def same_plans(a: Path, b: Path, epochs: int) -> bool:
    """Whether every array file of the first ``epochs`` epochs of plans ``a`` and ``b`` is the same bytes."""
    names = [sorted(p.name for p in (root / f"epoch-{e:06d}").glob("*.npy")) for root in (a, b) for e in range(epochs)]
    if names[:epochs] != names[epochs:] or not all(names[:epochs]):
        return False  # an epoch or a file missing on either side
    try:
        return all(filecmp.cmp(a / f"epoch-{e:06d}" / n, b / f"epoch-{e:06d}" / n, shallow=False)
                   for e in range(epochs) for n in names[e])
    except OSError:
        return False


def warm_topology(ds: Path) -> None:
    """The uncapped runs' page cache: the topology read once (it fits in this machine's memory)."""
    read_once([ds / "indptr.npy", ds / "indices.npy"], direct=False)


def train(args: argparse.Namespace, stages: list[dict[str, Any]]) -> None:
    ds = args.work / "dataset"
    for capped in (False, True):
        run = args.work / "runs" / ("capped" if capped else "uncapped")
        remove_own(run, RUN)  # an earlier run of ours; train --out refuses anything else
        if not capped:
            warm_topology(ds)
        cmd = cli("train", ds, "--mode", "offline", "--epochs", 3, "--eval-every", 3, "--out", run, "--fanouts",
                  args.fanouts, "--batch-size", args.batch_size, "--hidden", args.hidden, "--memory-budget", args.budget,
                  "--topology", "auto" if capped else "memory", "--no-progress")
        st = run_stage(args, f"train {'capped' if capped else 'uncapped'}", cmd, capped=capped)
        if not st["exit"]:
            summary = json.loads((run / "summary.json").read_text())
            e = summary["epochs"]
            st.update(epoch_s=e[1]["seconds"], epochs_s=[x["seconds"] for x in e], setup_s=summary.get("setup_seconds"),
                      stages_s={k[:-2]: v for k, v in e[1].items() if k.endswith("_s")},
                      valid_acc=e[-1].get("valid_acc"), test_acc=e[-1].get("test_acc"),
                      memory=summary.get("memory"))
        stages.append(st)
        remove_own(run, RUN)
        for p in (ds / "plans").glob("run-*"):
            remove_own(p, PLAN)


# --- the report ----------------------------------------------------------------------------------
def ratios(stages: list[dict[str, Any]]) -> dict[str, Any]:
    by = {s["stage"]: s for s in stages if not s["exit"]}
    out: dict[str, Any] = {}
    if "plan capped" in by and "plan uncapped" in by:
        out["plan_capped_vs_uncapped"] = by["plan capped"]["edges_per_s"] / by["plan uncapped"]["edges_per_s"]
        out["plan_first_epoch_capped_vs_uncapped"] = (by["plan capped"]["first_edges_per_s"]
                                                      / by["plan uncapped"]["first_edges_per_s"])
    if "train capped" in by and "train uncapped" in by:
        out["epoch_capped_vs_uncapped"] = by["train capped"]["epoch_s"] / by["train uncapped"]["epoch_s"]
    if "preprocess" in by:
        out["preprocess_vs_floor"] = by["preprocess"]["seconds"] / by["preprocess"]["floor"]["floor_s"]
    return {k: {"value": v, "goal": f"{GOALS[k][0]} {GOALS[k][1]}" if k in GOALS else None,
                "met": None if k not in GOALS else v >= GOALS[k][1] if GOALS[k][0] == ">=" else v <= GOALS[k][1]}
            for k, v in out.items()}


def table(report: dict[str, Any]) -> str:
    lines = ["| stage | capped | seconds | peak RSS | cgroup peak | disk read | disk written | edges/s | disk used after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in report["stages"]:
        eps = f"{s['edges_per_s'] / 1e6:.2f} M" if s.get("edges_per_s") else ""
        secs = f"{s['seconds']:.0f}" + (f" (epoch {s['epoch_s']:.0f})" if s.get("epoch_s") else "")
        lines.append(f"| {s['stage']} | {'yes' if s['capped'] else 'no'} | {secs if not s['exit'] else 'failed'} | "
                     f"{format_size(s['peak_rss'] or 0)} | {format_size(s['cgroup_peak']) if s['cgroup_peak'] else ''} | "
                     f"{format_size(s['read_bytes'])} | {format_size(s['written_bytes'])} | {eps} | "
                     f"{format_size(s['disk_used'])} |")
    lines.append("")
    for k, v in report["ratios"].items():
        verdict = "" if v["goal"] is None else f" (goal {v['goal']}: {'met' if v['met'] else 'NOT met'})"
        lines.append(f"{k}: {v['value']:.2f}{verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder, reused (default {DEFAULT_WORK})")
    p.add_argument("--nodes", type=int, default=50_000_000)
    p.add_argument("--avg-degree", type=float, default=10.0, help="synth edges per node (undirected: x2)")
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--plan-epochs", type=int, default=3, help="epochs the plan stage plans (default 3)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--cap", type=lambda s: int(float(s)), default=4_000_000_000, help="memcap bytes (default 4e9)")
    p.add_argument("--budget", default="2G", help="--memory-budget of every stage (default 2G)")
    p.add_argument("--stages", default="build,plan,train", help="which of build,plan,train to run")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds before a stage is killed")
    p.add_argument("--memcap", type=Path, default=MEMCAP)
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    parse_size(args.budget)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "--"]:
        return child_main(argv[2:])
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    stages: list[dict[str, Any]] = []
    steps = {"build": build, "plan": plan, "train": train}
    for name in args.stages.split(","):
        steps[name](args, stages)
        if any(s["exit"] for s in stages):
            break
    for s in stages:
        s.pop("stdout", None)
    report = {"graph": {k: getattr(args, k) for k in ("nodes", "avg_degree", "feature_dim")},
              "setup": {"cap": args.cap, "budget": args.budget, "fanouts": args.fanouts, "batch_size": args.batch_size},
              "stages": stages, "ratios": ratios(stages)}
    emit(table(report), report, args.json)
    return 0 if all(not s["exit"] for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
