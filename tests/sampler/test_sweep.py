"""External-memory planning: groups of batches sampled in sweeps over the topology equal the
in-memory sampler's batches byte for byte, stay inside the budget, and survive a kill."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gnn_ooc.errors import MemoryBudgetError
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.sampler.base import CorruptGraphError, SampleKey
from gnn_ooc.sampler.kernels import set_threads
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import PlanError, Planner, PlanSpec
from gnn_ooc.sampler.seed_index import SeedIndex
from gnn_ooc.sampler.sweep import SweepSampler
from tests.conftest import write_raw
from tests.sampler.test_plan import same
from tests.sampler.test_plan_memory import planning_growth, random_dataset

PLAN_FILES = ("index.npy", "nodes.npy", "rows.npy", "fanin.npy", "access.npy", "edge_ids.npy")
NO_EDGE_IDS = PLAN_FILES[:5]  # a plan made without edge ids


#: A plan of the test split (1 in 21 nodes: its seeds' index is built) in small batches.
INDEX_PLAN = dict(batch_size=20, seed=3, split="test", memory_budget=64 << 20)


def assert_like_memory(planner: Planner, epoch: int = 0) -> None:
    """``planner``'s epoch (planned) is the bytes the node-by-node path plans for the same spec."""
    spec = dataclasses.replace(planner.spec, name=f"{planner.spec.name}-memory", topology="memory")
    Planner(planner.ds, planner.sampler, spec).plan_epoch(epoch)
    assert_same_epoch(planner.path.parent / spec.name, planner.path, epoch, NO_EDGE_IDS)


def assert_same_epoch(a: Path, b: Path, epoch: int, files: tuple[str, ...] = PLAN_FILES, why: object = None) -> None:
    """Plan folders ``a`` and ``b`` hold the same bytes in each of epoch ``epoch``'s ``files``."""
    for f in files:
        left, right = (root / f"epoch-{epoch:06d}" / f for root in (a, b))
        assert left.read_bytes() == right.read_bytes(), (why, epoch, f)


def graph(rng: np.random.Generator, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power-law in-degrees with isolated nodes and a hub bigger than the test windows."""
    deg = np.minimum(rng.zipf(1.8, n) - 1, 400)
    deg[::53] = 0
    deg[7] = 2500
    indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
    indices = rng.integers(0, n, int(indptr[-1])).astype(np.int32)
    weights = rng.random(indices.shape[0]).astype(np.float32)
    weights[::4] = 0
    return indptr, indices, weights


def make_dataset(root: Path, n: int = 4000, e: int = 60_000, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, e), np.minimum(rng.zipf(1.6, e) - 1, n - 1)
    write_raw(root / "raw", src, dst, splits={"train": np.arange(0, n, 3), "valid": np.arange(1, n, 9),
                                                 "test": np.arange(2, n, 21)})
    preprocess(PreprocessSpec(output=root / "ds", edges=(root / "raw" / "edges.parquet",), num_nodes=n,
                              split_dir=root / "raw" / "split", undirected=True))
    return Dataset.open(root / "ds")


@pytest.mark.parametrize("fanouts,weighted,edge_ids", [
    ([10, 5], False, False), ([-1, 3], False, True), ([5, 5, 2], True, True), ([3, -1], True, False)])
@pytest.mark.parametrize("threads,spill", [(1, False), (2, False), (2, True)])
def test_groups_equal_batch_by_batch(fanouts: list[int], weighted: bool, edge_ids: bool, threads: int, spill: bool,
                                     tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    indptr, indices, weights = graph(rng)
    s = NeighborSampler((indptr, indices), fanouts, weights=weights if weighted else None, return_edge_ids=edge_ids)
    # windows far smaller than the hub and gaps of a few edges: many reads, ranges split and joined
    sweep = SweepSampler(s, window_bytes=4096, gap_bytes=64, parallel=threads > 1)
    seeds = [rng.choice(3000, 60, replace=False) for _ in range(6)]
    seeds[2][0] = 7  # the hub, and the same seeds in two batches of the group
    seeds[4] = seeds[3].copy()
    keys = [SampleKey(1, 2, b) for b in range(6)]
    prev = set_threads(threads)
    try:
        # spilling: each hop's draws put back in order a batch or two at a time, through files
        outs = list(sweep.sample_group(seeds, keys, results_bytes=(1 << 14) if spill else None, scratch=tmp_path))
    finally:
        set_threads(prev)
    for out, sd, key in zip(outs, seeds, keys):
        same(out, s.sample(sd, key))
    assert sweep.stats.sweeps == len(fanouts) and sweep.stats.windows > 2 * len(fanouts)
    assert (sweep.stats.spilled_bytes > 0) == spill and os.listdir(tmp_path) == []


def test_groups_read_memory_mapped_files_with_pread(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    s = NeighborSampler(ds, [10, 10])
    sweep = SweepSampler(s, window_bytes=1 << 14)
    assert sweep._reader("indices", ds.indices).fd is not None  # read from the file, not the map
    seeds = [np.arange(b, ds.num_nodes, 37)[:50] for b in range(5)]
    keys = [SampleKey(0, 1, b) for b in range(5)]
    for out, sd, key in zip(list(sweep.sample_group(seeds, keys)), seeds, keys):
        same(out, s.sample(sd, key))
    assert 0 < sweep.stats.bytes_read


@pytest.mark.parametrize("weighted", [False, True])
def test_external_plan_is_byte_identical(tmp_path: Path, weighted: bool) -> None:
    ds = make_dataset(tmp_path)
    w = None
    if weighted:
        w = tmp_path / "w.npy"
        np.save(w, np.random.default_rng(0).random(ds.num_edges).astype(np.float32))
    sampler = NeighborSampler(ds, [8, 3], weights=w, return_edge_ids=True)  # -1: test_groups_equal_batch_by_batch
    base = dict(batch_size=50, seed=5)
    mem = Planner(ds, sampler, PlanSpec(name="mem", topology="memory", memory_budget=64 << 20, **base))
    assert mem.sweep is None
    # the whole epoch in one group; one group spilling its draws; several groups that spill
    kinds: dict[tuple[bool, bool], Planner] = {}
    for kib in range(12288, 512, -128):
        try:
            ext = Planner(ds, sampler, PlanSpec(name=f"ext-{kib}", topology="external", memory_budget=kib << 10, **base))
        except MemoryBudgetError:
            break
        kinds.setdefault((ext.group == ext.num_batches, ext.results_bytes is None), ext)
    assert set(kinds) == {(True, True), (True, False), (False, False)}, set(kinds)
    for ext in kinds.values():
        logs: list[str] = []
        ext = Planner(ds, sampler, ext.spec, progress=logs.append)
        assert ext.sweep is not None and any("in sweeps over groups of batches (asked for" in m for m in logs)
        budget = ext.spec.memory_budget
        for e in (0, 1):
            mem.plan_epoch(e)
            stats = ext.plan_epoch(e)
            assert stats is not None and stats.sweeps == 2 * -(-ext.num_batches // ext.group)
            assert_same_epoch(mem.path, ext.path, e, why=budget)
            assert sorted(os.listdir(ext.path / f"epoch-{e:06d}")) == sorted(os.listdir(mem.path / f"epoch-{e:06d}"))


def test_auto_sweeps_when_the_topology_does_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset(tmp_path)
    topology = ds.indptr.nbytes + ds.indices.nbytes
    logs: list[str] = []
    import gnn_ooc.memory

    monkeypatch.setattr(gnn_ooc.memory, "available_memory", lambda: (16 << 20) + topology)
    planner = Planner(ds, NeighborSampler(ds, [5, 5]), PlanSpec(name="a", memory_budget=16 << 20), progress=logs.append)
    assert planner.sweep is not None and "is larger than half the" in logs[0]
    monkeypatch.setattr(gnn_ooc.memory, "available_memory", lambda: (16 << 20) + 4 * topology)
    planner = Planner(ds, NeighborSampler(ds, [5, 5]), PlanSpec(name="b", memory_budget=16 << 20))
    assert planner.sweep is None and "fits in half the" in planner.topology_reason


def test_too_small_a_budget_names_the_least(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    spec = PlanSpec(name="s", batch_size=1000, memory_budget=1 << 20, topology="external")
    with pytest.raises(MemoryBudgetError, match="at least") as err:
        Planner(ds, NeighborSampler(ds, [25, 25]), spec)
    least = str(err.value).split("at least ")[1].split(",")[0]
    from gnn_ooc.units import parse_size

    budget = parse_size(least.replace(" ", "").replace("MiB", "M"))
    # exactly the budget named works (its read windows, writers and slack are larger than the refused one's)
    Planner(ds, NeighborSampler(ds, [25, 25]), PlanSpec(name="s", batch_size=1000, memory_budget=budget,
                                                        topology="external")).plan_epoch(0)
    with pytest.raises(MemoryBudgetError):  # and it is the least: a MiB less does not
        Planner(ds, NeighborSampler(ds, [25, 25]), PlanSpec(name="t", batch_size=1000, memory_budget=budget - (1 << 20),
                                                            topology="external"))


def test_topology_several_times_the_budget_stays_within_it(tmp_path: Path) -> None:
    ds = random_dataset(tmp_path, n=400_000, e=4_000_000)
    budget = 7 << 20
    assert ds.indptr.nbytes + ds.indices.nbytes > 2 * budget
    got = planning_growth(ds, [5, 5], name="m", batch_size=128, memory_budget=budget, topology="external")
    assert got["sweeps"] > 2 and got["estimate"] <= budget
    assert got["growth"] <= budget, f"anonymous memory grew {got['growth'] >> 20} MiB, budget {budget >> 20} MiB"


def test_building_and_reading_the_seed_index_stays_within_the_budget(tmp_path: Path) -> None:
    ds = random_dataset(tmp_path, every=20)  # 5 % train: the index is built
    budget = 8 << 20
    got = planning_growth(ds, [5, 5], name="i", batch_size=128, memory_budget=budget, topology="external")
    assert (ds.path / "plans" / "i" / "first-hop" / "first-hop.json").is_file()  # built in the measured epoch
    assert got["estimate"] <= budget
    assert got["growth"] <= budget, f"anonymous memory grew {got['growth'] >> 20} MiB, budget {budget >> 20} MiB"


def test_damaged_indices_are_named_on_the_external_path() -> None:
    rng = np.random.default_rng(2)
    indptr, indices, _ = graph(rng)
    indices = indices.copy()
    v = int(np.flatnonzero(np.diff(indptr) >= 2)[3])
    indices[int(indptr[v]) + 1] = 10**6
    s = NeighborSampler((indptr, indices), [-1])
    with pytest.raises(CorruptGraphError, match=f"position .* holds node id 1000000, .*of node {v}\\)"):
        list(SweepSampler(s).sample_group([np.array([v, 5 if v != 5 else 6])], [SampleKey(0)]))
    bad = indptr.copy()
    bad[50] = bad[51] + 1
    with pytest.raises(CorruptGraphError, match="offsets"):
        list(SweepSampler(NeighborSampler((bad, indices), [2])).sample_group([np.array([49, 50])], [SampleKey(0)]))


def test_a_planner_killed_mid_group_replans_the_same_bytes(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n=20_000, e=400_000)
    # all neighbours at the last hop: hubs' draws far over their bound, so the group's draws spill
    cmd = [sys.executable, "-m", "gnn_ooc.tools.cli", "sample", str(ds.path), "--fanouts", "3,-1", "--batch-size",
           "64", "--topology", "external", "--memory-budget", "24M", "--no-progress"]
    subprocess.run([*cmd, "--name", "ref", "--topology", "memory"], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, "--name", "k"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    plan = ds.path / "plans" / "k"
    deadline = time.monotonic() + 60
    # killed while a group's draws are spilled: the budget forces sub-groups through scratch files
    while time.monotonic() < deadline and proc.poll() is None and not list(plan.glob(".epoch-000000.partial-*/scratch/hop-*/*")):
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert not (plan / "epoch-000000").exists(), "the planner finished before it was killed: grow the graph"
    rerun = subprocess.run([*cmd, "--name", "k"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(plan.glob(".epoch-*"))
    assert_same_epoch(plan, ds.path / "plans" / "ref", 0, NO_EDGE_IDS)


def test_edge_cases_equal_batch_by_batch(tmp_path: Path) -> None:
    """Batches that reach no new nodes (isolated seeds, the last batch of a group), int64 indices,
    one seed per batch, spilled or not."""
    rng = np.random.default_rng(4)
    indptr, indices, _ = graph(rng)
    iso = np.flatnonzero(np.diff(indptr) == 0)
    for idx in (indices, indices.astype(np.int64)):
        s = NeighborSampler((indptr, idx), [2, 2, 2])
        seeds = [np.array([1, 2]), iso[:3], np.array([int(iso[3])])]  # the group ends with an empty frontier
        keys = [SampleKey(3, 0, b) for b in range(3)]
        for results in (None, 1 << 10):
            outs = list(SweepSampler(s, window_bytes=2048).sample_group(seeds, keys, results_bytes=results,
                                                                         scratch=tmp_path))
            for out, sd, key in zip(outs, seeds, keys):
                same(out, s.sample(sd, key))


def test_bad_seeds_and_decreasing_offsets_are_refused() -> None:
    rng = np.random.default_rng(5)
    indptr, indices, _ = graph(rng)
    sweep = SweepSampler(NeighborSampler((indptr, indices), [3]))
    from gnn_ooc.sampler.base import SamplerError

    with pytest.raises(SamplerError, match="twice"):
        list(sweep.sample_group([np.array([4, 4])], [SampleKey(0)]))
    with pytest.raises(SamplerError, match="outside the graph"):
        list(sweep.sample_group([np.array([10**7])], [SampleKey(0)]))
    bad = indptr.copy()
    a = 60
    bad[a + 2] = bad[a] - 1  # node a + 2 starts before node a: each range valid, their order not
    assert bad[a] >= 1 and bad[a + 3] >= bad[a + 2]
    with pytest.raises(CorruptGraphError, match=f"node {a + 2}'s offsets"):
        list(SweepSampler(NeighborSampler((bad, indices), [3])).sample_group([np.array([a, a + 2])], [SampleKey(0)]))


def test_subclasses_with_their_own_sampling_do_not_sweep() -> None:
    class Mine(NeighborSampler):
        def _sample(self, seeds, key):  # type: ignore[no-untyped-def]
            return super()._sample(seeds, key)

    rng = np.random.default_rng(6)
    indptr, indices, _ = graph(rng)
    assert Mine((indptr, indices), [2]).sweeper(window_bytes=1 << 20) is None
    assert NeighborSampler((indptr, indices), [2]).sweeper(window_bytes=1 << 20) is not None


def test_drop_last_with_no_full_batch_plans_an_empty_epoch(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    spec = PlanSpec(name="e", batch_size=2000, drop_last=True, topology="external", memory_budget=256 << 20)
    planner = Planner(ds, NeighborSampler(ds, [3]), spec)
    assert planner.num_batches == 0 and ds.split("train").size < 2000
    stats = planner.plan_epoch(0)
    assert stats is not None and stats.batches == 0


@pytest.mark.parametrize("fanouts,weighted,edge_ids", [
    ([10, 5], False, False), ([-1, 3], False, True), ([5, 5, 2], True, True), ([3, -1], True, False)])
def test_first_hops_read_from_the_seed_index_equal_batch_by_batch(fanouts: list[int], weighted: bool, edge_ids: bool,
                                                                   tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    indptr, indices, weights = graph(rng)
    s = NeighborSampler((indptr, indices), fanouts, weights=weights if weighted else None, return_edge_ids=edge_ids)
    sweep = SweepSampler(s, window_bytes=4096, gap_bytes=64)
    seeds = [rng.choice(3000, 40, replace=False) for _ in range(5)]
    seeds[1][0] = 7  # the hub, isolated nodes, and the same seeds in two batches
    seeds[2][:3] = np.flatnonzero(np.diff(indptr) == 0)[:3]
    seeds[4] = seeds[3].copy()
    index, how = SeedIndex.open_or_build(tmp_path / "first-hop", sweep, np.concatenate(seeds), max_share=1.0)
    assert index is not None and "built now" in how and sweep.stats.sweeps == 1
    sweep.first_hop = index
    keys = [SampleKey(2, 1, b) for b in range(5)]
    for out, sd, key in zip(sweep.sample_group(seeds, keys), seeds, keys):
        same(out, s.sample(sd, key))
    assert sweep.stats.index_passes == 1 and sweep.stats.sweeps == 1 + len(fanouts) - 1
    # a group with a seed the index does not hold reads its first hop from the topology
    other = [np.array([int(np.setdiff1d(np.arange(3000), np.concatenate(seeds))[0]), int(seeds[0][0])])]
    same(next(iter(sweep.sample_group(other, keys[:1]))), s.sample(other[0], keys[0]))
    assert sweep.stats.index_passes == 1 and sweep.stats.sweeps == 1 + 2 * len(fanouts) - 1


def test_a_plan_reads_its_first_hops_from_the_seed_index(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    base = INDEX_PLAN
    sampler = NeighborSampler(ds, [6, 4], return_edge_ids=True)
    mem = Planner(ds, sampler, PlanSpec(name="mem", topology="memory", **base))
    logs: list[str] = []
    ext = Planner(ds, sampler, PlanSpec(name="ext", topology="external", **base), progress=logs.append)
    groups = -(-ext.num_batches // ext.group)
    for e, sweeps in ((0, 1 + groups), (1, groups)):  # the first epoch builds the index: one sweep
        mem.plan_epoch(e)
        stats = ext.plan_epoch(e)
        assert stats is not None and stats.sweeps == sweeps, (e, stats)
        assert_same_epoch(mem.path, ext.path, e)
    assert any("first hops are read from an index" in m and "built now" in m for m in logs)
    ext.plan.verify()
    # a damaged index is not read: the next planner builds it again, and the batches stay the same
    victim = ext.path / "first-hop" / "indices.npy"
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x40
    victim.write_bytes(bytes(raw))
    with pytest.raises(PlanError, match="first-hop index is damaged"):
        ext.plan.verify()
    logs.clear()
    again = Planner(ds, sampler, PlanSpec(name="ext", topology="external", **base), progress=logs.append)
    stats = again.plan_epoch(2)
    mem.plan_epoch(2)
    assert stats is not None and stats.sweeps == 1 + groups and any("built now" in m for m in logs)
    assert_same_epoch(mem.path, again.path, 2)
    logs.clear()
    Planner(ds, sampler, PlanSpec(name="ext", topology="external", **base), progress=logs.append).plan_epoch(3)
    assert any("read from its index" in m for m in logs)


def test_no_seed_index_when_the_seeds_are_much_of_the_graph(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)  # train: 1 in 3 nodes
    logs: list[str] = []
    ext = Planner(ds, NeighborSampler(ds, [4, 4]), PlanSpec(name="x", topology="external", memory_budget=64 << 20),
                  progress=logs.append)
    stats = ext.plan_epoch(0)
    assert stats is not None and stats.sweeps == 2 * -(-ext.num_batches // ext.group)
    assert any("swept over the topology (the seeds are more than 12.5% of the nodes" in m for m in logs)
    assert not (ext.path / "first-hop").exists()


def test_a_full_scratch_disk_stops_the_plan_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while a group's draws are spilled: one line naming the file, exit 1, no
    partial epoch left; with space again the same command plans the same bytes."""
    import errno

    import gnn_ooc.sampler.sweep as sweep_module
    from gnn_ooc.tools.cli import main

    ds = make_dataset(tmp_path, n=20_000, e=400_000)
    argv = ["sample", str(ds.path), "--fanouts", "3,-1", "--batch-size", "64", "--topology", "external",
            "--memory-budget", "24M", "--no-progress"]  # spills (test_a_planner_killed_mid_group_replans_the_same_bytes)
    assert main([*argv, "--name", "ref", "--topology", "memory"]) == 0
    real, calls = sweep_module._append, [0]

    def fills_up(path: Path, a: np.ndarray) -> None:
        calls[0] += 1
        if calls[0] > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, a)

    monkeypatch.setattr(sweep_module, "_append", fills_up)
    capsys.readouterr()
    assert main([*argv, "--name", "full"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("gnn-ooc sample: error: ")]  # after the log lines
    assert calls[0] > 5 and len(errors) == 1 and err[-1] == errors[0], err
    assert "the disk filled while spilling sampled edges" in err[-1] and "/scratch/hop-" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    plan = ds.path / "plans" / "full"
    assert not list(plan.glob(".epoch-*")) and not (plan / "epoch-000000").exists()
    monkeypatch.setattr(sweep_module, "_append", real)
    assert main([*argv, "--name", "full"]) == 0
    assert_same_epoch(plan, ds.path / "plans" / "ref", 0, NO_EDGE_IDS)


@pytest.mark.parametrize("n,bound", [(100_000, 50_000_000), (50_000, 3000), (10_000, 2**40), (5000, 1), (0, 10)])
def test_stable_argsort_is_numpys(n: int, bound: int) -> None:
    from gnn_ooc.sampler.sweep import stable_argsort

    keys = np.random.default_rng(n).integers(0, bound, n)
    assert np.array_equal(stable_argsort(keys, bound), np.argsort(keys, kind="stable"))


def test_a_failed_write_behind_the_sweep_leaves_no_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch writer runs in a thread of its own in the swept path: its error ends the epoch
    (raised, not lost), nothing partial is left, and the next run plans the same bytes."""
    import gnn_ooc.sampler.plan as plan_module

    ds = make_dataset(tmp_path)
    sampler = NeighborSampler(ds, [4, 4])
    mem = Planner(ds, sampler, PlanSpec(name="mem", topology="memory", batch_size=100))
    mem.plan_epoch(0)
    real, calls = plan_module._EpochWriter.add, [0]

    def fails(self: object, sub: object) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device", "rows.npy")
        real(self, sub)  # type: ignore[arg-type]

    monkeypatch.setattr(plan_module._EpochWriter, "add", fails)
    ext = Planner(ds, sampler, PlanSpec(name="ext", topology="external", batch_size=100))
    with pytest.raises(OSError, match="No space left"):
        ext.plan_epoch(0)
    assert not list(ext.path.glob(".epoch-*")) and not (ext.path / "epoch-000000").exists()
    monkeypatch.setattr(plan_module._EpochWriter, "add", real)
    assert ext.plan_epoch(0) is not None
    assert_same_epoch(mem.path, ext.path, 0, NO_EDGE_IDS)


def test_a_second_planner_sweeps_while_the_first_builds_the_index(tmp_path: Path) -> None:
    from gnn_ooc.graphstore.io.atomic import LockedDir

    ds = make_dataset(tmp_path)
    sampler = NeighborSampler(ds, [6, 4])
    base = {**INDEX_PLAN, "topology": "external"}
    logs: list[str] = []
    planner = Planner(ds, sampler, PlanSpec(name="two", **base), progress=logs.append)
    busy = LockedDir(planner.path / ".first-hop.partial-4242-feedbeef")  # another live planner's build
    try:
        stats = planner.plan_epoch(0)
    finally:
        busy.release()
    assert stats is not None and any("another planner is building the seeds' index" in m for m in logs)
    assert_like_memory(planner)
    logs.clear()
    Planner(ds, sampler, PlanSpec(name="two", **base), progress=logs.append).plan_epoch(1)  # the lock is free now
    assert any("built now" in m for m in logs) and not (planner.path / ".first-hop.partial-4242-feedbeef").exists()


def test_a_first_hop_folder_gnn_ooc_did_not_write_is_left_alone(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    sampler = NeighborSampler(ds, [6, 4])
    base = {**INDEX_PLAN, "topology": "external"}
    logs: list[str] = []
    planner = Planner(ds, sampler, PlanSpec(name="u", **base), progress=logs.append)
    mine = planner.path / "first-hop"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    stats = planner.plan_epoch(0)
    assert stats is not None and any("is not a seeds' index: left as it is" in m for m in logs)
    assert sorted(os.listdir(mine)) == ["notes.txt"] and (mine / "notes.txt").read_text() == "the user's"
    assert_like_memory(planner)


@pytest.mark.parametrize("drop", [False, True])
def test_range_reads_direct_or_buffered_equal_the_array(tmp_path: Path, drop: bool) -> None:
    """Windows at any element offset, the file's last page included (direct reads are whole pages);
    a truncated file is named, not read as garbage."""
    from concurrent.futures import ThreadPoolExecutor

    from gnn_ooc.sampler.sweep import RangeReader

    arr = np.random.default_rng(3).integers(0, 1 << 30, 300_001).astype(np.int32)
    np.save(tmp_path / "a.npy", arr)
    reader = RangeReader(np.load(tmp_path / "a.npy", mmap_mode="r"), drop=drop)
    with ThreadPoolExecutor(2) as pool:
        for lo, n, pieces in [(0, 1, 1), (5, 1023, 1), (1000, 250_000, 3), (299_000, 1001, 2), (0, 300_001, 4)]:
            got, futs = reader.start(pool, lo, n, pieces)
            for f in futs:
                f.result()
            assert np.array_equal(got, arr[lo : lo + n]), (lo, n)
        os.truncate(tmp_path / "a.npy", os.path.getsize(tmp_path / "a.npy") - 4000)
        got, futs = reader.start(pool, 290_000, 10_001, 1)
        with pytest.raises(CorruptGraphError, match="a.npy: ends at byte .* truncated"):
            for f in futs:
                f.result()
    reader.close()
