"""What checking costs: every check a run makes (``graphstore.integrity``) against reading the same bytes.

Generates (or reuses, from ``--work``) a graph (default 2 M nodes, average degree 10, 128
float32 features: a 1 GB feature file, 0.2 GB of topology), then measures, page cache dropped
before each cold measurement, one run:

* the start-of-run check of the topology, labels and splits (CRC-32 + structure) against a
  plain sequential read of the same files;
* the features' CRC-32 pass (online/mmap modes, embed) against an O_DIRECT read of the file;
* packing one epoch (a prefix of ``--batches`` batches) with the CRC-32 checked during the pass
  against packing without it;
* reading every packed segment with its CRC-32 checked (what training does) against without,
  alternating which goes first, warm and cold;
* checking a planned epoch (before a run uses it) against reading its files.

Example:
    $ python -m gnn_ooc.tools.bench.integrity
    $ python -m gnn_ooc.tools.bench.integrity --nodes 500000 --json > integrity.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.format.integrity import check_dataset, verify_entry
from gnn_ooc.graphstore.pack.format import PackSpec
from gnn_ooc.graphstore.pack.reader import PackedEpoch
from gnn_ooc.graphstore.pack.writer import pack_epoch
from gnn_ooc.tools.bench.preprocess import drop_caches, emit, ensure_dataset, read_once
from gnn_ooc.tools.bench.sampler import SplitView, remove_plan

DEFAULT_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-integrity"
PLAN = "bench-integrity"


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _cold(fn: Callable[[], Any]) -> float:
    drop_caches()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _warm(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _pair(name: str, checked: float, plain: float, nbytes: int) -> dict[str, Any]:
    return {"what": name, "bytes": nbytes, "checked_s": round(checked, 4), "plain_s": round(plain, 4),
            "ratio": round(checked / plain, 3) if plain else None,
            "checked_gb_s": round(nbytes / checked / 1e9, 3) if checked else None}


def topology(ds: Dataset) -> dict[str, Any]:
    files = [ds.path / e.name for k, e in ds.manifest.files.items() if k != "features"]
    nbytes = sum(p.stat().st_size for p in files)
    checked = _cold(lambda: check_dataset(ds, features=False))
    plain = _cold(lambda: read_once(files, direct=False))
    return _pair("start of a run: topology, labels, splits (CRC-32 + structure)", checked, plain, nbytes)


def features(ds: Dataset) -> dict[str, Any]:
    entry = ds.manifest.files["features"]
    checked = _cold(lambda: verify_entry(ds.path, entry, direct=True))
    plain = _cold(lambda: read_once([ds.path / entry.name], direct=True))
    return _pair("features' CRC-32 pass (online, mmap, embed)", checked, plain, entry.size)


def crc_speed() -> dict[str, Any]:
    data = np.random.default_rng(0).integers(0, 255, 256 << 20, dtype=np.uint8)
    seconds = min(_warm(lambda: zlib.crc32(data.data)) for _ in range(3))
    return {"what": "zlib.crc32 in memory, one thread", "bytes": data.size, "checked_s": round(seconds, 4),
            "checked_gb_s": round(data.size / seconds / 1e9, 3)}


def plan_prefix(ds: Dataset, batches: int) -> Any:
    from gnn_ooc.sampler.neighbor import NeighborSampler
    from gnn_ooc.sampler.plan import Planner, PlanSpec, epoch_order

    train = np.asarray(ds.split("train"), dtype=np.int64)
    view = SplitView(ds, "train", epoch_order(train, 0, 0)[: batches * 1024])
    planner = Planner(view, NeighborSampler(view, [10, 5]), PlanSpec(name=PLAN, batch_size=1024), force=True)
    planner.plan_epoch(0)
    return planner.plan


def packing(ds: Dataset, plan: Any) -> dict[str, Any]:
    entry = ds.manifest.files["features"]
    cached = np.empty(0, np.int64)

    def run(checksum: str | None, name: str) -> None:
        pack_epoch(plan, 0, cached, ds.path / entry.name, PackSpec(name=name, segment_batches=8,
                                                                    memory_budget=1 << 30),
                   features_checksum=checksum)

    checked = _cold(lambda: run(entry.checksum, "checked"))
    plain = _cold(lambda: run(None, "plain"))
    return _pair("packing an epoch, features' CRC-32 checked in the pass", checked, plain, entry.size)


def segments(plan: Any, rounds: int = 3) -> list[dict[str, Any]]:
    packed = PackedEpoch(plan, 0, "checked")
    ks = [k for k, s in enumerate(packed.segments) if s["packed"]]
    nbytes = sum(packed.meta["segments"][k]["rows"] * packed.row_bytes for k in ks)

    def read(verify: bool) -> None:
        for k in ks:
            packed.read_segment(k, verify=verify)

    out = []
    for label, timer in (("cold", _cold), ("warm", _warm)):
        checked: list[float] = []
        plain: list[float] = []
        for r in range(rounds):
            first, second = (True, False) if r % 2 == 0 else (False, True)
            a, b = timer(lambda v=first: read(v)), timer(lambda v=second: read(v))  # type: ignore[misc]
            (checked if first else plain).append(a)
            (plain if first else checked).append(b)
        out.append(_pair(f"reading packed segments, CRC-32 checked ({label})", statistics.median(checked),
                         statistics.median(plain), nbytes))
    packed.close()
    return out


def plan_check(plan: Any) -> dict[str, Any]:
    epoch = plan.epoch(0)
    files = [epoch.path / e["name"] for e in epoch.meta["files"].values()]
    nbytes = sum(p.stat().st_size for p in files)
    checked = _cold(epoch.verify)
    plain = _cold(lambda: read_once(files, direct=False))
    return _pair("a planned epoch's CRC-32 before use", checked, plain, nbytes)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| check | bytes | checked | plain read | checked / plain | GB/s checked |", "|---|---|---|---|---|---|"]
    for r in rows:
        plain = f"{r['plain_s']:.3f} s" if "plain_s" in r else ""
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        lines.append(f"| {r['what']} | {r['bytes'] / 1e9:.2f} GB | {r['checked_s']:.3f} s | {plain} | {ratio} | "
                     f"{r['checked_gb_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--batches", type=int, default=40, help="batches of the planned prefix epoch")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    made = ensure_dataset(args.work, args, marker="bench-integrity.json", flags=["--undirected"], say=_say)
    ds = Dataset.open(args.work / "dataset")
    if not drop_caches():
        _say("warning: cannot drop the page cache (not root): cold figures are warm")
    rows = [crc_speed(), topology(ds), features(ds)]
    plan = plan_prefix(ds, args.batches)
    try:
        rows += [plan_check(plan), packing(ds, plan), *segments(plan)]
    finally:
        remove_plan(plan.path)
    emit(table(rows), {"dataset": made, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
