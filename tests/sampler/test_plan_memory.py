"""Planning a graph whose topology is larger than the memory budget: anonymous memory stays bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from gnn_ooc.graphstore.base import PreprocessSpec
from gnn_ooc.graphstore.dataset import Dataset
from gnn_ooc.graphstore.preprocess import preprocess
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import Planner, PlanSpec
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


def random_dataset(root: Path, n: int = 300_000, e: int = 3_000_000) -> Dataset:
    """Uniform random edges (a 14 MB topology by default), every sixth node training."""
    rng = np.random.default_rng(0)
    write_raw(root / "raw", rng.integers(0, n, e), rng.integers(0, n, e), splits={"train": np.arange(0, n, 6)})
    preprocess(PreprocessSpec(output=root / "ds", edges=(root / "raw" / "edges.parquet",), num_nodes=n,
                              split_dir=root / "raw" / "split"))
    return Dataset.open(root / "ds")


def test_topology_larger_than_the_budget(tmp_path: Path) -> None:
    ds = random_dataset(tmp_path)
    topology = ds.manifest.files["indptr"].size + ds.manifest.files["indices"].size
    budget = 10 << 20
    assert topology > budget + (2 << 20)
    sampler = NeighborSampler(ds, [5, 5])
    spec = PlanSpec(name="m", batch_size=128, threads=2, memory_budget=budget)
    Planner(ds, sampler, PlanSpec(name="warm", batch_size=128, threads=2, memory_budget=budget)).plan_epoch(0)
    planner = Planner(ds, sampler, spec)
    with Peak() as peak:
        stats = planner.plan_epoch(0)
    assert stats is not None and stats.batches == planner.num_batches and stats.edges > 0
    assert sum(planner.memory_estimate().values()) <= budget
    assert peak.growth <= budget, f"anonymous memory grew {peak.growth >> 20} MiB, budget {budget >> 20} MiB"
