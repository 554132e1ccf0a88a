"""Benchmark ``gnn-ooc preprocess`` against the I/O floor measured in the same run.

Generates a raw graph (``gnn-ooc synth``; at least 50 M edges by default), then, with the page
cache dropped before each measurement (when run as root):

1. the I/O floor: read every input file once, sequentially, and write as many bytes as the
   dataset has once (then fsync);
2. ``gnn-ooc preprocess`` in a child process, timed, with its peak RSS from ``wait4``.

It prints one JSON document with edges/s, peak RSS, and ``ratio = preprocess / floor``.
Run it under ``../shared/tools/memcap.sh`` to hold the page cache too under a cap, e.g.::

    ../shared/tools/memcap.sh 3G .venv/bin/python -m gnn_ooc.tools.bench.preprocess --budget 1G

Example:
    $ python -m gnn_ooc.tools.bench.preprocess --nodes 2000000 --avg-degree 25 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gnn_ooc.capabilities import o_direct_flag
from gnn_ooc.graphstore.io.directio import SequentialWriter
from gnn_ooc.graphstore.io.owned import DATASET, SYNTH_RAW, FolderKind
from gnn_ooc.units import format_size, parse_size

_BLOCK = 8 << 20


def emit(table: str, report: dict[str, Any], as_json: bool) -> None:
    """A benchmark's report: the table on stdout, or with ``--json`` the JSON on stdout and the table on stderr."""
    print(table, file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(report, indent=2))


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache; False when not permitted (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def remove_own(path: Path, kind: FolderKind) -> bool:
    """Delete ``path`` only when it is a gnn-ooc folder of ``kind`` (its marker file says so), so a
    benchmark's ``--work`` pointed at a folder of the user's never loses anything there; returns
    whether it was removed. A run or plan a refused command never wrote is left alone."""
    if not path.is_dir() or path.is_symlink() or not kind.owns(path):
        return False
    shutil.rmtree(path)
    return True


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def read_once(paths: list[Path], direct: bool) -> int:
    """Read files sequentially in 8 MiB blocks (page cache or O_DIRECT); returns bytes read."""
    total = 0
    buf = mmap.mmap(-1, _BLOCK)  # page-aligned, as O_DIRECT needs
    flags = os.O_RDONLY | (o_direct_flag() if direct else 0)
    for p in paths:
        fd = os.open(p, flags)
        try:
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
    return total


def write_once(path: Path, nbytes: int, direct: bool) -> None:
    """Write ``nbytes`` sequentially and fsync, through the page cache or with O_DIRECT."""
    block = np.frombuffer(os.urandom(_BLOCK), dtype=np.uint8)
    w = SequentialWriter(path, direct=direct)
    left = nbytes
    while left > 0:
        w.write(block[: min(left, _BLOCK)])
        left -= min(left, _BLOCK)
    w.close(fsync=True)
    path.unlink()


def _timed(fn: Any, *args: Any) -> float:
    drop_caches()
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def io_floor(raw: Path, out_bytes: int, scratch: Path) -> dict[str, float]:
    """The faster of buffered and O_DIRECT for reading the inputs and for writing the output."""
    files = files_under(raw)
    read_bytes = sum(p.stat().st_size for p in files)
    reads = {d: _timed(read_once, files, d) for d in (False, True)}
    writes = {d: _timed(write_once, scratch / "floor.bin", out_bytes, d) for d in (False, True)}
    t_read, t_write = min(reads.values()), min(writes.values())
    return {"read_s": t_read, "write_s": t_write, "floor_s": t_read + t_write, "read_bytes": read_bytes,
            "read_buffered_s": reads[False], "read_direct_s": reads[True],
            "write_buffered_s": writes[False], "write_direct_s": writes[True],
            "read_MBps": read_bytes / t_read / 1e6, "write_MBps": out_bytes / t_write / 1e6}


def run_preprocess(raw: Path, out: Path, budget: str, flags: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gnn_ooc.tools.cli", "preprocess", str(raw), "-o", str(out),
           "--memory-budget", budget, "--force", "--json", *flags]
    drop_caches()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read() if proc.stdout else "", proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"preprocess failed ({proc.returncode}):\n{stderr}")
    result = json.loads(stdout)
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "phases": result["phases"],
            "nodes": result["nodes"], "edges": result["edges"], "flags": flags,
            "buckets": stats["buckets"], "scratch_bytes": stats["scratch_bytes"]}


def dataset_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))


def ensure_dataset(work: Path, args: argparse.Namespace, *, marker: str, flags: list[str],
                   say: Callable[[str], None]) -> dict[str, Any]:
    """Synthesise + preprocess (with ``flags``) into ``work/dataset`` unless a dataset made with these
    settings is there (``work/marker`` records them); the raw folder is removed after."""
    out, mark = work / "dataset", work / marker
    want = {"nodes": args.nodes, "avg_degree": args.avg_degree, "feature_dim": args.feature_dim, "flags": flags}
    if mark.is_file() and (out / "manifest.json").is_file():
        have = json.loads(mark.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return {**have, "reused": True}
    work.mkdir(parents=True, exist_ok=True)
    say(f"generating {args.nodes:,} nodes x avg degree {args.avg_degree:g} x {args.feature_dim} features")
    t0 = time.perf_counter()
    ensure_raw(work / "raw", args)
    say(f"preprocessing into {out} ({' '.join(flags)})")
    subprocess.run([sys.executable, "-m", "gnn_ooc.tools.cli", "preprocess", str(work / "raw"), "-o", str(out),
                    *flags, "--force", "--json"], check=True, stdout=subprocess.DEVNULL)
    remove_own(work / "raw", SYNTH_RAW)  # regenerated in seconds; the dataset is what gets reused
    made = {**want, "build_s": time.perf_counter() - t0}
    mark.write_text(json.dumps(made, indent=2))
    return {**made, "reused": False}


def ensure_raw(raw: Path, args: argparse.Namespace) -> dict[str, Any]:
    from gnn_ooc.tools.synth import SynthConfig, synth

    marker = raw / "synth.json"
    want = {"nodes": args.nodes, "avg_degree": args.avg_degree, "feature_dim": args.feature_dim}
    if marker.is_file():
        have = json.loads(marker.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return dict(have)
    t0 = time.perf_counter()
    summary = synth(raw, SynthConfig(nodes=args.nodes, avg_degree=args.avg_degree, feature_dim=args.feature_dim,
                                     classes=16, seed=0), overwrite=True)
    summary["generate_s"] = time.perf_counter() - t0
    return dict(summary)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("bench-preprocess"))
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--avg-degree", type=float, default=25.0)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--budget", default="1G", help="--memory-budget for preprocess")
    p.add_argument("--flags", default="", help="extra preprocess flags, e.g. '--undirected --dedup'")
    p.add_argument("--keep", action="store_true", help="keep the generated graph and dataset")
    args = p.parse_args(argv)
    parse_size(args.budget)
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw, out = args.workdir / "raw", args.workdir / "dataset"
    graph = ensure_raw(raw, args)
    flags = args.flags.split()
    run_preprocess(raw, out, args.budget, flags)  # warm-up: numba compiles on a fresh install
    run = run_preprocess(raw, out, args.budget, flags)
    out_bytes = dataset_bytes(out)
    floor = io_floor(raw, out_bytes, args.workdir)
    report = {
        "graph": {**{k: graph.get(k) for k in ("nodes", "avg_degree", "feature_dim", "generate_s")},
                  "edges": graph["counts"]["edges"]},
        "input_bytes": floor["read_bytes"], "output_bytes": out_bytes, "budget": args.budget,
        "cache_dropped": drop_caches(), "preprocess": run, "floor": floor,
        "edges_per_s": run["edges"] / run["seconds"],
        "input_edges_per_s": graph["counts"]["edges"] / run["seconds"],
        "ratio_to_floor": run["seconds"] / floor["floor_s"],
        "peak_rss_human": format_size(run["peak_rss"]),
    }
    print(json.dumps(report, indent=2))
    if not args.keep:
        remove_own(out, DATASET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
