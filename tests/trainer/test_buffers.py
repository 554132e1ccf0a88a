"""BatchBuffers: reused, grown, bounded, never blocking; sources give their buffers back."""

from __future__ import annotations

import numpy as np
import torch

from gnn_ooc.graphstore.stores import MemoryStore
from gnn_ooc.sampler.base import SampledSubgraph
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.trainer.buffers import HEADROOM, BatchBuffers
from gnn_ooc.trainer.sources import KEPT_BUFFERS, SampledSource, TrainBatch


def test_a_released_buffer_is_reused_and_a_larger_batch_grows_one() -> None:
    pool = BatchBuffers(dim=3, dtype=torch.bfloat16, keep=1)
    x, give_back = pool.take(10)
    assert x.shape == (10, 3) and x.dtype == torch.bfloat16 and x.is_contiguous()
    give_back()
    give_back()  # twice: given back once
    y, back_y = pool.take(10)
    assert y.data_ptr() == x.data_ptr() and pool.allocated == 1
    back_y()
    z, _ = pool.take(50)  # too small: replaced by one with headroom over the largest batch
    assert z.shape == (50, 3) and pool.allocated == 2 and z.data_ptr() != x.data_ptr()
    w, _ = pool.take(int(50 * HEADROOM))
    assert pool.allocated == 3  # no free buffer: a new one, without waiting


def test_the_pool_keeps_at_most_keep_free_buffers() -> None:
    pool = BatchBuffers(dim=2, dtype=torch.float32, keep=2)
    taken = [pool.take(4) for _ in range(5)]
    for _, back in taken:
        back()
    ptrs = {pool.take(4)[0].data_ptr() for _ in range(3)}
    assert len(ptrs) == 3 and pool.allocated == 6  # two reused, one new


def _batch(nodes: int) -> TrainBatch:
    sub = SampledSubgraph(node=np.arange(nodes), row=np.zeros(0, np.int64), col=np.zeros(0, np.int64),
                          num_sampled_nodes=(nodes,), num_sampled_edges=())
    return TrainBatch(0, 0, sub)


def test_a_source_gathers_into_buffers_it_gets_back_on_release() -> None:
    store = MemoryStore(torch.arange(40.0).reshape(20, 2))
    ring = (np.arange(21, dtype=np.int64), (np.arange(20) + 1) % 20)  # the sampler is not called here
    src = SampledSource(np.arange(20), np.zeros(20, np.int64), sampler=NeighborSampler(ring, [1]), store=store,
                        batch_size=4, seed=0)
    seen = set()
    for n in (6, 5, 6, 5, 4, 6):  # the first is the largest: one buffer fits all
        b = _batch(n)
        b.x = store.gather(torch.arange(n), out=src.features_out(b, store, n))
        assert torch.equal(b.x, store.gather(torch.arange(n)))
        seen.add(b.x.data_ptr())
        b.release()
    assert len(seen) == 1  # one buffer served every batch
    held = [_batch(5) for _ in range(KEPT_BUFFERS + 2)]
    for b in held:
        src.features_out(b, store, 5)
    for b in held:
        b.release()
    src.drop_buffers()
    assert src._buffers is not None and not src._buffers._free
