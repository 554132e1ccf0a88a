"""The cache ablation: static placement against the future-aware cache with its victim buffer.

For each graph and each device-cache size (a fraction of the feature bytes), epoch 1 planned as
``gnn-ooc train`` plans it (after epoch 0, which the caches that carry over warm) is packed twice
with the same memory, the way training sizes its
caches (``tiering.place_from_counts`` / ``place_for_future``: the device cache, and a pinned
budget of half its size that static placement fills with the next-hottest rows and the
future-aware cache splits into a victim buffer and a static pinned cache). Reported per run:
the share of batch rows the caches serve (per tier), the bytes packed for the epoch (what
training reads back) and the packing time; the future-aware cache's hit rate is compared with
the same policy knowing the whole epoch (window = every batch; on the first
``--belady-batches`` batches, as the full window's tables grow with the epoch). Epoch times need
training runs and are not measured here.

The graphs: the training benchmark's (``bench.train``'s dataset, reused) and a smaller power-law
graph with weaker locality (degree exponent 2.8 instead of 2.1), generated once.

Example:
    python -m gnn_ooc.tools.bench.cache --sizes 1,5,10,25 --plot docs/bench-cache.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gnn_ooc.errors import GnnOocError, OutputError
from gnn_ooc.units import format_size

DEFAULT_TRAIN_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-train"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-cache"
PLAN = "bench-cache"


def say(msg: str) -> None:
    print(f"[bench-cache {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Counting:
    """A ``Serving`` that counts what the one it wraps serves (rows per batch, and fills)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.rows, self.served, self.fills = inner, 0, 0, 0

    def identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "bench": "counting"}

    def begin(self, epoch: Any, **kw: Any) -> None:
        self.inner.begin(epoch, **kw)

    def end(self) -> None:
        self.inner.end()

    def start_state(self) -> dict[str, np.ndarray]:
        return self.inner.start_state()

    def step(self, t: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        served, fills = self.inner.step(t, nodes)
        self.rows += int(nodes.size)
        self.served += int(served.sum())
        self.fills += int(fills.size)
        return served, fills


def make_graph(work: Path, nodes: int, degree: float, dim: int, exponent: float) -> Path:
    """The weaker-locality graph (generated and preprocessed once; reused)."""
    from gnn_ooc.graphstore.ingest.base import PreprocessSpec
    from gnn_ooc.graphstore.ingest.preprocess import preprocess
    from gnn_ooc.graphstore.io.owned import SYNTH_RAW
    from gnn_ooc.tools.bench.preprocess import remove_own
    from gnn_ooc.tools.synth import SynthConfig, synth

    ds = work / "dataset"
    if (ds / "manifest.json").is_file():
        return ds
    raw = work / "raw"
    say(f"generating {nodes:,} nodes, degree exponent {exponent}")
    synth(raw, SynthConfig(nodes=nodes, avg_degree=degree, feature_dim=dim, classes=8, seed=1,
                           power_law_exponent=exponent))
    preprocess(PreprocessSpec(output=ds, edges=(raw / "edges.parquet",), undirected=True, dedup=True,
                              features=raw / "node_features.npy", labels=raw / "node_labels.npy",
                              split=(0.03, 0.004, 0.004)))
    remove_own(raw, SYNTH_RAW)  # regenerated in seconds; the dataset is what gets reused
    return ds


def plan_epoch(ds_path: Path, fanouts: list[int], batch_size: int) -> Any:
    from gnn_ooc.graphstore.format.dataset import Dataset
    from gnn_ooc.sampler.neighbor import NeighborSampler
    from gnn_ooc.sampler.plan import Planner, PlanSpec

    ds = Dataset.open(ds_path)
    path = ds.path / "plans" / PLAN
    if path.exists() or path.is_symlink():
        # never replaced: it may be a plan of the user's of that name; this benchmark removes only
        # the plan it made in this run (a killed run leaves it: removing it is the user's call)
        raise OutputError(f"{path} exists: a plan of yours, or one a killed bench-cache run left; remove it "
                          f"(gnn-ooc clean {ds.path} --all-plans, or rm -r) and run again")
    planner = Planner(ds, NeighborSampler(ds, fanouts), PlanSpec(name=PLAN, batch_size=batch_size, seed=0))
    for e in (0, 1):  # epoch 0 warms the caches that carry over; epoch 1 is measured
        planner.plan_epoch(e)
    return ds, planner.plan


def one_run(ds: Any, plan: Any, policy: str, fraction: float, window: int, budget: int) -> dict[str, Any]:
    from gnn_ooc.graphstore.features.tiering import (
        CacheBudgets,
        place_for_future,
        place_from_counts,
    )
    from gnn_ooc.graphstore.io.atomic import remove_dir
    from gnn_ooc.graphstore.pack.format import PackSpec, epoch_dir, packs_dir
    from gnn_ooc.graphstore.pack.writer import fit_segment_batches, pack_epoch

    entry = ds.manifest.files["features"]
    device = int(fraction * entry.size)
    budgets = CacheBudgets(gpu_cache=device, cpu_cache=device // 2, memory_budget=budget)
    counts = np.asarray(plan.epoch(0).access_counts())
    placement = (place_for_future(counts, ds.feature_row_bytes, budgets, False, window) if policy == "future"
                 else place_from_counts(counts, ds.feature_row_bytes, budgets, False))
    name = f"{PLAN}-{policy}-{round(fraction * 1000)}"
    segments = fit_segment_batches(plan.epoch(1), ds.feature_row_bytes, budget // 8)
    spec = PackSpec(name=name, segment_batches=segments, memory_budget=budget)
    pack_epoch(plan, 0, placement.serving, ds.path / entry.name, spec)  # the future cache carries its end over
    remove_dir(epoch_dir(plan.path, name, 0), plan.path)  # disk: only the measured epoch's pack at a time
    serving = Counting(placement.serving)
    t0 = time.perf_counter()
    stats = pack_epoch(plan, 1, serving, ds.path / entry.name, spec)
    seconds = time.perf_counter() - t0
    remove_dir(packs_dir(plan.path, name), plan.path)
    start = None if placement.future is None else placement.future.started
    return {"policy": policy, "cache_fraction": fraction, "device_bytes": device, "segment_batches": segments,
            "rows": serving.rows, "hit_rate": serving.served / max(1, serving.rows), "fills": serving.fills,
            "packed_bytes": stats.bytes_written, "pack_seconds": seconds,
            "packed_vs_features": stats.bytes_written / entry.size, "_start": start}


def belady(ds: Any, plan: Any, fraction: float, window: int, batches: int, start: Any) -> dict[str, Any]:
    """Hit rates on the first ``batches`` batches of epoch 1, from the state epoch 0 left: the
    future-aware cache with its window, and the same policy knowing all of them (the optimum it
    approximates), in the same memory."""
    from gnn_ooc.graphstore.features.policies.future import FutureServing
    from gnn_ooc.graphstore.features.tiering import CacheBudgets, place_for_future

    entry = ds.manifest.files["features"]
    device = int(fraction * entry.size)
    epoch = plan.epoch(1)
    n = min(batches, len(epoch))
    counts = np.asarray(epoch.access_counts())
    placement = place_for_future(counts, ds.feature_row_bytes, CacheBudgets(gpu_cache=device, cpu_cache=device // 2),
                                 False, window)
    f = placement.future
    assert f is not None
    prefix = [epoch.nodes(b) for b in range(n)]
    out = {}
    for label, w in (("window", window), ("whole", n)):
        serving = Counting(FutureServing(f.capacity, f.victim_rows, f.num_rows, w, pinned=f.pinned))
        serving.begin(prefix, start=start)
        for b in range(n):
            serving.step(b, prefix[b])
        out[label] = serving.served / max(1, serving.rows)
    return {"cache_fraction": fraction, "batches": n, "hit_rate_window": out["window"], "hit_rate_whole": out["whole"],
            "gap_points": 100 * (out["whole"] - out["window"])}


def graph_report(label: str, ds_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    ds, plan = plan_epoch(ds_path, args.fanouts, args.batch_size)
    feats = ds.manifest.files["features"].size
    say(f"{label}: {ds.num_nodes:,} nodes, {ds.num_edges:,} edges, features {format_size(feats)}, "
        f"{len(plan.epoch(1))} batches an epoch")
    runs = []
    for pct in args.sizes:
        for policy in ("static", "future"):
            r = one_run(ds, plan, policy, pct / 100, args.window, args.budget)
            say(f"{label} {pct:g} % {policy}: hit rate {100 * r['hit_rate']:.1f} %, packed {format_size(r['packed_bytes'])} "
                f"in {r['pack_seconds']:.1f} s")
            runs.append(r)
    starts = {r["cache_fraction"]: r.pop("_start") for r in runs if r["policy"] == "future"}
    for r in runs:
        r.pop("_start", None)
    opt = [belady(ds, plan, pct / 100, args.window, args.belady_batches, starts.get(pct / 100))
           for pct in args.belady_sizes]
    for o in opt:
        say(f"{label} {100 * o['cache_fraction']:g} %: future {100 * o['hit_rate_window']:.1f} % vs whole-epoch "
            f"{100 * o['hit_rate_whole']:.1f} % on {o['batches']} batches")
    from gnn_ooc.graphstore.io.owned import PLAN as PLAN_KIND
    from gnn_ooc.tools.bench.preprocess import remove_own

    batches = len(plan.epoch(1))
    remove_own(plan.path, PLAN_KIND)  # the plan this run made (plan_epoch refuses one that was there)
    return {"graph": label, "nodes": ds.num_nodes, "edges": ds.num_edges, "feature_bytes": feats,
            "batches": batches, "runs": runs, "belady": opt}


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size: packed bytes future / static, hit rates, pack overhead (packed / feature bytes)."""
    out = []
    by = {(r["policy"], r["cache_fraction"]): r for r in report["runs"]}
    for (policy, frac), r in by.items():
        if policy != "future":
            continue
        s = by[("static", frac)]
        out.append({"cache_fraction": frac, "packed_ratio": r["packed_bytes"] / max(1, s["packed_bytes"]),
                    "hit_static": s["hit_rate"], "hit_future": r["hit_rate"],
                    "overhead_static": s["packed_vs_features"], "overhead_future": r["packed_vs_features"]})
    return out


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"no plot: matplotlib is not installed (pip install 'gnn-ooc[bench]'); {path} not written")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for rep in reports:
        rows = ratios(rep)
        x = [100 * r["cache_fraction"] for r in rows]
        axes[0].plot(x, [100 * r["hit_static"] for r in rows], "o--", label=f"{rep['graph']}: static")
        axes[0].plot(x, [100 * r["hit_future"] for r in rows], "o-", label=f"{rep['graph']}: future + victim")
        axes[1].plot(x, [r["overhead_static"] for r in rows], "o--", label=f"{rep['graph']}: static")
        axes[1].plot(x, [r["overhead_future"] for r in rows], "o-", label=f"{rep['graph']}: future + victim")
    axes[0].set(xlabel="device cache, % of feature bytes", ylabel="batch rows served by the caches, %", xscale="log")
    axes[1].set(xlabel="device cache, % of feature bytes", ylabel="packed bytes per epoch / feature bytes", xscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    say(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gnn_ooc.tools.bench.cache", description=__doc__.split("\n")[0])
    p.add_argument("--train-work", type=Path, default=DEFAULT_TRAIN_WORK, help="bench.train's folder (its dataset)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="the weaker-locality graph's folder (reused)")
    p.add_argument("--nodes", type=int, default=2_000_000, help="nodes of the weaker-locality graph")
    p.add_argument("--exponent", type=float, default=2.8, help="its degree exponent")
    p.add_argument("--sizes", default="1,5,10,25", help="device cache sizes, % of the feature bytes")
    p.add_argument("--belady-sizes", default="5", help="sizes at which the whole-epoch optimum is computed")
    p.add_argument("--belady-batches", type=int, default=60)
    p.add_argument("--window", type=int, default=16, help="the future-aware cache's look-ahead (--cache-window)")
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--budget", type=int, default=512 << 20, help="packing memory budget, bytes")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--graphs", default="train,weak")
    args = p.parse_args(argv)
    args.sizes = [float(x) for x in args.sizes.split(",")]
    args.belady_sizes = [float(x) for x in args.belady_sizes.split(",")] if args.belady_sizes else []
    args.fanouts = [int(x) for x in args.fanouts.split(",")]
    try:
        reports = [r for g in args.graphs.split(",") if (r := graph(g, args)) is not None]
    except GnnOocError as e:
        say(f"error: {e}")
        return e.exit_code
    out = {"reports": reports, "ratios": {r["graph"]: ratios(r) for r in reports}}
    print(json.dumps(out, indent=2))
    if args.plot is not None:
        plot(reports, args.plot)
    return 0


def graph(g: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Graph ``g``'s report (``train``: bench.train's dataset, None when it is not there; else the
    weaker-locality graph, made once)."""
    if g == "train":
        ds = args.train_work / "dataset"
        if not (ds / "manifest.json").is_file():
            say(f"{ds}: no training benchmark dataset (run python -m gnn_ooc.tools.bench.train first); skipped")
            return None
    else:
        ds = make_graph(args.work, args.nodes, 8.0, 128, args.exponent)
    return graph_report(g, ds, args)


if __name__ == "__main__":
    sys.exit(main())
