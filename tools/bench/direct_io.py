"""Benchmark DirectStore's read backends (thread pool vs io_uring) on random gathers with O_DIRECT.

Writes (or reuses) an aligned feature ``.npy`` of ``--rows`` x ``--dim`` float32 (default 3 M x 128
= 1.5 GB) and gathers ``--batches`` batches of ``--batch-rows`` uniformly random row ids with each
backend, alternating which goes first per round (the virtual disk's speed drifts). O_DIRECT
bypasses the page cache, so every round reads from the disk. Reported per backend: rows/s, MB/s of
rows delivered, MB/s read from disk (whole 4 KiB pages) and the median ratio io_uring / threads.

Example:
    $ python -m gnn_ooc.tools.bench.direct_io --rounds 3
    $ python -m gnn_ooc.tools.bench.direct_io --threads 16 --queue-depth 128 --json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gnn_ooc.tools.bench.preprocess import emit

DEFAULT_FILE = Path(tempfile.gettempdir()) / "gnn-ooc-bench-direct-io" / "features.npy"
BACKENDS = ("threads", "io_uring")


def ensure_features(path: Path, rows: int, dim: int) -> Path:
    """An aligned float32 ``.npy`` of ``rows`` x ``dim``, written in 64 MiB chunks; reused when its shape fits."""
    from gnn_ooc.graphstore.format.npyfile import NpyWriter

    if path.exists():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (rows, dim) and arr.dtype == np.float32:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng, step = np.random.default_rng(0), max(1, (64 << 20) // (4 * dim))
    with NpyWriter(path, np.dtype(np.float32), (rows, dim), root=path.parent) as w:
        for s in range(0, rows, step):
            w.write(rng.standard_normal((min(step, rows - s), dim), dtype=np.float32))
    return path


def gather_all(store: Any, batches: list[np.ndarray]) -> dict[str, float]:
    """Every batch through ``store.gather``, timed as a whole."""
    before = store.stats.disk_bytes_read
    t0 = time.perf_counter()
    rows = sum(int(store.gather(b).shape[0]) for b in batches)
    s = time.perf_counter() - t0
    disk = store.stats.disk_bytes_read - before
    return {"seconds": s, "rows": rows, "rows_per_s": rows / s, "MBps_rows": rows * store.row_bytes / s / 1e6,
            "MBps_disk": disk / s / 1e6, "disk_bytes": disk}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from gnn_ooc.graphstore.features.direct import DirectStore

    path = ensure_features(args.file, args.rows, args.dim)
    rng = np.random.default_rng(args.seed)
    stores = {io: DirectStore(path, torch.float32, threads=args.threads, io=io, queue_depth=args.queue_depth)
              for io in BACKENDS}
    for s in stores.values():
        s.gather(rng.integers(0, args.rows, 64))  # warm-up: numba kernels, buffers, the ring
    rounds = []
    for r in range(args.rounds):
        batches = [rng.integers(0, args.rows, args.batch_rows) for _ in range(args.batches)]
        order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]
        rounds.append({io: gather_all(stores[io], batches) for io in order})
    for s in stores.values():
        s.close()
    ratios = [x["io_uring"]["rows_per_s"] / x["threads"]["rows_per_s"] for x in rounds]
    return {"file": str(path), "rows": args.rows, "dim": args.dim, "file_bytes": path.stat().st_size,
            "direct": stores["threads"].direct, "threads": args.threads, "queue_depth": args.queue_depth,
            "batches": args.batches, "batch_rows": args.batch_rows, "rounds": rounds, "ratios": ratios,
            "ratio_median": float(np.median(ratios))}


def table(report: dict[str, Any]) -> str:
    lines = [f"file: {report['file']}: {report['rows']:,} x {report['dim']} float32 = "
             f"{report['file_bytes'] / 1e6:,.0f} MB, O_DIRECT {report['direct']}; {report['batches']} batches x "
             f"{report['batch_rows']:,} random rows per round; threads {report['threads']}, io_uring queue depth "
             f"{report['queue_depth']}",
             f"{'round':<7}{'backend':<10}{'seconds':>9}{'M rows/s':>10}{'MB/s rows':>11}{'MB/s disk':>11}"]
    for i, x in enumerate(report["rounds"]):
        for io, m in x.items():
            lines.append(f"{i:<7}{io:<10}{m['seconds']:>9.3f}{m['rows_per_s'] / 1e6:>10.3f}{m['MBps_rows']:>11,.0f}"
                         f"{m['MBps_disk']:>11,.0f}")
    lines.append("io_uring / threads (rows/s) per round: " + ", ".join(f"{r:.2f}" for r in report["ratios"])
                 + f"; median {report['ratio_median']:.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", type=Path, default=DEFAULT_FILE, help=f"feature file, reused (default {DEFAULT_FILE})")
    p.add_argument("--rows", type=int, default=3_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch-rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=16, help="thread-pool backend: reads in flight")
    p.add_argument("--queue-depth", type=int, default=128, help="io_uring backend: reads in flight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = measure(args)
    emit(table(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
