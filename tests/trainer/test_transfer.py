"""The host-to-device stage: nothing on the CPU; on CUDA, batches arrive on the GPU and give their
page-locked host buffers back."""

from __future__ import annotations

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
