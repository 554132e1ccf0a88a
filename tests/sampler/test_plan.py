"""Offline plans: round trip, access counts, refusal, incremental growth, keep-epochs, crashes, background."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gnn_ooc.errors import MemoryBudgetError, OutputError
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.sampler.background import BackgroundPlanner
from gnn_ooc.sampler.base import SampledSubgraph, SampleKey, Sampler
from gnn_ooc.sampler.layerwise import LayerWiseSampler
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import (
    Plan,
    PlanError,
    Planner,
    PlanSpec,
    epoch_order,
    plan_epochs,
)
from tests.conftest import write_raw


def make_dataset(root: Path, seed: int = 0, n: int = 600, e: int = 6000) -> Dataset:
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, e), np.minimum(rng.zipf(1.7, e) - 1, n - 1)
    write_raw(root / "raw", src, dst, splits={"train": np.arange(0, n - 100), "valid": np.arange(n - 100, n)})
    preprocess(PreprocessSpec(output=root / "ds", edges=(root / "raw" / "edges.parquet",), num_nodes=n,
                              split_dir=root / "raw" / "split", undirected=True))
    return Dataset.open(root / "ds")


@pytest.fixture()
def ds(tmp_path: Path) -> Dataset:
    return make_dataset(tmp_path)


SPEC = PlanSpec(name="p", batch_size=64, seed=3, threads=2)


def same(a: SampledSubgraph, b: SampledSubgraph) -> None:
    for name in ("node", "row", "col", "edge"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or np.array_equal(x, y), name
    assert a.num_sampled_nodes == b.num_sampled_nodes and a.num_sampled_edges == b.num_sampled_edges


def test_round_trip_counts_and_fresh_epochs(ds: Dataset) -> None:
    sampler = NeighborSampler(ds, [5, 3], return_edge_ids=True)
    plan = plan_epochs(ds, sampler, 2, SPEC)
    train = ds.split("train")
    for e in (0, 1):
        ep = plan.epoch(e)
        order = epoch_order(train, SPEC.seed, e)
        assert len(ep) == plan.num_batches == -(-train.size // 64)
        counts = np.zeros(ds.num_nodes, np.int64)
        for b, sub in enumerate(ep):
            same(sub, sampler.sample(order[b * 64 : (b + 1) * 64], SampleKey(SPEC.seed, e, b)))
            assert np.array_equal(ep.seeds(b), order[b * 64 : (b + 1) * 64])
            counts[sub.node] += 1
        assert np.array_equal(ep.access_counts(), counts)
        assert np.array_equal(np.sort(np.concatenate([ep.seeds(b) for b in range(len(ep))])), train)
    assert not np.array_equal(plan.epoch(0).batch(0).node, plan.epoch(1).batch(0).node)  # fresh samples
    counted, totals = plan.totals()
    assert counted == [0, 1]
    assert np.array_equal(totals, plan.epoch(0).access_counts().astype(np.int64) + plan.epoch(1).access_counts())
    plan.verify()


def test_thread_count_does_not_change_the_plan(ds: Dataset, tmp_path: Path) -> None:
    sampler = NeighborSampler(ds, [4, 4])
    one = plan_epochs(ds, sampler, [0], PlanSpec(name="a", batch_size=50, threads=1))
    two = plan_epochs(ds, sampler, [0], PlanSpec(name="b", batch_size=50, threads=2))
    for f in ("nodes.npy", "rows.npy", "fanin.npy", "index.npy", "access.npy"):
        assert (one.path / "epoch-000000" / f).read_bytes() == (two.path / "epoch-000000" / f).read_bytes()


def test_refuses_another_dataset_or_sampler(ds: Dataset, tmp_path: Path) -> None:
    plan_epochs(ds, NeighborSampler(ds, [3]), 1, SPEC)
    other = make_dataset(tmp_path / "other", seed=1)
    shutil.copytree(ds.path / "plans", other.path / "plans")
    with pytest.raises(PlanError, match="planned for dataset"):
        Plan.open(other, "p")
    with pytest.raises(PlanError, match="planned with sampler"):
        Plan.open(ds, "p", sampler=NeighborSampler(ds, [4]))
    with pytest.raises(PlanError, match="exists with other sampler"):
        Planner(ds, NeighborSampler(ds, [4]), SPEC)
    with pytest.raises(PlanError, match="exists with other batching"):
        Planner(ds, NeighborSampler(ds, [3]), PlanSpec(name="p", batch_size=65))
    Planner(ds, NeighborSampler(ds, [4]), SPEC, force=True)  # --force replaces it
    assert Plan.open(ds, "p", sampler=NeighborSampler(ds, [4])).epochs() == []


def test_incremental_keep_epochs_and_idempotence(ds: Dataset) -> None:
    sampler = NeighborSampler(ds, [3, 3])
    planner = Planner(ds, sampler, SPEC)
    for e in range(4):
        assert planner.plan_epoch(e) is not None
        planner.keep_latest(2)
        assert len(planner.plan.epochs()) <= 2
    assert planner.plan.epochs() == [2, 3]
    assert planner.plan_epoch(3) is None  # already there
    counted, totals = planner.plan.totals()
    assert counted == [0, 1, 2, 3] and int(totals.sum()) > 0
    assert [p.name for p in planner.path.iterdir() if p.name.startswith("totals-")] == ["totals-000003"]


class Failing(Sampler):
    """Fails at a given batch (to check that a failed epoch leaves nothing behind)."""

    def __init__(self, inner: Sampler, fail_at: int) -> None:
        super().__init__(inner.num_nodes)
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    @property
    def num_layers(self) -> int | None:
        return self.inner.num_layers

    def settings(self) -> dict:
        return self.inner.settings()

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        if key.batch == self.fail_at:
            raise RuntimeError("boom")
        return self.inner.sample(seeds, key)


def test_failed_epoch_leaves_nothing_and_a_rerun_completes(ds: Dataset) -> None:
    good = NeighborSampler(ds, [3])
    with pytest.raises(RuntimeError, match="boom"):
        plan_epochs(ds, Failing(good, 3), 1, SPEC)
    path = Plan.path_for(ds, "p")
    assert sorted(p.name for p in path.iterdir()) == ["plan.json"]
    os.makedirs(path / ".epoch-000000.partial-999-dead")  # a killed run's leftover (no lock held)
    plan = plan_epochs(ds, good, 1, SPEC)
    assert sorted(p.name for p in path.iterdir()) == ["epoch-000000", "plan.json", "totals-000000"]
    assert len(plan.epoch(0)) == plan.num_batches


def test_corrupt_epoch_is_named(ds: Dataset) -> None:
    plan = plan_epochs(ds, NeighborSampler(ds, [3]), 1, SPEC)
    rows = plan.path / "epoch-000000" / "rows.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 0xFF
    rows.write_bytes(bytes(data))
    with pytest.raises(PlanError, match="rows.npy: checksum"):
        plan.verify()
    with open(rows, "ab") as f:
        f.write(b"x")
    with pytest.raises(PlanError, match="rows.npy: size"):
        plan.epoch(0)


class UnsortedUser(Sampler):
    """A user sampler whose edges are not grouped by destination (the plan must still round-trip)."""

    thread_safe = True

    def __init__(self, ds: Dataset) -> None:
        super().__init__(ds.num_nodes)
        self.indptr, self.indices = ds.indptr, ds.indices

    @property
    def num_layers(self) -> int:
        return 1

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        rng = key.generator()
        starts, degs = self.indptr[seeds], np.diff(self.indptr)[seeds]
        keep = degs > 0
        picks = starts[keep] + (rng.random(int(keep.sum())) * degs[keep]).astype(np.int64)
        dst = np.flatnonzero(keep)[::-1].copy()  # reversed: not grouped in node order
        return SampledSubgraph.from_hops(seeds, [(self.indices[picks][::-1], dst)], edges=[picks[::-1]])


@pytest.mark.parametrize("make", [UnsortedUser, lambda ds: LayerWiseSampler(ds, [20, 10])])
def test_custom_samplers_offline_equal_online(ds: Dataset, make) -> None:
    sampler = make(ds)
    plan = plan_epochs(ds, sampler, 1, SPEC)
    order = epoch_order(ds.split("train"), SPEC.seed, 0)
    for b in range(plan.num_batches):
        online = sampler.sample(order[b * 64 : (b + 1) * 64], SampleKey(SPEC.seed, 0, b))
        offline = plan.epoch(0).batch(b)
        offline.validate(ds.num_nodes)
        assert np.array_equal(online.node, offline.node)
        pairs = lambda s: sorted(zip(s.row.tolist(), s.col.tolist()))  # noqa: E731
        assert pairs(online) == pairs(offline)  # same edges; the plan groups them by destination


def test_memory_budget_is_checked(ds: Dataset) -> None:
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        Planner(ds, NeighborSampler(ds, [50, 50, 50]), PlanSpec(name="m", memory_budget=2 << 20))
    assert not Plan.path_for(ds, "m").exists()  # refused before anything is written


def test_count_pass_by_id_range_equals_dense(ds: Dataset) -> None:
    sampler = NeighborSampler(ds, [4, 4])
    dense = plan_epochs(ds, sampler, 1, PlanSpec(name="d", batch_size=64))
    planner = Planner(ds, sampler, PlanSpec(name="c", batch_size=64))
    planner._dense_counts, planner._chunk_nodes = False, 97  # force the bounded path: 7 id ranges
    planner.plan_epoch(0)
    assert np.array_equal(dense.epoch(0).access_counts(), planner.plan.epoch(0).access_counts())
    assert np.array_equal(dense.totals()[1], planner.plan.totals()[1])


def test_background_planner_keeps_at_most_k_epochs(ds: Dataset) -> None:
    sampler = NeighborSampler(ds, [3, 3])
    reference = plan_epochs(ds, sampler, 4, PlanSpec(name="ref", batch_size=64, seed=3))
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        path = Plan.path_for(ds, "bg")
        while not stop.is_set():
            if path.is_dir():
                seen.append(sum(1 for p in path.iterdir() if p.name.startswith("epoch-")))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with BackgroundPlanner(ds, sampler, PlanSpec(name="bg", batch_size=64, seed=3), range(4), keep_epochs=2) as bp:
            for e in range(4):
                ep = bp.wait(e, timeout=120)
                for b in range(len(ep)):
                    same(ep.batch(b), reference.epoch(e).batch(b))
                bp.release(e)
    finally:
        stop.set()
        watcher.join()
    assert max(seen) <= 2
    assert Plan.open(ds, "bg").totals()[0] == [0, 1, 2, 3]


def test_background_planner_counts_the_callers_held_epoch(ds: Dataset) -> None:
    """keep_epochs=2 with one epoch held by the caller: the child plans one ahead, then waits for
    release_held before the next (the trainer holds the epoch it planned itself)."""
    sampler = NeighborSampler(ds, [3])
    spec = PlanSpec(name="held", batch_size=64, seed=3)
    plan_epochs(ds, sampler, 1, spec)  # epoch 0, the caller's
    with BackgroundPlanner(ds, sampler, spec, [1, 2], keep_epochs=2, held=1) as bp:
        bp.wait(1, timeout=120)
        with pytest.raises(TimeoutError):
            bp.wait(2, timeout=1.5)  # both slots taken: epoch 0 (held) and epoch 1
        bp.release_held()
        assert len(bp.wait(2, timeout=120)) > 0  # epoch 1 still kept: the held slot let it in
        with pytest.raises(PlanError, match="no epoch held"):
            bp.release_held()
    with pytest.raises(PlanError, match="more than held"):
        BackgroundPlanner(ds, sampler, spec, [1], keep_epochs=1, held=1)


def test_background_planner_error_surfaces(ds: Dataset) -> None:
    sampler = NeighborSampler(ds, [3])
    bp = BackgroundPlanner(ds, sampler, PlanSpec(name="err", batch_size=64), range(2))
    with open(ds.path / "indices.npy", "ab") as f:  # the child reopens the dataset and finds it truncated
        f.write(b"junk")
    with bp, pytest.raises(PlanError, match="planner process failed(.|\n)*indices.npy"):
        bp.wait(0, timeout=120)


def test_plan_json_records_identity_and_settings(ds: Dataset) -> None:
    plan = plan_epochs(ds, NeighborSampler(ds, [3, 2]), 1, SPEC)
    meta = json.loads((plan.path / "plan.json").read_text())
    assert meta["sampler"]["fanouts"] == [3, 2] and meta["batching"]["batch_size"] == 64
    assert meta["dataset"]["fingerprint"] == ds.fingerprint and len(meta["dataset"]["identity"]) == 32


def test_bad_names_and_cleanup_of_killed_runs(ds: Dataset) -> None:
    for bad in ("", ".", "..", "../x", "a/b", "-x"):
        with pytest.raises(OutputError, match="plan name"):
            PlanSpec(name=bad)
    plan = plan_epochs(ds, NeighborSampler(ds, [3]), 1, SPEC)
    (plan.path / ".epoch-000007.partial-1-dead").mkdir()  # a child killed mid-epoch (lock gone)
    (plan.path / ".epoch-000000.removed-abc").mkdir()      # a delete interrupted half way
    Planner(ds, NeighborSampler(ds, [3]), SPEC)
    assert sorted(p.name for p in plan.path.iterdir()) == ["epoch-000000", "plan.json", "totals-000000"]
    ep = plan.epoch(0)
    sub = ep.batch(0)
    sub.node[0] = -5  # batches are copies, not views of the read-only maps
    with pytest.raises(IndexError):
        ep.seeds(len(ep))


def test_samplers_pickle_as_file_names(ds: Dataset) -> None:
    import pickle

    w = ds.path / "w.npy"
    np.save(w, np.ones(ds.num_edges, np.float32))
    for sampler in (LayerWiseSampler(ds, [10]), NeighborSampler((ds.indptr, ds.indices), [3]),
                    NeighborSampler(ds, [3], weights=np.load(w, mmap_mode="r"))):
        blob = pickle.dumps(sampler)
        assert len(blob) < 4096, type(sampler).__name__
        twin = pickle.loads(blob)
        assert np.array_equal(twin.sample([0, 1], key=3).node, sampler.sample([0, 1], key=3).node)
