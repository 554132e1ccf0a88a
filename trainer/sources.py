"""Where training batches come from, per mode: the pipeline stages that turn a batch index into
(blocks, features, labels).

* ``SampledSource`` samples on the fly (``NeighborSampler``, or any ``Sampler``) and gathers
  features from a ``FeatureStore``: with a ``MemoryStore`` it is ``--mode memory``, with a tiered
  store (caches over direct disk reads) it is ``--mode online``.
* ``OfflineSource`` reads batches from a plan, each packed segment with one sequential read into
  one of two reused buffers, and the other rows from the caches and the store (``--mode offline``).

Every mode forms batch ``b`` of epoch ``e`` from the same seeds (``epoch_order``) under the same
key (``SampleKey(seed, e, b)``), so the three modes train on identical batches: offline
accuracy equals in-memory accuracy up to float rounding, and a resumed run replays exactly.
Under DDP, rank ``r`` of ``w`` takes batches ``r, r + w, ...`` of the first ``w * (B // w)``:
disjoint, and equally many per rank.

Example:
    >>> src = SampledSource(ds, sampler, MemoryStore.of(ds), batch_size=1024, seed=0)  # doctest: +SKIP
    >>> source, stages = src.stages(epoch=0, start=0)                                   # doctest: +SKIP
"""

from __future__ import annotations

import mmap
import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from gnn_ooc.graphstore.base import FeatureStore
from gnn_ooc.graphstore.pack import assemble_batch, count_segment_read
from gnn_ooc.sampler.base import SampledSubgraph, SampleKey, Sampler
from gnn_ooc.sampler.plan import epoch_order
from gnn_ooc.trainer.base import EpochSource, torch_blocks
from gnn_ooc.trainer.buffers import BatchBuffers
from gnn_ooc.trainer.transfer import DeviceRows, split_device_rows

Stage = tuple[str, Callable[[Any], Any]]
KEPT_BUFFERS = 4  # free feature buffers kept: at depth d, d + 2 are in use (assembling, queued, in the step)


@dataclass
class TrainBatch:
    """One batch on its way through the pipeline; ``release`` returns its pooled buffers."""

    epoch: int
    index: int  # the batch's index in the epoch (the same on every rank and in every mode)
    sub: SampledSubgraph
    x: Any = None
    y: Any = None
    blocks: tuple[Any, ...] = ()
    device_rows: DeviceRows | None = None  # rows the GPU cache adds after the copy (x holds the rest)
    _on_release: list[Callable[[], None]] = field(default_factory=list)

    @property
    def num_seeds(self) -> int:
        return int(self.sub.num_sampled_nodes[0])

    def release(self) -> None:
        for fn in self._on_release:
            fn()
        self._on_release.clear()


def rank_batches(num_batches: int, rank: int = 0, world: int = 1, *, even: bool = True) -> np.ndarray:
    """The batch indices rank ``rank`` of ``world`` takes: disjoint, and (``even``, for training:
    DDP steps together) as many on every rank, the remainder dropped; ``even=False`` (evaluation)
    deals out every batch.

    Example:
        >>> rank_batches(7, 1, 3).tolist(), rank_batches(7, 0, 3, even=False).tolist()
        ([1, 4], [0, 3, 6])
    """
    if world <= 1:
        return np.arange(num_batches)
    return np.arange(rank, num_batches - (num_batches % world if even else 0), world)


class BatchSource(ABC):
    """The stages of one mode: ``stages(epoch, start)`` gives a source iterator and stage functions."""

    mode = "custom"

    def __init__(self, labels: np.ndarray, *, rank: int = 0, world: int = 1, sampler: Sampler | None = None,
                 pin: bool = False, even: bool = True, defer_device: bool = False) -> None:
        self.labels = labels
        self.even = even
        # the device cache's rows are left to the h2d stage (CUDA): they never cross PCIe
        self.defer_device = defer_device
        self.pin = pin  # features into page-locked buffers (under CUDA: asynchronous copies to the GPU)
        self._buffers: BatchBuffers | None = None
        self.keep_buffers = KEPT_BUFFERS  # free feature buffers kept (the run sets depth + 2)
        self.rank, self.world = rank, world
        self.sampler = sampler  # its state goes into checkpoints
        # the pipeline running this source's stages sets it on close: stages blocked in their own
        # waits (a buffer pool) give up instead of keeping the pipeline from joining them
        self.stop = threading.Event()

    @abstractmethod
    def num_batches(self, epoch: int) -> int:
        """Batches of ``epoch`` over all ranks."""

    def local_batches(self, epoch: int) -> np.ndarray:
        return rank_batches(self.num_batches(epoch), self.rank, self.world, even=self.even)

    @abstractmethod
    def stages(self, epoch: int, start: int) -> tuple[Iterator[Any], list[Stage]]:
        """Items for this rank's batches from position ``start`` on, and the stages after them."""

    def finish_batch(self, batch: TrainBatch) -> TrainBatch:
        """Labels and torch blocks (shared by every mode; runs in the last stage)."""
        import torch

        seeds = batch.sub.node[: batch.num_seeds]
        batch.y = torch.from_numpy(np.asarray(self.labels[seeds], dtype=np.int64))
        batch.blocks = torch_blocks(batch.sub)
        return batch

    def features_out(self, batch: TrainBatch, store: FeatureStore, rows: int) -> Any:
        """A reused [rows, D] host tensor for ``batch``'s features, given back when it is released."""
        if self._buffers is None:
            self._buffers = BatchBuffers(store.dim, store.dtype, keep=self.keep_buffers, pin=self.pin)
        x, give_back = self._buffers.take(int(rows))
        batch._on_release.append(give_back)
        return x

    def host_nodes(self, batch: TrainBatch, store: FeatureStore) -> np.ndarray | None:
        """Indices of ``batch``'s nodes the host assembles (None: all); with ``defer_device``, the
        rows of ``store``'s device cache go to ``batch.device_rows`` instead."""
        cache = next((c for c in getattr(store, "caches", ()) if c.tier == "device"), None)
        if not self.defer_device or cache is None:
            return None
        host, batch.device_rows = split_device_rows(cache, batch.sub.node)
        store.stats.add_hits(cache.tier, int(batch.device_rows.at.numel()), from_disk=False)
        return host

    def drop_buffers(self) -> None:
        """Free the kept feature buffers (an evaluation source between evaluations)."""
        if self._buffers is not None:
            self._buffers.clear()

    def begin_epoch(self, epoch: int) -> None:  # noqa: B027 - an optional hook
        """Called before an epoch's pipeline starts (offline: wait for its plan)."""

    def end_epoch(self, epoch: int) -> None:  # noqa: B027 - an optional hook
        """Called after an epoch's last step (offline: release its plan and pack)."""

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release files, processes and buffers."""


class SampledSource(BatchSource):
    """Online sampling plus a feature store: ``--mode memory`` (MemoryStore) or ``--mode online``."""

    def __init__(self, seeds: np.ndarray, labels: np.ndarray, sampler: Sampler, store: FeatureStore, *,
                 batch_size: int, seed: int, mode: str = "online", rank: int = 0, world: int = 1,
                 pin: bool = False, even: bool = True, defer_device: bool = False) -> None:
        super().__init__(labels, rank=rank, world=world, sampler=sampler, pin=pin, even=even,
                         defer_device=defer_device)
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.store = store
        # a sampling stage runs in a thread: numba's parallel kernels only run on the main thread
        self._thread_sampler = sampler.serial()
        self.batch_size, self.seed, self.mode = batch_size, seed, mode

    def num_batches(self, epoch: int) -> int:
        return -(-self.seeds.size // self.batch_size)

    def stages(self, epoch: int, start: int) -> tuple[Iterator[Any], list[Stage]]:
        order = epoch_order(self.seeds, self.seed, epoch)
        bs = self.batch_size
        todo = self.local_batches(epoch)[start:]
        items = ((int(b), order[b * bs : (b + 1) * bs]) for b in todo)
        return items, [("sample", lambda it: self._sample(epoch, *it)), ("gather", self._gather)]

    def _sample(self, epoch: int, b: int, seeds: np.ndarray) -> TrainBatch:
        sub = self._thread_sampler.sample(seeds, SampleKey(self.seed, epoch, b))
        return TrainBatch(epoch, b, sub)

    def _gather(self, batch: TrainBatch) -> TrainBatch:
        import torch

        node = batch.sub.node
        host = self.host_nodes(batch, self.store)
        ids = node if host is None else node[host]
        batch.x = self.store.gather(torch.from_numpy(ids), out=self.features_out(batch, self.store, ids.size))
        return self.finish_batch(batch)

    def stats(self) -> dict[str, Any]:
        return self.store.stats.as_dict()

    def close(self) -> None:
        self.store.close()


class BufferPool:
    """``count`` page-aligned buffers of ``nbytes``; ``take`` blocks (checking ``stop``) until one is free."""

    def __init__(self, count: int, nbytes: int, stop: threading.Event) -> None:
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(count):
            self._free.put(mmap.mmap(-1, max(nbytes, mmap.PAGESIZE)))
        self._stop = stop

    def take(self) -> mmap.mmap:
        while True:
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    raise InterruptedError("the pipeline is closing") from None

    def give(self, buf: mmap.mmap) -> None:
        self._free.put(buf)


class _Segment:
    """A read segment shared by its batches; the buffer goes back after the last one assembled."""

    def __init__(self, k: int, rows: Any, buf: mmap.mmap, users: int, pool: BufferPool) -> None:
        self.k, self.rows, self.buf, self.users, self.pool = k, rows, buf, users, pool
        self._lock = threading.Lock()

    def done(self) -> None:
        with self._lock:
            self.users -= 1
            last = self.users == 0
        if last:
            self.rows = None
            self.pool.give(self.buf)


class OfflineSource(BatchSource):
    """Batches from a plan's epochs; packed rows from segment reads, the rest from ``store`` (tiered).

    ``epochs`` is an ``EpochSource`` (``trainer.base``): ``wait(e)`` gives the epoch's plan,
    ``release(e)`` lets it go, and ``packed(e)`` its ``PackedEpoch`` or None (every row then from
    ``store``).
    """

    mode = "offline"

    def __init__(self, epochs: EpochSource, labels: np.ndarray, store: FeatureStore, *,
                 rank: int = 0, world: int = 1, sampler: Sampler | None = None,
                 on_close: Callable[[], None] | None = None, hold_buffers: bool = True, pin: bool = False,
                 even: bool = True, defer_device: bool = False) -> None:
        super().__init__(labels, rank=rank, world=world, sampler=sampler, pin=pin, even=even,
                         defer_device=defer_device)
        self._on_close = on_close
        self._hold_buffers = hold_buffers  # False: the two segment buffers are freed at each epoch's end
        self.epochs, self.store = epochs, store
        self._plan: Any = None
        self._packed: Any = None
        self._pool: BufferPool | None = None
        self._pool_bytes = 0
        self.segment_bytes = 0
        self.segment_reads = 0

    def begin_epoch(self, epoch: int) -> None:
        if self._packed is not None:  # an epoch begun again without end_epoch (an evaluation tool)
            self._packed.close()
        self._plan = self.epochs.wait(epoch)
        self._packed = self.epochs.packed(epoch)
        if self._packed is not None and self._packed.buffer_bytes() > self._pool_bytes:
            # two buffers: one being read while the other's batches are assembled
            self._pool_bytes = self._packed.buffer_bytes()
            self._pool = BufferPool(2, self._pool_bytes, self.stop)

    def end_epoch(self, epoch: int) -> None:
        if self._packed is not None:
            self._packed.close()
        self._plan = self._packed = None
        if not self._hold_buffers:
            self.drop_buffers()
            self._pool, self._pool_bytes = None, 0
        self.epochs.release(epoch)

    def num_batches(self, epoch: int) -> int:
        plan = self._plan if self._plan is not None and self._plan.epoch == epoch else self.epochs.wait(epoch)
        return len(plan)

    def stages(self, epoch: int, start: int) -> tuple[Iterator[Any], list[Stage]]:
        todo = self.local_batches(epoch)[start:]
        plan = self._plan
        items = (TrainBatch(epoch, int(b), plan.batch(int(b))) for b in todo)
        state: dict[str, Any] = {"segment": None}
        return items, [("read", lambda batch: self._read(batch, state, todo)), ("assemble", self._assemble)]

    def _read(self, batch: TrainBatch, state: dict[str, Any], todo: np.ndarray) -> tuple[TrainBatch, Any]:
        packed = self._packed
        if packed is None or not packed.segments[packed.segment_of(batch.index)]["packed"]:
            return batch, None
        k = packed.segment_of(batch.index)
        seg = state["segment"]
        if seg is None or seg.k != k:
            assert self._pool is not None
            # todo ascends and segments are batch ranges: this is the segment's first batch to come,
            # so every batch of it still to come is a user
            users = int(np.count_nonzero(todo // packed.segment_batches == k))
            buf = self._pool.take()
            before = packed.bytes_read
            rows = packed.read_segment(k, buffer=buf)
            self._count_segment(rows.shape[0], packed.bytes_read - before)
            seg = state["segment"] = _Segment(k, rows, buf, users, self._pool)
        return batch, seg

    def _count_segment(self, rows: int, nbytes: int) -> None:
        count_segment_read(self.store.stats, rows, nbytes)
        self.segment_bytes += nbytes
        self.segment_reads += 1

    def _assemble(self, item: tuple[TrainBatch, _Segment | None]) -> TrainBatch:
        batch, seg = item
        node = batch.sub.node
        pos = None if seg is None else self._packed.positions(batch.index)
        host = self.host_nodes(batch, self.store)
        if host is not None:
            node, pos = node[host], None if pos is None else pos[host]
        out = self.features_out(batch, self.store, node.size)
        batch.x = assemble_batch(node, pos, None if seg is None else seg.rows, self.store, out)
        if seg is not None:
            seg.done()
        return self.finish_batch(batch)

    def drop_buffers(self) -> None:
        """Free the feature buffers, and between epochs the segment buffers too (an evaluation
        needs their memory; the next epoch makes them again)."""
        super().drop_buffers()
        if self._packed is None:
            self._pool, self._pool_bytes = None, 0

    def stats(self) -> dict[str, Any]:
        out = self.store.stats.as_dict()
        out["segment_reads"] = self.segment_reads
        out["segment_bytes"] = self.segment_bytes
        return out

    def close(self) -> None:
        if self._packed is not None:
            self._packed.close()
        self.store.close()
        if self._on_close is not None:
            self._on_close()
