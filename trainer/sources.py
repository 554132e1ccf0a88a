"""Where training batches come from, per mode: the pipeline stages that turn a batch index into
(blocks, features, labels).

* ``SampledSource`` samples on the fly (``NeighborSampler``, or any ``Sampler``) and gathers
  features from a ``FeatureStore``: with a ``MemoryStore`` it is ``--mode memory``, with a tiered
  store (caches over direct disk reads) it is ``--mode online``.
* ``OfflineSource`` reads batches from a plan and their features from the plan's packed
  segments and the caches and the store (``--mode offline``).

Either way a ``BatchAssembler`` (``trainer.assemble``) forms the feature matrix: segment reads,
the device/host split, the gathers and their counting are its, in one place.

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

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.sampler.base import SampledSubgraph, SampleKey, Sampler
from gnn_ooc.sampler.plan import epoch_order
from gnn_ooc.trainer.assemble import BatchAssembler, Segment
from gnn_ooc.trainer.base import EpochSource, torch_blocks
from gnn_ooc.trainer.transfer import DeviceRows

Stage = tuple[str, Callable[[Any], Any]]


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

    def __init__(self, labels: np.ndarray, store: FeatureStore, *, rank: int = 0, world: int = 1,
                 sampler: Sampler | None = None, pin: bool = False, even: bool = True,
                 defer_device: bool = False) -> None:
        self.labels = labels
        self.even = even
        self.rank, self.world = rank, world
        self.sampler = sampler  # its state goes into checkpoints
        # the pipeline running this source's stages sets it on close: stages blocked in their own
        # waits (a buffer pool) give up instead of keeping the pipeline from joining them
        self.stop = threading.Event()
        # pin: features into page-locked buffers (under CUDA: asynchronous copies to the GPU);
        # defer_device: the device cache's rows are left to the h2d stage, they never cross PCIe
        self.assembler = BatchAssembler(store, pin=pin, defer_device=defer_device, stop=self.stop)

    @property
    def store(self) -> FeatureStore:
        return self.assembler.store

    @property
    def defer_device(self) -> bool:
        """Whether the device cache's rows are left to the host-to-device stage (set under CUDA)."""
        return self.assembler.defer_device

    @defer_device.setter
    def defer_device(self, on: bool) -> None:
        self.assembler.defer_device = bool(on)

    @property
    def keep_buffers(self) -> int:
        """Free feature buffers kept (the run sets depth + 2: as many as are in flight)."""
        return self.assembler.keep

    @keep_buffers.setter
    def keep_buffers(self, n: int) -> None:
        self.assembler.keep = int(n)

    @abstractmethod
    def num_batches(self, epoch: int) -> int:
        """Batches of ``epoch`` over all ranks."""

    def local_batches(self, epoch: int) -> np.ndarray:
        return rank_batches(self.num_batches(epoch), self.rank, self.world, even=self.even)

    @abstractmethod
    def stages(self, epoch: int, start: int) -> tuple[Iterator[Any], list[Stage]]:
        """Items for this rank's batches from position ``start`` on, and the stages after them."""

    def assemble(self, batch: TrainBatch, segment: Segment | None = None) -> TrainBatch:
        """The batch's features (the assembler's), labels and torch blocks: the last stage of every mode."""
        import torch

        batch.x, batch.device_rows, give_back = self.assembler.assemble(batch.sub.node, batch.index, segment)
        batch._on_release.append(give_back)
        seeds = batch.sub.node[: batch.num_seeds]
        batch.y = torch.from_numpy(np.asarray(self.labels[seeds], dtype=np.int64))
        batch.blocks = torch_blocks(batch.sub)
        return batch

    def drop_buffers(self) -> None:
        """Free the kept feature buffers (an evaluation source between evaluations)."""
        self.assembler.drop_buffers()

    def begin_epoch(self, epoch: int) -> None:  # noqa: B027 - an optional hook
        """Called before an epoch's pipeline starts (offline: wait for its plan)."""

    def end_epoch(self, epoch: int) -> None:  # noqa: B027 - an optional hook
        """Called after an epoch's last step (offline: release its plan and pack)."""

    def stats(self) -> dict[str, Any]:
        return self.assembler.stats()

    def close(self) -> None:
        """Release files, processes and buffers."""
        self.assembler.close()


class SampledSource(BatchSource):
    """Online sampling plus a feature store: ``--mode memory`` (MemoryStore) or ``--mode online``."""

    def __init__(self, seeds: np.ndarray, labels: np.ndarray, sampler: Sampler, store: FeatureStore, *,
                 batch_size: int, seed: int, mode: str = "online", rank: int = 0, world: int = 1,
                 pin: bool = False, even: bool = True, defer_device: bool = False) -> None:
        super().__init__(labels, store, rank=rank, world=world, sampler=sampler, pin=pin, even=even,
                         defer_device=defer_device)
        self.seeds = np.asarray(seeds, dtype=np.int64)
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
        return items, [("sample", lambda it: self._sample(epoch, *it)), ("gather", self.assemble)]

    def _sample(self, epoch: int, b: int, seeds: np.ndarray) -> TrainBatch:
        sub = self._thread_sampler.sample(seeds, SampleKey(self.seed, epoch, b))
        return TrainBatch(epoch, b, sub)


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
                 even: bool = True, defer_device: bool = False, future: Any = None) -> None:
        super().__init__(labels, store, rank=rank, world=world, sampler=sampler, pin=pin, even=even,
                         defer_device=defer_device)
        # a future-aware device cache in ``store`` that this source steps batch by batch (training)
        self.assembler.future = future
        self._on_close = on_close
        self._hold_buffers = hold_buffers  # False: the segment buffers are freed at each epoch's end
        self.epochs = epochs
        self._plan: Any = None

    def begin_epoch(self, epoch: int) -> None:
        self._plan = self.epochs.wait(epoch)
        self.assembler.begin(self.epochs.packed(epoch), self._plan)  # an epoch begun again closes the last one

    def end_epoch(self, epoch: int) -> None:
        self.assembler.end()
        self._plan = None
        if not self._hold_buffers:
            self.assembler.drop_buffers(segments=True)
        self.epochs.release(epoch)

    def num_batches(self, epoch: int) -> int:
        plan = self._plan if self._plan is not None and self._plan.epoch == epoch else self.epochs.wait(epoch)
        return len(plan)

    def stages(self, epoch: int, start: int) -> tuple[Iterator[Any], list[Stage]]:
        todo = self.local_batches(epoch)[start:]
        plan = self._plan
        self.assembler.start(int(todo[0]) if todo.size else 0)
        items = (TrainBatch(epoch, int(b), plan.batch(int(b))) for b in todo)
        read = self.assembler.read
        return items, [("read", lambda batch: (batch, read(batch.index, todo))),
                       ("assemble", lambda item: self.assemble(*item))]

    def drop_buffers(self) -> None:
        """Free the feature buffers, and between epochs the segment buffers too (an evaluation
        needs their memory; the next epoch makes them again)."""
        self.assembler.drop_buffers(segments=self.assembler.packed is None)

    def close(self) -> None:
        super().close()
        if self._on_close is not None:
            self._on_close()
