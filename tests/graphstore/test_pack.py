"""DiskGNN packing: round trip, dedup within a segment, budgets, batched passes, corruption."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gnn_ooc.errors import ChecksumError, MemoryBudgetError
from gnn_ooc.graphstore.features.cache import RowCache
from gnn_ooc.graphstore.features.policies.static import place_by_hotness
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.graphstore.pack.format import CACHED, UNPACKED, PackSpec
from gnn_ooc.graphstore.pack.reader import PackedEpoch
from gnn_ooc.graphstore.pack.writer import pack_epoch
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import PlanSpec, plan_epochs
from tests.conftest import write_raw


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, object, np.ndarray]:
    root = tmp_path_factory.mktemp("pack")
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.standard_normal((n, 24)).astype(np.float32)
    write_raw(root / "raw", rng.integers(0, n, 20000), np.minimum(rng.zipf(1.6, 20000) - 1, n - 1), features=x,
              splits={"train": np.arange(0, 1500)})
    preprocess(PreprocessSpec(output=root / "ds", edges=(root / "raw" / "edges.parquet",), undirected=True,
                              features=root / "raw" / "node_features.npy", split_dir=root / "raw" / "split"))
    ds = Dataset.open(root / "ds")
    plan = plan_epochs(ds, NeighborSampler(ds, [5, 3]), 2, PlanSpec(batch_size=100, seed=1))
    return ds, plan, x


def features_path(ds: Dataset) -> Path:
    return ds.path / ds.manifest.files["features"].name


def check_round_trip(ds: Dataset, plan: object, x: np.ndarray, epoch: int, cached: np.ndarray, name: str) -> PackedEpoch:
    packed = PackedEpoch(plan, epoch, name)
    ep = plan.epoch(epoch)  # type: ignore[attr-defined]
    held = set(cached.tolist())
    for k, seg in enumerate(packed.segments):
        rows = packed.read_segment(k, verify=True).copy() if seg["packed"] else None
        if rows is not None:
            assert rows.shape[0] == seg["rows"]
            assert len({r.tobytes() for r in rows}) == rows.shape[0]  # each row stored once per segment
        check_first_use_order(packed, seg)
        for b in range(seg["first_batch"], seg["first_batch"] + seg["batches"]):
            node, pos = ep.batch(b).node, packed.positions(b)
            assert np.array_equal(pos == CACHED, np.isin(node, list(held)))
            if rows is None:
                assert np.all(pos[pos != CACHED] == UNPACKED)
            else:
                assert np.array_equal(rows[pos[pos >= 0]], x[node[pos >= 0]])  # every batch's rows
    return packed


def check_first_use_order(packed: PackedEpoch, seg: dict) -> None:
    """Rows sit in the order the batches need them: batch j's new rows form run j, after run j-1."""
    seen = np.zeros(seg["rows"], bool)
    start = 0
    for j, end in enumerate(seg["runs"]):
        pos = packed.positions(seg["first_batch"] + j)
        pos = np.unique(pos[pos >= 0])
        assert pos.size == 0 or pos.max() < end  # a batch needs only the prefix up to its run's end
        new = pos[~seen[pos]] if seg["packed"] else pos
        assert np.array_equal(new, np.arange(start, end)) or not seg["packed"]
        seen[pos] = True
        start = end
    assert start == seg["rows"]


@pytest.mark.parametrize("segment_batches", [1, 4, 100])
def test_round_trip(setup: tuple, segment_batches: int) -> None:
    ds, plan, x = setup
    cached = place_by_hotness(plan.epoch(0).access_counts(), [150])[0]
    name = f"rt{segment_batches}"
    stats = pack_epoch(plan, 0, cached, features_path(ds), PackSpec(name=name, segment_batches=segment_batches))
    assert stats.packed_segments == stats.segments == -(-len(plan.epoch(0)) // segment_batches)
    assert stats.passes == 1
    check_round_trip(ds, plan, x, 0, cached, name)
    again = pack_epoch(plan, 0, cached, features_path(ds), PackSpec(name=name, segment_batches=segment_batches))
    assert again.segments == 0  # the same caches: kept


def test_several_passes_and_pack_budget(setup: tuple) -> None:
    ds, plan, x = setup
    cached = np.arange(0, 2000, 3)
    small = PackSpec(name="passes", segment_batches=2, max_open_segments=2, read_chunk=16 * 1024)
    stats = pack_epoch(plan, 1, cached, features_path(ds), small)
    assert stats.passes > 1 and stats.bytes_read >= stats.passes * 2000 * 96  # one file read per group
    check_round_trip(ds, plan, x, 1, cached, "passes")
    budget = PackSpec(name="budget", segment_batches=2, pack_budget=60 * 1024)
    stats = pack_epoch(plan, 1, cached, features_path(ds), budget)
    assert 0 < stats.packed_segments < stats.segments and stats.bytes_written <= 60 * 1024 + stats.packed_segments * 4096
    check_round_trip(ds, plan, x, 1, cached, "budget")
    with pytest.raises(MemoryBudgetError, match="fewer batches per segment"):
        pack_epoch(plan, 1, cached, features_path(ds), PackSpec(name="tiny", segment_batches=50, memory_budget=8 * 1024,
                                                                 read_chunk=4096))
    assert not (plan.path / "packs" / "tiny" / "epoch-000001").exists()


def test_corrupt_or_truncated_segment_is_named(setup: tuple) -> None:
    ds, plan, x = setup
    pack_epoch(plan, 0, np.array([], np.int64), features_path(ds), PackSpec(name="bad", segment_batches=5))
    packed = PackedEpoch(plan, 0, "bad")
    seg = packed.path / packed.segments[1]["name"]
    data = bytearray(seg.read_bytes())
    data[5000] ^= 0x40
    seg.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="segment-000001.npy: checksum"):
        packed.read_segment(1, verify=True)
    with pytest.raises(ChecksumError, match="segment-000001.npy: checksum"):
        packed.verify()
    seg.write_bytes(bytes(data[:-100]))
    with pytest.raises(ChecksumError, match="segment-000001.npy: size"):
        PackedEpoch(plan, 0, "bad")


def test_background_planner_packs_each_epoch_and_release_removes_it(tmp_path: Path) -> None:
    from gnn_ooc.sampler.background import BackgroundPlanner
    from gnn_ooc.sampler.plan import Plan

    root = tmp_path
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    write_raw(root / "raw", rng.integers(0, 500, 4000), rng.integers(0, 500, 4000), features=x,
              splits={"train": np.arange(400)})
    preprocess(PreprocessSpec(output=root / "ds", edges=(root / "raw" / "edges.parquet",),
                              features=root / "raw" / "node_features.npy", split_dir=root / "raw" / "split"))
    ds = Dataset.open(root / "ds")
    cached = np.arange(0, 500, 4)
    spec = PackSpec(name="bg", segment_batches=2)
    with BackgroundPlanner(ds, NeighborSampler(ds, [4, 2]), PlanSpec(name="bgp", batch_size=50), range(3),
                           keep_epochs=1, pack=(spec, cached)) as bp:
        for e in range(3):
            bp.wait(e, timeout=120)
            plan = Plan.open(ds, "bgp")
            check_round_trip(ds, plan, x, e, cached, "bg")
            bp.release(e)
            assert not (plan.path / "packs" / "bg" / f"epoch-{e:06d}").exists()


def test_placement_from_plan_and_tiered_store(setup: tuple) -> None:
    import torch

    from gnn_ooc.graphstore.features.tiering import (
        CacheBudgets,
        Placement,
        build_tiered_store,
        place_from_counts,
    )

    ds, plan, x = setup
    counts = plan.totals()[1]
    slot = 96 + RowCache.SLOT_OVERHEAD  # a cache's bytes hold its rows and their lookup ids
    placement = place_from_counts(counts, 96, CacheBudgets(gpu_cache=slot * 50, cpu_cache=slot * 200), cuda=False)
    assert placement.device.size == 50 and placement.pinned.size == 200
    assert counts[placement.device].min() >= counts[placement.pinned].max()  # hottest on the device
    placement.save(plan.path / "placement-test")
    again = Placement.load(plan.path / "placement-test")
    assert np.array_equal(again.device, placement.device)
    store = build_tiered_store(ds, placement)
    node = plan.epoch(0).batch(3).node
    assert torch.equal(store.gather(node), torch.from_numpy(x[node]))
    hits = store.stats.hits
    assert hits["device"] == np.isin(node, placement.device).sum() and sum(hits.values()) == node.size
    assert store.stats.disk_rows == hits["disk"]
    store.close()


def test_cli_pack(setup: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gnn_ooc.tools.cli import main

    ds, plan, x = setup
    args = ["pack", str(ds.path), "--plan", "default", "--name", "cli", "--segment-batches", "3",
            "--gpu-cache", "4K", "--cpu-cache", "16K", "--pack-budget", "0.5x", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device_rows"] == 4096 // (96 + RowCache.SLOT_OVERHEAD) and len(out["epochs"]) == 2
    assert sum(e["bytes_written"] for e in out["epochs"]) <= 0.5 * features_path(ds).stat().st_size + 40 * 4096


def test_settings_change_repacks_and_short_files_are_named(setup: tuple, tmp_path: Path) -> None:
    import torch

    from gnn_ooc.errors import InputError
    from gnn_ooc.graphstore.features.direct import DirectStore

    ds, plan, x = setup
    cached = np.arange(0, 2000, 5)
    pack_epoch(plan, 0, cached, features_path(ds), PackSpec(name="chg", segment_batches=3))
    stats = pack_epoch(plan, 0, cached, features_path(ds), PackSpec(name="chg", segment_batches=6))
    assert stats.segments == -(-len(plan.epoch(0)) // 6)  # other settings: packed again
    check_round_trip(ds, plan, x, 0, cached, "chg")
    short = tmp_path / "f.npy"
    short.write_bytes(features_path(ds).read_bytes())
    with DirectStore(short, torch.float32) as store:
        os.truncate(short, short.stat().st_size - 1000)  # shrinks under an open store
        with pytest.raises(InputError, match="f.npy: read .* expected"):
            store.gather([1999])
    with pytest.raises(InputError, match="f.npy: cannot map"):
        DirectStore(short, torch.float32)
    with pytest.raises(InputError, match="rows are float32"):
        DirectStore(features_path(ds), torch.float16)


def test_the_assembler_forms_packed_batches(setup: tuple) -> None:
    import torch

    from gnn_ooc.graphstore.features.tiering import (
        CacheBudgets,
        build_tiered_store,
        place_from_counts,
    )
    from gnn_ooc.trainer.assemble import BatchAssembler

    ds, plan, x = setup
    placement = place_from_counts(plan.totals()[1], 96, CacheBudgets(gpu_cache=96 * 40, cpu_cache=96 * 100), cuda=False)
    spec = PackSpec(name="reader", segment_batches=4, pack_budget=160 * 1024)  # some segments stay unpacked
    pack_epoch(plan, 1, placement.cached, features_path(ds), spec)
    store = build_tiered_store(ds, placement)
    assembler = BatchAssembler(store)
    assembler.begin(PackedEpoch(plan, 1, "reader"))
    for b in range(len(plan.epoch(1))):
        node = plan.epoch(1).nodes(b)
        assert torch.equal(assembler.batch(b), torch.from_numpy(x[node]))
    hits = store.stats.hits
    assert hits["packed"] > 0 and hits["disk"] > 0 and hits["device"] > 0
    assert store.stats.read_amplification > 1.0  # unpacked rows came by 4 KiB pages
    store.close()
