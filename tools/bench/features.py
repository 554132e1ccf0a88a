"""Benchmark feature loading from disk under a memory cap: mmap vs O_DIRECT vs packed segments + caches.

Generates (or reuses, from ``--work``) a graph with ``gnn-ooc synth`` + ``gnn-ooc preprocess
--undirected --dedup`` (default 4.5 M nodes, average degree 8, 128 float32 features: 512 B
rows, a 2.3 GB feature file, 4.3x the default 512 MiB cap), then plans ONE EPOCH of the train
split cut to the first ``--batches`` x ``--batch-size`` seeds of its shuffled order (fan-outs
10,5): a prefix-sized epoch, measured whole. Times are reported per batch and extrapolated to
the full split's batch count (a linear estimate: cache hit shares and packing passes of a full
epoch differ; see the notes the report prints).

Each configuration loads every batch's features (its node ids, ``EpochPlan.nodes(b)``, read from
the plan inside the timed loop) in a child process under ``../shared/tools/memcap.sh CAP``: the
page cache is dropped first and the cgroup holds page cache + process memory under the cap.

a. ``MmapStore`` gathers (page faults, MADV_RANDOM, the page cache under the cap);
b. ``DirectStore`` (O_DIRECT, coalesced 4 KiB pages, ``--threads`` in flight), no cache; and
   b'. the same over io_uring (``--queue-depth`` in flight; skipped where io_uring is unavailable);
c. caches placed by the plan's access counts (``--device-cache`` + ``--pinned-cache``, 1/4 of
   the cap by default; CPU tensors without CUDA), filled before the epoch, the epoch packed
   before it (``pack_epoch``, timed in its own capped child), then ``BatchAssembler.batch(b)``:
   segments read with one sequential O_DIRECT read each, cached rows from the caches, rows of
   unpacked segments (``--pack-budget``) from a ``TieredStore`` over ``DirectStore``.

In the same run it measures the disk's sequential O_DIRECT read bandwidth (the feature file in
8 MiB requests: first, after packing, last; the median is the reference, since this machine's
virtual disk drifts by tens of percent), an O_DIRECT sequential write of as many bytes as
packing wrote, and, after c., a paired check: ``read_segment`` over every segment against 8 MiB
O_DIRECT reads of the same files, alternating which goes first. The goals:

* packed reads reach >= 80% of the sequential bandwidth: the segment reads inside c.'s loop
  against the median reference, and the paired check's median ratio (both must pass);
* read amplification of the packed path <= 1.05: (segment bytes read, with each file's 4 KiB
  header page and tail padding, + bytes read for unpacked misses) / (bytes of the rows those
  reads hold);
* packing time <= 2 x (sequential read of the feature file + O_DIRECT write of the packed bytes).

Disk bytes come from each store's own accounting and, as a cross-check, from the kernel's
``/proc/self/io`` ``read_bytes`` (what the process made the block layer read). The plan and its
pack are deleted at the end (``--keep-plan`` keeps them); the dataset stays in ``--work``.

Example:
    $ python -m gnn_ooc.tools.bench.features
    $ python -m gnn_ooc.tools.bench.features --batches 80 --cap 768M --json > features.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.tools.bench.preprocess import drop_caches, emit, read_once
from gnn_ooc.tools.bench.sampler import SplitView, remove_plan, run_group
from gnn_ooc.units import parse_size

GOAL_SEQ_FRACTION = 0.80
GOAL_READ_AMP = 1.05
GOAL_PACK_RATIO = 2.0
MIN_FILE_OVER_CAP = 4.0
PREPROCESS_FLAGS = ["--undirected", "--dedup"]
DEFAULT_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-features"
MEMCAP = Path(__file__).resolve().parents[3] / "shared" / "tools" / "memcap.sh"
PLAN_NAME = PACK_NAME = "bench-features"
STAGES = ("mmap", "direct", "direct-uring", "pack", "packed")
LABELS = {"mmap": "a. MmapStore gathers", "direct": "b. DirectStore O_DIRECT", "direct-uring": "b'. DirectStore io_uring",
          "packed": "c. packed + caches"}
_BLOCK = 8 << 20


# --- the dataset and the plan (parent) ---------------------------------------------------------------
def ensure_dataset(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from gnn_ooc.tools.bench.preprocess import ensure_dataset as build

    return build(work, args, marker="bench-features.json", flags=PREPROCESS_FLAGS, say=say)


def features_path(ds: Dataset) -> Path:
    return ds.path / ds.manifest.files["features"].name


def make_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Plan one epoch of the train split cut to ``--batches`` batches; the topology maps die on return."""
    from gnn_ooc.sampler.neighbor import NeighborSampler
    from gnn_ooc.sampler.plan import Plan, Planner, PlanSpec, epoch_order

    ds = Dataset.open(args.work / "dataset")
    remove_plan(Plan.path_for(ds, PLAN_NAME))
    train = np.asarray(ds.split("train"), dtype=np.int64)
    view = SplitView(ds, "train", epoch_order(train, args.seed, 0)[: args.batches * args.batch_size])
    spec = PlanSpec(name=PLAN_NAME, batch_size=args.batch_size, seed=args.seed)
    planner = Planner(view, NeighborSampler(view, args.fanouts), spec, force=True)
    stats = planner.plan_epoch(0)
    assert stats is not None
    counts = np.asarray(planner.plan.epoch(0).access_counts())
    return {"batches": stats.batches, "seeds": int(view.split("train").size), "nodes": stats.nodes,
            "edges": stats.edges, "plan_s": stats.seconds, "distinct_nodes": int(np.count_nonzero(counts)),
            "train_size": int(train.size), "full_batches": math.ceil(train.size / args.batch_size)}


# --- the disk's sequential bandwidth (parent) ----------------------------------------------------------
def seq_read(path: Path) -> dict[str, float]:
    """One O_DIRECT pass over ``path`` in 8 MiB requests, page cache dropped first."""
    drop_caches()
    t0 = time.perf_counter()
    n = read_once([path], direct=True)
    s = time.perf_counter() - t0
    return {"bytes": n, "seconds": s, "MBps": n / s / 1e6}


def seq_write(path: Path, nbytes: int) -> dict[str, float]:
    """An O_DIRECT sequential write of ``nbytes`` (8 MiB requests, fsync), the data made beforehand."""
    from gnn_ooc.graphstore.io.directio import SequentialWriter

    block = np.frombuffer(os.urandom(_BLOCK), dtype=np.uint8)
    drop_caches()
    t0 = time.perf_counter()
    w, left = SequentialWriter(path, direct=True), nbytes
    while left > 0:
        w.write(block[: min(left, _BLOCK)])
        left -= min(left, _BLOCK)
    w.close(fsync=True)
    s = time.perf_counter() - t0
    path.unlink()
    return {"bytes": nbytes, "seconds": s, "MBps": nbytes / s / 1e6}


def segment_probe(args: argparse.Namespace, rounds: int) -> dict[str, Any]:
    """``read_segment`` over every packed segment vs 8 MiB O_DIRECT reads of the same files, in
    alternating order (the disk's bandwidth drifts: a paired ratio is steadier than one reference)."""
    from gnn_ooc.graphstore.pack.reader import PackedEpoch
    from gnn_ooc.sampler.plan import Plan

    packed = PackedEpoch(Plan.open(Dataset.open(args.work / "dataset"), PLAN_NAME), 0, PACK_NAME)
    ks = [k for k, seg in enumerate(packed.segments) if seg["packed"]]
    files = [packed.path / packed.segments[k]["name"] for k in ks]
    tries: dict[str, Callable[[], int]] = {"read_segment": lambda: read_segments(packed, ks),
                                           "sequential": lambda: read_once(files, direct=True)}
    out = []
    for r in range(rounds):
        names = list(tries) if r % 2 == 0 else list(tries)[::-1]
        out.append({n: timed_mbps(tries[n]) for n in names})
    ratios = [x["read_segment"] / x["sequential"] for x in out]
    return {"rounds": out, "ratios": ratios, "ratio_median": float(np.median(ratios)),
            "bytes": sum(f.stat().st_size for f in files), "segments": len(ks)}


def read_segments(packed: Any, ks: list[int]) -> int:
    before = packed.bytes_read
    for k in ks:
        packed.read_segment(k)
    return int(packed.bytes_read - before)


def timed_mbps(fn: Callable[[], int]) -> float:
    drop_caches()
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0) / 1e6


# --- children under memcap (parent side) ---------------------------------------------------------------
def child_command(args: argparse.Namespace, stage: str) -> list[str]:
    cmd = [str(args.memcap), str(args.cap), sys.executable, "-m", "gnn_ooc.tools.bench.features",
           "--work", str(args.work), "--child", stage, "--threads", str(args.threads),
           "--queue-depth", str(args.queue_depth),
           "--device-cache", str(args.device_cache), "--pinned-cache", str(args.pinned_cache),
           "--segment-batches", str(args.segment_batches), "--pack-memory", str(args.pack_memory),
           "--fill-chunk", str(args.fill_chunk)]
    return cmd + (["--pack-budget", str(args.pack_budget)] if args.pack_budget else [])


def run_child(args: argparse.Namespace, stage: str) -> dict[str, Any]:
    say(f"{stage}: child under memcap.sh with a {mb(args.cap)} MB cap")
    rc, out, err = run_group(child_command(args, stage), args.child_timeout)
    peak = re.search(r"peak_bytes=(\d+)", err)
    result: dict[str, Any] = {"exit": rc, "peak_bytes": int(peak.group(1)) if peak else None}
    if rc:
        return {**result, "error": err.strip()[-2000:]}
    return {**result, **json.loads(out.strip().splitlines()[-1])}


# --- inside a child ------------------------------------------------------------------------------------
def proc_read_bytes() -> int:
    """Bytes this process made the block layer read so far (0 where the kernel does not say)."""
    from gnn_ooc.graphstore.io.directio import process_read_bytes

    return process_read_bytes() or 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Clock:
    """Per key: seconds in wrapped methods, each call's seconds and first argument, kernel read bytes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.durations: dict[str, list[float]] = {}
        self.calls: dict[str, list[Any]] = {}
        self.kernel: dict[str, int] = {}

    def wrap(self, obj: Any, method: str, key: str) -> None:
        fn = getattr(obj, method)

        def timed(*a: Any, **k: Any) -> Any:
            io, t = proc_read_bytes(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(key, time.perf_counter() - t, proc_read_bytes() - io, a[0] if a else None)

        setattr(obj, method, timed)

    def add(self, key: str, seconds: float, kernel: int, arg: Any) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.kernel[key] = self.kernel.get(key, 0) + kernel
        self.durations.setdefault(key, []).append(seconds)
        self.calls.setdefault(key, []).append(arg if isinstance(arg, int) else None)


def run_loop(batches: int, load: Callable[[int], Any]) -> dict[str, Any]:
    """``load(b)`` for every batch, timed as a whole; kernel read bytes over the loop."""
    io0, t0 = proc_read_bytes(), time.perf_counter()
    rows, slowest = 0, 0.0
    for b in range(batches):
        t = time.perf_counter()
        rows += int(load(b).shape[0])
        slowest = max(slowest, time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "batches": batches, "rows": rows, "slowest_batch_s": slowest,
            "kernel_read_bytes": proc_read_bytes() - io0}


def open_plan(args: argparse.Namespace) -> tuple[Dataset, Any, Any]:
    from gnn_ooc.sampler.plan import Plan

    ds = Dataset.open(args.work / "dataset")
    plan = Plan.open(ds, PLAN_NAME)
    return ds, plan, plan.epoch(0)


def fresh_stats(store: Any) -> None:
    from gnn_ooc.graphstore.features.base import StoreStats

    store.stats = StoreStats(row_bytes=store.row_bytes)


def stage_mmap(args: argparse.Namespace) -> dict[str, Any]:
    from gnn_ooc.graphstore.features.stores import MmapStore

    ds, _, ep = open_plan(args)
    store = MmapStore.of(ds)
    store.gather([0])  # warm-up (torch paths), not timed
    fresh_stats(store)
    clock = Clock()
    clock.wrap(store, "gather", "mmap")
    loop = run_loop(len(ep), lambda b: store.gather(ep.nodes(b)))
    return {**loop, "row_bytes": store.row_bytes, "hits": {"mmap": loop["rows"]}, "tier_seconds": clock.seconds, "tier_kernel_bytes": clock.kernel,
            "disk_bytes_read": loop["kernel_read_bytes"], "disk_rows": loop["rows"],
            "accounting": "kernel read_bytes / bytes of every row delivered (page cache hits included)"}


def stage_direct(args: argparse.Namespace, io: str = "threads") -> dict[str, Any]:
    from gnn_ooc.graphstore.features.direct import DirectStore

    ds, _, ep = open_plan(args)
    store = DirectStore.of(ds, threads=args.threads, io=io, queue_depth=args.queue_depth)
    store.gather([0])  # warm-up (numba cache load), not timed
    fresh_stats(store)
    clock = Clock()
    clock.wrap(store, "gather", "disk")
    loop = run_loop(len(ep), lambda b: store.gather(ep.nodes(b)))
    s = store.stats
    store.close()
    return {**loop, "row_bytes": store.row_bytes, "hits": dict(s.hits), "tier_seconds": clock.seconds, "tier_kernel_bytes": clock.kernel,
            "disk_bytes_read": s.disk_bytes_read, "disk_rows": s.disk_rows, "disk_reads": s.disk_reads,
            "direct": store.direct, "io": store.io,
            "accounting": "DirectStore stats: bytes read / bytes of rows read from disk"}


def placement(ep: Any, args: argparse.Namespace, row_bytes: int) -> list[np.ndarray]:
    """Ids of the device and the pinned cache: the hottest rows by the epoch's access counts."""
    from gnn_ooc.graphstore.features.policies.static import place_by_hotness, rows_for_budget

    budgets = [rows_for_budget(args.device_cache, row_bytes), rows_for_budget(args.pinned_cache, row_bytes)]
    return place_by_hotness(np.asarray(ep.access_counts()), budgets)


def stage_pack(args: argparse.Namespace) -> dict[str, Any]:
    from gnn_ooc.graphstore.features.direct import copy_rows
    from gnn_ooc.graphstore.pack.format import PackSpec
    from gnn_ooc.graphstore.pack.writer import pack_epoch

    ds, plan, ep = open_plan(args)
    row_bytes = ds.feature_row_bytes
    cached = np.concatenate(placement(ep, args, row_bytes))
    copy_rows(np.zeros(8, np.uint8), np.zeros(1, np.int64), 8, np.zeros(8, np.uint8), np.zeros(1, np.int64))
    spec = PackSpec(name=PACK_NAME, segment_batches=args.segment_batches, memory_budget=args.pack_memory,
                    pack_budget=args.pack_budget)
    rss0, io0, t0 = rss_bytes(), proc_read_bytes(), time.perf_counter()
    stats = pack_epoch(plan, 0, cached, features_path(ds), spec)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, **{k: v for k, v in stats.__dict__.items() if k != "seconds"},
            "pack_seconds": stats.seconds, "kernel_read_bytes": proc_read_bytes() - io0, "rss_before": rss0,
            "segment_batches": args.segment_batches, "memory_budget": args.pack_memory,
            "pack_budget": args.pack_budget, "cached_rows": int(cached.size)}


def fill_caches(ds: Dataset, ep: Any, args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The device and pinned caches, filled from a DirectStore of their own (timed, not in the loop)."""
    from gnn_ooc.graphstore.features.cache import RowCache
    from gnn_ooc.graphstore.features.direct import DirectStore

    fill = DirectStore.of(ds, threads=args.threads, queue_depth=args.queue_depth)
    t0 = time.perf_counter()
    ids = placement(ep, args, fill.row_bytes)
    caches = [RowCache.filled(t, i, fill, chunk_bytes=args.fill_chunk * fill.row_bytes)
              for t, i in zip(("device", "pinned"), ids)]
    info = {"seconds": time.perf_counter() - t0, "rows": [c.num_rows for c in caches],
            "bytes": [c.nbytes for c in caches], "disk_bytes_read": fill.stats.disk_bytes_read}
    fill.close()
    return caches, info


def packed_setup(args: argparse.Namespace) -> tuple[Any, Any, Any, Clock, dict[str, Any], Any]:
    from gnn_ooc.graphstore.features.direct import DirectStore
    from gnn_ooc.graphstore.features.tiered import TieredStore
    from gnn_ooc.graphstore.pack.reader import PackedEpoch
    from gnn_ooc.trainer.assemble import BatchAssembler

    ds, plan, ep = open_plan(args)
    caches, fill = fill_caches(ds, ep, args)  # also loads numba's kernels for the backing store
    backing = DirectStore.of(ds, threads=args.threads, queue_depth=args.queue_depth)
    store = TieredStore(caches, backing)
    packed = PackedEpoch(plan, 0, PACK_NAME)
    clock = Clock()
    for c in caches:
        clock.wrap(c, "lookup", c.tier)  # the slot lookups (the row copies are the assembler's)
    clock.wrap(packed, "read_segment", "packed")
    clock.wrap(backing, "gather", "disk")
    assembler = BatchAssembler(store)
    assembler.begin(packed)
    return ep, store, packed, clock, fill, assembler


def stage_packed(args: argparse.Namespace) -> dict[str, Any]:
    ep, store, packed, clock, fill, reader = packed_setup(args)
    loop = run_loop(len(ep), reader.batch)
    result = {**loop, "row_bytes": store.row_bytes, "hits": dict(store.stats.hits), "tier_seconds": clock.seconds,
              "tier_kernel_bytes": clock.kernel, "fill": fill, **segment_stats(packed, store, clock),
              "accounting": "(segment bytes read incl. header page and padding + unpacked misses' bytes) / "
                            "(rows in the segments read + unpacked rows read from disk) x row bytes"}
    return {**result, "check": check_last_batch(ep, reader, store)}


def segment_stats(packed: Any, store: Any, clock: Clock) -> dict[str, Any]:
    """What the segment reads of the loop did; disk rows and bytes of the packed path as a whole."""
    segs = [packed.segments[k] for k in clock.calls.get("packed", [])]
    seg_rows, s, rb = sum(int(seg["rows"]) for seg in segs), store.stats, store.row_bytes
    durations = clock.durations.get("packed", [])
    return {"segments_read": len(segs), "segment_rows": seg_rows, "segment_bytes_read": packed.bytes_read,
            "segment_data_bytes": seg_rows * rb, "segment_seconds": clock.seconds.get("packed", 0.0),
            "segment_read_MBps": [(4096 + int(g["rows"]) * rb) / d / 1e6 for g, d in zip(segs, durations)],
            # the store's counters include the segment reads (the assembler adds them); split them out
            "unpacked_disk_bytes_read": s.disk_bytes_read - packed.bytes_read, "unpacked_disk_rows": s.disk_rows - seg_rows,
            "disk_bytes_read": s.disk_bytes_read, "disk_rows": s.disk_rows}


def check_last_batch(ep: Any, reader: Any, store: Any, rows: int = 4096) -> bool:
    """``rows`` rows of batch ``B-1`` from the packed path equal the same rows read straight from disk
    (a sample: a whole batch read this way would need a ~4 KiB-per-row read buffer under the cap)."""
    import torch

    b = len(ep) - 1
    node = ep.nodes(b)
    pick = np.random.default_rng(0).choice(node.size, min(rows, node.size), replace=False)
    got = reader.batch(b)[torch.from_numpy(pick)]
    return bool(torch.equal(got, store.backing.gather(node[pick])))


def child_main(args: argparse.Namespace) -> int:
    rss0 = rss_bytes()
    stages: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "mmap": stage_mmap, "direct": stage_direct, "direct-uring": lambda a: stage_direct(a, "io_uring"),
        "pack": stage_pack, "packed": stage_packed}
    result = stages[args.child](args)
    result.update(rss_at_start=rss0, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps(result))
    return 0


# --- the report ----------------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[bench-features {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def derived(r: dict[str, Any], full_batches: int) -> dict[str, Any]:
    """Rates of one loading configuration."""
    s, rows, rb = r["seconds"], r["rows"], r["row_bytes"]
    served = r["disk_rows"] * rb
    return {"s_per_batch": s / r["batches"], "epoch_s_est": s / r["batches"] * full_batches,
            "rows_per_s": rows / s, "MBps_delivered": rows * rb / s / 1e6,
            "read_amplification": r["disk_bytes_read"] / served if served else 0.0, "tiers": tier_rates(r)}


def tier_rates(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Per tier: rows, share, seconds inside its reads, kernel read bytes, rows/s and MB/s of rows delivered."""
    out = []
    for tier, rows in r["hits"].items():
        secs = r["tier_seconds"].get(tier, 0.0)
        out.append({"tier": tier, "rows": rows, "share": rows / r["rows"], "seconds": secs,
                    "kernel_read_bytes": r["tier_kernel_bytes"].get(tier, 0),
                    "rows_per_s": rows / secs if secs else None,
                    "MBps": rows * r["row_bytes"] / secs / 1e6 if secs else None})
    rest = {"tier": "rest", "rows": None, "share": None, "seconds": r["seconds"] - sum(r["tier_seconds"].values()),
            "kernel_read_bytes": r["kernel_read_bytes"] - sum(r["tier_kernel_bytes"].values()),
            "rows_per_s": None, "MBps": None}
    return out + [rest]


def disk_summary(disk: dict[str, Any]) -> dict[str, float]:
    """The sequential reference: the median of the feature-file reads (MB/s and seconds)."""
    reads = disk["feature_reads"]
    return {"seq_MBps": float(np.median([x["MBps"] for x in reads])),
            "seq_s": float(np.median([x["seconds"] for x in reads])),
            "seq_min_MBps": min(x["MBps"] for x in reads), "seq_max_MBps": max(x["MBps"] for x in reads)}


def goals(report: dict[str, Any]) -> dict[str, Any]:
    c, pack, disk = report["runs"].get("packed", {}), report.get("pack", {}), report["disk"]
    seq = disk_summary(disk)
    seg = c["segment_bytes_read"] / c["segment_seconds"] / 1e6 if c.get("segment_seconds") else 0.0
    paired = disk.get("probe", {}).get("ratio_median", 0.0)
    floor = seq["seq_s"] + disk["write"]["seconds"] if "write" in disk else float("nan")
    amp = c["derived"]["read_amplification"] if "derived" in c else float("inf")
    ratio = pack["seconds"] / floor if not pack.get("exit") else float("inf")
    fraction = seg / seq["seq_MBps"]
    met = {"file_over_cap": report["setup"]["file_over_cap"] >= MIN_FILE_OVER_CAP,
           "seq_fraction": fraction >= GOAL_SEQ_FRACTION and paired >= GOAL_SEQ_FRACTION,
           "read_amplification": 0 < amp <= GOAL_READ_AMP, "pack_ratio": ratio <= GOAL_PACK_RATIO,
           "capped": all(r.get("exit") == 0 for r in [*report["runs"].values(), pack])}
    return {"file_over_cap": report["setup"]["file_over_cap"], "segment_MBps": seg, **seq,
            "seq_fraction": fraction, "paired_fraction": paired, "read_amplification": amp,
            "pack_floor_s": floor, "pack_ratio": ratio, "met": met}


def ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


def verdict_lines(g: dict[str, Any]) -> list[str]:
    m = g["met"]
    return [
        f"setup: feature file / cap = {g['file_over_cap']:.2f} (goal >= {MIN_FILE_OVER_CAP:g}): {ok(m['file_over_cap'])}; "
        f"every child ran to the end under the cap: {'yes' if m['capped'] else 'NO (see above)'}",
        f"goal 1: packed segment reads in the loop {g['segment_MBps']:,.0f} MB/s = {100 * g['seq_fraction']:.0f}% of "
        f"the disk's sequential {g['seq_MBps']:,.0f} MB/s (median of the feature-file reads); paired check, "
        f"read_segment vs 8 MiB reads of the same files: {100 * g['paired_fraction']:.0f}% "
        f"(goal >= {100 * GOAL_SEQ_FRACTION:.0f}% for both): {ok(m['seq_fraction'])}",
        f"goal 2: read amplification of the packed path {g['read_amplification']:.4f} (goal <= {GOAL_READ_AMP}): "
        f"{ok(m['read_amplification'])}",
        f"goal 3: packing took {g['pack_ratio']:.2f} x (sequential read of the feature file + O_DIRECT write of the "
        f"packed bytes = {g['pack_floor_s']:.2f} s) (goal <= {GOAL_PACK_RATIO:g}): {ok(m['pack_ratio'])}",
        f"VERDICT: {'MET' if all(m.values()) else 'NOT MET'}",
    ]


def config_lines(report: dict[str, Any]) -> list[str]:
    head = (f"{'configuration':<26}{'wall s':>8}{'s/batch':>9}{'epoch s*':>10}{'M rows/s':>10}{'MB/s':>8}"
            f"{'disk MB':>9}{'read amp':>9}{'kernel MB':>10}{'cgroup MB':>10}{'RSS MB':>8}")
    lines = [head]
    for stage, r in report["runs"].items():
        if r["exit"]:
            said = [x for x in (r.get("error") or "not run").strip().splitlines() if not x.startswith("memcap:")]
            why = said[-1][:120] if said else "killed"
            lines.append(f"{LABELS[stage]:<26} FAILED (exit {r['exit']}, cgroup peak {mb(r['peak_bytes'] or 0)} MB): {why}")
            continue
        d = r["derived"]
        lines.append(f"{LABELS[stage]:<26}{r['seconds']:>8.2f}{d['s_per_batch']:>9.3f}{d['epoch_s_est']:>10,.0f}"
                     f"{d['rows_per_s'] / 1e6:>10.3f}{d['MBps_delivered']:>8,.0f}{mb(r['disk_bytes_read']):>9}"
                     f"{d['read_amplification']:>9.3f}{mb(r['kernel_read_bytes']):>10}{mb(r['peak_bytes']):>10}"
                     f"{mb(r['peak_rss']):>8}")
    return lines


def tier_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"{'configuration':<26}{'tier':<9}{'rows':>11}{'share':>7}{'seconds':>9}{'M rows/s':>10}{'MB/s':>8}"
             f"{'kernel MB':>11}"]
    for stage, r in report["runs"].items():
        for t in [] if r["exit"] else r["derived"]["tiers"]:
            rows = "" if t["rows"] is None else f"{t['rows']:,}"
            share = "" if t["share"] is None else f"{100 * t['share']:.0f}%"
            rate = "" if t["rows_per_s"] is None else f"{t['rows_per_s'] / 1e6:.3f}"
            mbps = "" if t["MBps"] is None else f"{t['MBps']:,.0f}"
            lines.append(f"{LABELS[stage]:<26}{t['tier']:<9}{rows:>11}{share:>7}{t['seconds']:>9.2f}{rate:>10}"
                         f"{mbps:>8}{mb(t['kernel_read_bytes']):>11}")
    return lines


def pack_line(p: dict[str, Any]) -> str:
    if p.get("exit"):
        return f"packing FAILED (exit {p['exit']}): {(p.get('error') or '').strip()[-300:]}"
    return (f"packing (own capped child, before the epoch): {p['seconds']:.2f} s, {p['packed_segments']}/"
            f"{p['segments']} segments of {p['segment_batches']} batches, {p['rows']:,} rows, "
            f"{mb(p['bytes_written'])} MB written, {mb(p['bytes_read'])} MB read in {p['passes']} pass(es) over the "
            f"feature file (memory budget {mb(p['memory_budget'])} MB), cgroup peak {mb(p['peak_bytes'])} MB")


def packed_lines(c: dict[str, Any], probe: dict[str, Any]) -> list[str]:
    f, rates = c["fill"], c["segment_read_MBps"]
    pad = c["segment_bytes_read"] - c["segment_data_bytes"]
    return [
        f"caches (filled before the epoch in {f['seconds']:.2f} s, {mb(f['disk_bytes_read'])} MB read): device "
        f"{f['rows'][0]:,} rows ({mb(f['bytes'][0])} MB), pinned {f['rows'][1]:,} rows ({mb(f['bytes'][1])} MB), "
        "placed by this epoch's own access counts (CPU tensors: no CUDA here)",
        f"segment reads in the loop: {c['segments_read']} segments, {mb(c['segment_bytes_read'])} MB read for "
        f"{mb(c['segment_data_bytes'])} MB of rows (header pages + padding: {pad / 1024:,.0f} KiB) in "
        f"{c['segment_seconds']:.3f} s; per segment " + ", ".join(f"{x:,.0f}" for x in rates) + " MB/s "
        "(a read that needs a bigger buffer maps and first-touches a new one)",
        f"unpacked misses: {c['unpacked_disk_rows']:,} rows, {mb(c['unpacked_disk_bytes_read'])} MB read; sample "
        f"of the last batch equals direct reads: {c['check']}",
        f"paired check ({len(probe.get('rounds', []))} rounds, order alternating): read_segment / 8 MiB reads of "
        "the same files = " + ", ".join(f"{x:.2f}" for x in probe.get("ratios", [])),
    ]


def setup_lines(report: dict[str, Any]) -> list[str]:
    g, s, pl, d = report["graph"], report["setup"], report["plan"], report["disk"]
    reads = ", ".join(f"{x['MBps']:,.0f} ({x['when']})" for x in d["feature_reads"])
    write = f"{d['write']['MBps']:,.0f} MB/s" if "write" in d else "not measured"
    return [
        f"graph: {g['path']}: {g['nodes']:,} nodes, {g['edges']:,} CSC edges ({g['source']}); features "
        f"{g['nodes']:,} x {g['feature_dim']} {g['feature_dtype']} = {mb(g['feature_bytes'])} MB; dataset "
        f"{mb(g['dataset_bytes'])} MB",
        f"memory: memcap.sh cap {mb(s['cap'])} MB for page cache + process (cache dropped before each child); "
        f"feature file / cap = {s['file_over_cap']:.2f}",
        f"plan: ONE epoch of the train split cut to the first {pl['seeds']:,} seeds of its shuffled order: "
        f"{pl['batches']} batches x {report['batch_size']}, fan-outs {report['fanouts']}, "
        f"{pl['nodes'] / pl['batches']:,.0f} nodes/batch, {pl['distinct_nodes']:,} distinct nodes; the full split "
        f"has {pl['full_batches']:,} batches (these are {100 * pl['batches'] / pl['full_batches']:.1f}% of an epoch)",
        f"disk: sequential O_DIRECT reads of the feature file, 8 MiB requests: {reads} MB/s; O_DIRECT write "
        f"of the packed bytes {write}",
        f"threads: DirectStore {report['threads']} reads in flight (b., and c.'s misses without io_uring), io_uring "
        f"queue depth {report['queue_depth']} (b'., and c.'s misses: io='auto'); machine {os.cpu_count()} cores",
    ]


NOTES = [
    "  epoch s* = s/batch x the full split's batches: a linear estimate from this prefix epoch; in a full",
    "  epoch the caches (placed by its own counts) hit a smaller share, and packing needs one pass over the",
    "  feature file per half memory budget of segment planning data (the packing model line below)",
    "  disk MB: the store's own accounting (a.: the kernel's, which is all it has); kernel MB: /proc/self/io",
    "  read_bytes of the child over the loop (plan files and library pages evicted under the cap included);",
    "  read amp: disk MB / bytes of the rows read from disk (a.: of every row delivered); cgroup MB: the",
    "  cgroup's peak (page cache incl. library pages + process) from memcap.sh; RSS MB: the child's ru_maxrss",
    "  per tier: seconds inside that tier's reads (packed: the segments' O_DIRECT reads; rest: plan ids,",
    "  cache lookups, indexing and copies into each batch), MB/s of the rows it delivered, kernel read bytes",
]


def table(report: dict[str, Any]) -> str:
    c, probe = report["runs"].get("packed", {}), report["disk"].get("probe", {})
    lines = [*setup_lines(report), "", *config_lines(report), "", *tier_lines(report), *NOTES, "",
             pack_line(report["pack"]), *(packed_lines(c, probe) if "derived" in c else []),
             f"packing model for a full epoch: {report['packing_model']['text']}", ""]
    return "\n".join(lines + verdict_lines(report["goals"]))


def packing_model(report: dict[str, Any]) -> dict[str, Any]:
    """Packed bytes and feature-file passes a full epoch would need at this budget (a linear model)."""
    p, pl, d = report["pack"], report["plan"], report["disk"]
    if p.get("exit") or "write" not in d:
        return {"text": "packing failed"}
    full_bytes = p["bytes_written"] / pl["batches"] * pl["full_batches"]
    # one pass per group of segments whose planning data (8 B per packed row + 4 B per batch node)
    # fills half the packing memory budget (graphstore/pack/)
    row_bytes = report["runs"].get("packed", {}).get("row_bytes") or 512
    planning = 8 * full_bytes / row_bytes + 4 * pl["nodes"] / pl["batches"] * pl["full_batches"]
    passes = math.ceil(planning / max(1, p["memory_budget"] // 2))
    seq_s, write_s = disk_summary(d)["seq_s"], full_bytes / (d["write"]["MBps"] * 1e6)
    est, floor = passes * seq_s + write_s, seq_s + write_s
    return {"packed_bytes": full_bytes, "passes": passes, "est_s": est, "floor_s": floor,
            "text": f"~{mb(full_bytes)} MB packed (at this prefix's cache hit share), {passes} passes over the "
                    f"feature file at this budget: ~{est:,.0f} s vs floor {floor:,.0f} s ({est / floor:.1f}x)"}


# --- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"graph folder, reused (default {DEFAULT_WORK})")
    p.add_argument("--nodes", type=int, default=4_500_000)
    p.add_argument("--avg-degree", type=float, default=8.0, help="synth edges per node (undirected: x2)")
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=40, help="batches of the planned (cut) epoch, all measured")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cap", type=parse_size, default=parse_size("512M"), help="memcap bytes (default 512M)")
    p.add_argument("--threads", type=int, default=16, help="DirectStore reads in flight (thread pool)")
    p.add_argument("--queue-depth", type=int, default=128, help="DirectStore reads in flight (io_uring)")
    p.add_argument("--device-cache", type=parse_size, help="device cache bytes (default cap / 8)")
    p.add_argument("--pinned-cache", type=parse_size, help="pinned cache bytes (default cap / 8)")
    p.add_argument("--segment-batches", type=int, default=8, help="batches per packed segment")
    p.add_argument("--pack-memory", type=parse_size, help="pack_epoch memory budget (default cap / 2)")
    p.add_argument("--pack-budget", type=parse_size, help="packed bytes on disk (default: no limit)")
    p.add_argument("--fill-chunk", type=int, default=4096, help="rows per read when filling the caches")
    p.add_argument("--probe-rounds", type=int, default=5, help="rounds of the paired segment-read check")
    p.add_argument("--child-timeout", type=float, default=900.0, help="seconds before a child is killed")
    p.add_argument("--memcap", type=Path, default=MEMCAP)
    p.add_argument("--keep-plan", action="store_true", help="keep the plan and its pack in the dataset")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device_cache = args.cap // 8 if args.device_cache is None else args.device_cache
    args.pinned_cache = args.cap // 8 if args.pinned_cache is None else args.pinned_cache
    args.pack_memory = args.cap // 2 if args.pack_memory is None else args.pack_memory
    if min(args.batches, args.segment_batches, args.threads, args.probe_rounds, args.queue_depth) < 1:
        p.error("--batches, --segment-batches, --threads, --queue-depth and --probe-rounds must be >= 1")
    return args


def graph_info(ds: Dataset, built: dict[str, Any]) -> dict[str, Any]:
    return {"path": str(ds.path.resolve()), "nodes": ds.num_nodes, "edges": ds.num_edges,
            "feature_dim": ds.feature_dim, "feature_dtype": ds.feature_dtype,
            "feature_bytes": features_path(ds).stat().st_size, "dataset_bytes": dir_bytes(ds.path),
            "source": "reused" if built["reused"] else f"generated now in {built['build_s']:.0f} s"}


def dir_bytes(path: Path) -> int:
    """Bytes of the dataset's files, plans (and their packs) left out."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "plans" not in p.relative_to(path).parts)


def load_features(args: argparse.Namespace, feats: Path, disk: dict[str, Any]) -> dict[str, Any]:
    """The capped children: a., b., packing, c.; between them the disk's sequential reference."""
    from gnn_ooc.capabilities import io_uring_available

    runs = {s: run_child(args, s) for s in ("mmap", "direct", "direct-uring")
            if s != "direct-uring" or io_uring_available()}
    pack = run_child(args, "pack")
    disk["feature_reads"].append({**seq_read(feats), "when": "after packing"})
    if pack["exit"]:
        runs["packed"] = {"exit": -1, "peak_bytes": None, "error": "packing failed"}
        return {"runs": runs, "pack": pack}
    disk["write"] = seq_write(args.work / "write-probe.bin", pack["bytes_written"])
    runs["packed"] = run_child(args, "packed")
    say(f"paired check of segment reads, {args.probe_rounds} rounds")
    disk["probe"] = segment_probe(args, args.probe_rounds)
    return {"runs": runs, "pack": pack}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    built = ensure_dataset(args.work, args)
    ds = Dataset.open(args.work / "dataset")
    graph, feats = graph_info(ds, built), features_path(ds)
    say(f"planning one epoch of {args.batches} batches")
    plan = make_plan(args)
    disk: dict[str, Any] = {"feature_reads": [{**seq_read(feats), "when": "first"}]}
    loaded = load_features(args, feats, disk)
    disk["feature_reads"].append({**seq_read(feats), "when": "last"})
    for r in loaded["runs"].values():
        if not r["exit"]:
            r["derived"] = derived(r, plan["full_batches"])
    return {"graph": graph, "plan": plan, "disk": disk, **loaded,
            "setup": {"cap": args.cap, "file_over_cap": graph["feature_bytes"] / args.cap,
                      "device_cache": args.device_cache, "pinned_cache": args.pinned_cache},
            "fanouts": args.fanouts, "batch_size": args.batch_size, "threads": args.threads,
            "queue_depth": args.queue_depth}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    try:
        report = measure(args)
    finally:
        if not args.keep_plan:
            remove_plan(args.work / "dataset" / "plans" / PLAN_NAME)
    report["packing_model"] = packing_model(report)
    report["goals"] = goals(report)
    emit(table(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
