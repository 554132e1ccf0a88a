"""The buffer pool: feature buffers reused, grown, bounded, never blocking; segment buffers limited
(a take waits for one to come back, and gives up when the pipeline closes); sources give theirs back."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from gnn_ooc.graphstore.features.stores import MemoryStore
from gnn_ooc.sampler.base import SampledSubgraph
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.trainer.assemble import KEPT_BUFFERS
from gnn_ooc.trainer.buffers import HEADROOM, BatchBuffers, segment_buffers
from gnn_ooc.trainer.sources import SampledSource, TrainBatch


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


def test_segment_buffers_are_limited_page_aligned_and_give_up_when_the_pipeline_closes() -> None:
    stop = threading.Event()
    pool = segment_buffers(2, stop)
    (a, back_a), _ = pool.take(10_000), pool.take(10_000)
    assert len(a) >= 10_000 and len(a) % 4096 == 0 and pool.allocated == 2
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(10_000)[0]))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # two are out: the third take waits
    back_a()
    waiter.join(5)
    assert got == [a] and pool.allocated == 2  # the one given back, not a new one
    stop.set()
    with pytest.raises(InterruptedError):
        pool.take(10_000)
    pool.forget_taken()  # a closed pipeline's buffers are not coming back
    stop.clear()
    assert len(pool.take(10_000)[0]) >= 10_000


def test_a_source_gathers_into_buffers_it_gets_back_on_release() -> None:
    store = MemoryStore(torch.arange(40.0).reshape(20, 2))
    ring = (np.arange(21, dtype=np.int64), (np.arange(20) + 1) % 20)  # the sampler is not called here
    src = SampledSource(np.arange(20), np.zeros(20, np.int64), sampler=NeighborSampler(ring, [1]), store=store,
                        batch_size=4, seed=0)
    seen = set()
    for n in (6, 5, 6, 5, 4, 6):  # the first is the largest: one buffer fits all
        b = src.assemble(_batch(n))
        assert torch.equal(b.x, store.gather(torch.arange(n)))
        seen.add(b.x.data_ptr())
        b.release()
    assert len(seen) == 1  # one buffer served every batch
    held = [src.assemble(_batch(5)) for _ in range(KEPT_BUFFERS + 2)]
    assert len({b.x.data_ptr() for b in held}) == len(held)  # none shared while held
    for b in held:
        b.release()
    src.drop_buffers()
    b = src.assemble(_batch(5))
    assert b.x.data_ptr() not in {h.x.data_ptr() for h in held}  # the kept ones were dropped
