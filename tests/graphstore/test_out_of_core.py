"""Bounded memory and crash safety, in real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnn_ooc.graphstore import Dataset

ROOT = Path(__file__).resolve().parents[2]


def write_big_edges(path: Path, n: int, e: int, seed: int = 0) -> None:
    """Stream a random edge list to Parquet in 1M-row groups (never all in memory)."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
    with pq.ParquetWriter(path, schema, compression="none") as w:
        for start in range(0, e, 1 << 20):
            k = min(1 << 20, e - start)
            w.write_table(pa.table({"src": rng.integers(0, n, k), "dst": rng.integers(0, n, k)}, schema=schema))


CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from gnn_ooc.graphstore import PreprocessSpec
    from gnn_ooc.graphstore.ingest.preprocess import preprocess
    edges, out, warm, budget = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    # Warm up imports, numba caches and pyarrow's pools on a tiny graph first.
    preprocess(PreprocessSpec(output=out.with_name("warm"), edges=(warm,), memory_budget=budget, force=True))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = preprocess(PreprocessSpec(output=out, edges=(edges,), memory_budget=budget, undirected=True, force=True))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "after": after, "edges": r.manifest.num_edges,
                      "scratch": r.manifest.stats["scratch_bytes"]}))
    """
)


def run_child(tmp: Path, edges: Path, budget: int) -> dict[str, int]:
    warm = tmp / "warm.parquet"
    if not warm.exists():
        write_big_edges(warm, 1000, 5000)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(edges), str(tmp / f"ds-{edges.stem}"), str(warm), str(budget)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_edges(tmp_path: Path) -> None:
    budget = 24 << 20
    n = 2_000_000
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    write_big_edges(small, n, 1_500_000)   # 24 MB of int64 pairs: one budget
    write_big_edges(big, n, 6_000_000)     # 96 MB: four budgets, undirected doubles it
    r_small = run_child(tmp_path, small, budget)
    r_big = run_child(tmp_path, big, budget)
    grow_small = r_small["after"] - r_small["before"]
    grow_big = r_big["after"] - r_big["before"]
    assert r_big["edges"] == 12_000_000 and r_big["scratch"] > 3 * budget
    # Peak growth stays within the budget plus a fixed slack (the allocator keeps freed blocks,
    # numba's thread pool, a Parquet row group), and quadrupling the edges adds no more than a
    # fraction of the budget.
    assert grow_big <= budget + (24 << 20), (r_small, r_big)
    assert grow_big - grow_small <= budget // 2, (r_small, r_big)


@pytest.mark.slow
def test_sigkill_midway_leaves_nothing_and_rerun_succeeds(tmp_path: Path) -> None:
    edges = tmp_path / "edges.parquet"
    write_big_edges(edges, 500_000, 4_000_000, seed=1)
    out = tmp_path / "out" / "ds"
    def command(target: Path) -> list[str]:
        return [sys.executable, "-m", "gnn_ooc.tools.cli", "preprocess", "--edges", str(edges), "-o", str(target),
                "--memory-budget", "4M", "--undirected", "--dedup"]

    cmd = command(out)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    killed_in_partition = False
    while time.time() < deadline and proc.poll() is None:
        spilled = list((tmp_path / "out").glob(".ds.partial-*/.scratch/bucket-*"))
        if spilled:
            os.kill(proc.pid, signal.SIGKILL)
            killed_in_partition = True
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_in_partition, "the run finished before it could be killed; make the input larger"
    assert not out.exists()
    assert list((tmp_path / "out").glob(".ds.partial-*")), "expected the killed run's stale temp folder"
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ds"]
    ds = Dataset.open(out)
    assert ds.verify()
    clean = tmp_path / "clean"
    subprocess.run(command(clean), cwd=ROOT, check=True, capture_output=True)
    assert Dataset.open(clean).manifest.files["indices"].checksum == ds.manifest.files["indices"].checksum


def test_a_live_run_is_not_disturbed(tmp_path: Path) -> None:
    from gnn_ooc.errors import GnnOocError
    from gnn_ooc.graphstore.io.atomic import Staging

    target = tmp_path / "ds"
    with Staging(target):
        with pytest.raises(GnnOocError, match="another gnn-ooc preprocess is running"):
            with Staging(target):
                pass
    assert list(tmp_path.iterdir()) == []
