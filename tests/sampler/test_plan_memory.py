"""Planning a graph whose topology is larger than the memory budget: anonymous memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from tests.conftest import write_raw


def rss_anon() -> int:
    # file-backed pages of the memory-mapped topology are RssFile: the page cache may drop them
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class Peak:
    def __init__(self) -> None:
        self.base, self.peak, self._stop = rss_anon(), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.002)

    def __enter__(self) -> Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


_MEASURE = """
import json, sys
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.memory import release_free_memory, tune_allocator
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import Planner, PlanSpec
from tests.sampler.test_plan_memory import Peak

tune_allocator()  # as the CLI and the background planner do
ds_path, fanouts, spec = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
ds = Dataset.open(ds_path)
sampler = NeighborSampler(ds, fanouts)
Planner(ds, sampler, PlanSpec(**{**spec, "name": spec["name"] + "-warm"})).plan_epoch(0)  # compiles and loads the kernels
planner = Planner(ds, sampler, PlanSpec(**spec))
release_free_memory()  # what the warm-up freed goes back: the growth measured is this epoch's own
with Peak() as peak:
    stats = planner.plan_epoch(1)
print(json.dumps({"growth": peak.growth, "estimate": sum(planner.memory_estimate().values()),
                  "sweeps": stats.sweeps, "batches": stats.batches, "edges": stats.edges,
                  "num_batches": planner.num_batches}))
"""


def planning_growth(ds: Dataset, fanouts: list[int], **spec: Any) -> dict[str, int]:
    """Plan one epoch in a fresh interpreter, as ``gnn-ooc sample`` does (allocator tuned, kernels
    loaded by a warm-up epoch first): the growth of its anonymous memory, the planner's estimate."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(ds.path), json.dumps(fanouts), json.dumps(spec)],
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def random_dataset(root: Path, n: int = 300_000, e: int = 3_000_000, every: int = 6) -> Dataset:
    """Uniform random edges (a 14 MB topology by default), every ``every``-th node training."""
    rng = np.random.default_rng(0)
    write_raw(root / "raw", rng.integers(0, n, e), rng.integers(0, n, e), splits={"train": np.arange(0, n, every)})
    preprocess(PreprocessSpec(output=root / "ds", edges=(root / "raw" / "edges.parquet",), num_nodes=n,
                              split_dir=root / "raw" / "split"))
    return Dataset.open(root / "ds")


def test_topology_larger_than_the_budget(tmp_path: Path) -> None:
    ds = random_dataset(tmp_path)
    topology = ds.manifest.files["indptr"].size + ds.manifest.files["indices"].size
    budget = 10 << 20
    assert topology > budget + (2 << 20)
    got = planning_growth(ds, [5, 5], name="m", batch_size=128, threads=2, memory_budget=budget)
    assert got["batches"] == got["num_batches"] and got["edges"] > 0
    assert got["estimate"] <= budget
    assert got["growth"] <= budget, f"anonymous memory grew {got['growth'] >> 20} MiB, budget {budget >> 20} MiB"
