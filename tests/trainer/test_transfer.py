"""The host-to-device stage: nothing on the CPU; on CUDA, batches arrive on the GPU and give their
page-locked host buffers back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gnn_ooc.capabilities import cuda_available
from gnn_ooc.sampler.base import SampledSubgraph
from gnn_ooc.trainer.base import torch_blocks
from gnn_ooc.trainer.buffers import BatchBuffers
from gnn_ooc.trainer.sources import TrainBatch
from gnn_ooc.trainer.transfer import DeviceTransfer, device_stages


def test_no_stage_on_the_cpu() -> None:
    assert device_stages(torch.device("cpu")) == [] and device_stages("cpu") == []


@pytest.mark.skipif(cuda_available(), reason="checks the error shown without CUDA")
def test_transfer_needs_cuda() -> None:
    with pytest.raises(RuntimeError, match="needs CUDA"):
        DeviceTransfer("cuda")


@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device (the side-stream copy is GPU-only)")
def test_batches_arrive_on_the_gpu_and_buffers_come_back() -> None:
    pool = BatchBuffers(dim=8, dtype=torch.float32, keep=2, pin=True)
    (name, stage), = device_stages("cuda")
    assert name == "h2d"
    for i in range(4):
        sub = SampledSubgraph(node=np.arange(6), row=np.array([1, 2, 3]), col=np.array([0, 1, 1]),
                              num_sampled_nodes=(2, 4), num_sampled_edges=(3,))
        batch = TrainBatch(0, i, sub)
        x, back = pool.take(6)
        assert x.is_pinned()
        x.copy_(torch.full((6, 8), float(i)))
        batch._on_release.append(back)
        batch.x, batch.y, batch.blocks = x, torch.arange(2), torch_blocks(sub)
        out = stage(batch)
        assert out.x.is_cuda and out.y.is_cuda and out.blocks[0].edge_index.is_cuda
        assert torch.equal(out.x.cpu(), torch.full((6, 8), float(i)))
    assert pool.allocated == 1  # each batch's host buffer came back after its copy


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.trainer.conftest import make_dataset

    return make_dataset(tmp_path_factory.mktemp("transfer"), nodes=600, avg_degree=5, feature_dim=8, classes=3, seed=2)


def test_device_cache_rows_are_left_out_of_the_host_buffer_and_placed_after_the_copy(dataset: Any) -> None:
    """What the h2d stage does on the GPU, run on the CPU: the host assembles only the rows the
    device cache lacks; ``place_device_rows`` completes the batch equal to an in-memory gather."""
    from gnn_ooc.graphstore.features.cache import RowCache
    from gnn_ooc.graphstore.features.stores import MemoryStore
    from gnn_ooc.graphstore.features.tiered import TieredStore
    from gnn_ooc.graphstore.format.dataset import Dataset
    from gnn_ooc.sampler.neighbor import NeighborSampler
    from gnn_ooc.trainer.loop import iter_batches
    from gnn_ooc.trainer.sources import SampledSource
    from gnn_ooc.trainer.transfer import place_device_rows

    ds = Dataset.open(dataset)
    memory = MemoryStore.of(ds)
    store = TieredStore([RowCache.filled("device", np.arange(0, 600, 3), memory)], MemoryStore.of(ds))
    src = SampledSource(ds.split("train"), ds.labels, NeighborSampler(ds, [3, 2]), store, batch_size=64, seed=0,
                        defer_device=True)
    batches = 0
    for batch in iter_batches(src, 0):
        rows = batch.device_rows
        assert rows is not None and rows.num_rows == batch.sub.node.size
        assert batch.x.shape[0] == rows.host_at.numel() == batch.sub.node.size - rows.at.numel()
        assert bool((batch.sub.node[rows.at.numpy()] % 3 == 0).all()) and rows.at.numel() > 0
        x = place_device_rows(batch.x, rows, "cpu")
        assert torch.equal(x, memory.gather(batch.sub.node))
        batch.release()
        batches += 1
    assert batches == src.num_batches(0)
    assert store.stats.hits["device"] > 0 and store.stats.rows == store.stats.hits["device"] + store.stats.hits["memory"]


def test_offline_batches_defer_device_rows_too(dataset: Any, tmp_path: Any) -> None:
    from gnn_ooc.graphstore.features.stores import MemoryStore
    from gnn_ooc.graphstore.format.dataset import Dataset
    from gnn_ooc.trainer.config import TrainConfig
    from gnn_ooc.trainer.loop import iter_batches
    from gnn_ooc.trainer.run import build_sources
    from gnn_ooc.trainer.transfer import place_device_rows

    cfg = TrainConfig.resolve({"dataset": str(dataset), "out": str(tmp_path / "run"), "fanouts": "3,2",
                               "batch_size": 64, "epochs": 1, "gpu_cache": "1K", "cpu_cache": "1K",
                               "memory_budget": "64M", "segment_batches": 2, "eval_every": 0})
    ds = Dataset.open(dataset)
    train_src, evals = build_sources(cfg, ds, "offline", tmp_path / "run", 0, lambda _m: None)
    train_src.defer_device = True  # what build_sources sets under CUDA
    memory = MemoryStore.of(ds)
    try:
        deferred = 0
        for batch in iter_batches(train_src, 0):
            assert batch.device_rows is not None
            deferred += batch.device_rows.at.numel()
            assert torch.equal(place_device_rows(batch.x, batch.device_rows, "cpu"), memory.gather(batch.sub.node))
            batch.release()
        train_src.end_epoch(0)
        assert deferred > 0 and train_src.stats()["hits"].get("packed", 0) > 0
    finally:
        train_src.close()
        for src in evals.values():
            src.close()
