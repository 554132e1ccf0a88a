"""One batch's feature matrix, assembled in one place for every mode.

``BatchAssembler`` owns what forming a batch's features takes:

* the segment read (offline): a packed segment is read once, with one sequential O_DIRECT read,
  into one of two page-aligned buffers, and shared by its batches; the buffer goes back after
  the last of them is assembled;
* the device/host split (under CUDA, with a device cache): the rows the GPU cache holds never
  cross PCIe; the host assembles the others compactly and ``batch.device_rows`` says where the
  cached ones go (``transfer.place_device_rows`` puts them there after the copy);
* the gathers: rows of the batch's segment are copied from the read buffer, every other row
  comes from the store's tiers (``FeatureStore.gather_at``), into a reused feature buffer;
* the counting: segment reads (rows, bytes, reads) count as disk rows once, when read, so a
  packed epoch's read amplification stays honest; rows served from a segment count as
  ``packed`` hits, rows left to the device cache as its hits. The store counts its own tiers.

Example:
    >>> import numpy as np, torch
    >>> from gnn_ooc.graphstore.features.stores import MemoryStore
    >>> asm = BatchAssembler(MemoryStore(torch.arange(8.0).reshape(4, 2)))
    >>> x, device_rows, give_back = asm.assemble(np.array([3, 0]))
    >>> x.tolist(), device_rows, asm.stats()["hits"]
    ([[6.0, 7.0], [0.0, 1.0]], None, {'memory': 2})
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from gnn_ooc.errors import DatasetError
from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.io.rowops import move_rows
from gnn_ooc.graphstore.pack.reader import PackedEpoch
from gnn_ooc.trainer.buffers import BatchBuffers, segment_buffers
from gnn_ooc.trainer.transfer import DeviceRows

KEPT_BUFFERS = 4  # free feature buffers kept: at depth d, d + 2 are in use (assembling, queued, in the step)
SEGMENT_BUFFERS = 2  # one being read while the other's batches are assembled


class Segment:
    """A read segment shared by its batches; its buffer goes back after the last one is assembled."""

    def __init__(self, k: int, rows: np.ndarray, users: int, give_back: Callable[[], None]) -> None:
        self.k, self.rows, self.users = k, rows, users
        self._give_back = give_back
        self._lock = threading.Lock()

    def add_user(self) -> None:
        with self._lock:
            self.users += 1

    def done(self) -> None:
        with self._lock:
            self.users -= 1
            last = self.users == 0
        if last:
            self.rows = None  # type: ignore[assignment]
            self._give_back()


class BatchAssembler:
    """Feature matrices of batches from ``store`` and, offline, the packed epoch given to ``begin``.

    ``pin``: feature buffers page-locked (CUDA copies them asynchronously); ``defer_device``: the
    device cache's rows are left to the host-to-device stage; ``stop``: set when the pipeline closes
    (a read waiting for a segment buffer gives up).
    """

    def __init__(self, store: FeatureStore, *, pin: bool = False, defer_device: bool = False,
                 keep: int = KEPT_BUFFERS, stop: threading.Event | None = None) -> None:
        self.store, self.pin, self.defer_device, self.keep = store, pin, defer_device, keep
        self.packed: PackedEpoch | None = None
        self._stop = stop
        self._features: BatchBuffers | None = None
        self._segments = segment_buffers(SEGMENT_BUFFERS, stop)
        self._current: Segment | None = None  # the segment the read stage last read
        self._held: Segment | None = None  # the segment ``batch`` holds until it moves on
        self.segment_reads = self.segment_bytes = 0
        # a future-aware device cache among the store's tiers, stepped to each batch before it is
        # assembled (offline training; its fills come from the batch's segment)
        self.future: Any = None

    # --- epochs --------------------------------------------------------------------------------
    def begin(self, packed: PackedEpoch | None, epoch: Any = None) -> None:
        """Assemble from ``packed`` (None: every row from the store) until ``end``; with a future
        cache, ``epoch`` (its plan) is what the cache follows, and ``packed`` must be packed for it."""
        self.end()
        self.packed, self._current = packed, None
        self._segments.forget_taken()
        if self.future is not None:
            if packed is None or packed.cache != self.future.serving.identity():
                raise DatasetError(f"{None if packed is None else packed.path}: not packed for this run's "
                                   "future-aware cache (its size, window or pinned rows differ): pack the epoch again")
            self.future.begin(epoch, packed.cache_start())

    def start(self, b: int) -> None:
        """The first batch this epoch's pipeline assembles: a future cache replays the steps before
        it (a resume), so that batch ``b`` finds the tiers as a run that never stopped would."""
        if self.future is not None and b > 0 and self.future.step < b - 1:
            self.future.skip_to(b)

    def end(self) -> None:
        if self._held is not None:
            self._held.done()
            self._held = None
        if self.packed is not None:
            self.packed.close()
        self.packed, self._current = None, None

    # --- the read stage ------------------------------------------------------------------------
    def read(self, b: int, todo: np.ndarray) -> Segment | None:
        """The segment batch ``b`` takes rows from (read now if it is a new one), or None. ``todo``:
        the batches of the epoch still to come, ascending (a segment's users)."""
        packed = self.packed
        if packed is None:
            return None
        k = packed.segment_of(b)
        if not packed.segments[k]["packed"]:
            return None
        if self._current is None or self._current.k != k:
            # todo ascends and segments are batch ranges: this is the segment's first batch to
            # come, so every batch of it still to come is a user
            users = int(np.count_nonzero(np.asarray(todo) // packed.segment_batches == k))
            self._current = self._read_segment(packed, k, max(1, users))
        return self._current

    def _read_segment(self, packed: PackedEpoch, k: int, users: int) -> Segment:
        buf, give_back = self._segments.take(packed.buffer_bytes())
        before = packed.bytes_read
        try:
            rows = packed.read_segment(k, buffer=buf)
        except BaseException:
            give_back()
            raise
        self._count_segment(int(rows.shape[0]), packed.bytes_read - before)
        return Segment(k, rows, users, give_back)

    # --- the assemble stage --------------------------------------------------------------------
    def assemble(self, node: np.ndarray, b: int | None = None,
                 segment: Segment | None = None) -> tuple[Any, DeviceRows | None, Callable[[], None]]:
        """Batch ``b``'s features for its nodes ``node``: (host tensor, rows the device cache adds
        after the copy or None, a function giving the tensor's buffer back)."""
        pos = None if segment is None or self.packed is None or b is None else self.packed.positions(b)
        host, device_rows = self._split(node)
        if host is not None:
            node, pos = node[host], None if pos is None else pos[host]
        out, give_back = self._feature_buffers().take(int(node.size))
        try:
            self._gather(node, pos, None if segment is None else segment.rows, out)
            if self.future is not None and b is not None:
                # the batch was served by the tiers as they were; now the cache takes in what of it
                # is worth keeping, from the segment still at hand (the packer ran the same steps)
                self.future.prefetch(b, self._fill(b, segment))
        finally:
            if segment is not None:
                segment.done()
        return out, device_rows, give_back

    def batch(self, b: int) -> Any:
        """Batch ``b`` of the packed epoch at once (read, then assemble): a tool's or a test's way
        in, one call at a time; the trainer's stages call ``read`` and ``assemble`` in their own
        threads. The segment stays held until a batch of another segment is asked for."""
        assert self.packed is not None, "begin(packed) first"
        if self._held is not None and self._held.k != self.packed.segment_of(b):
            self._held.done()  # the hold on the previous segment
            self._held = None
        segment = self.read(b, np.array([b]))
        if segment is not None:
            segment.add_user()  # this call's use (a new segment: the hold)
            self._held = segment
        x, _, _ = self.assemble(self.packed.epoch_plan.nodes(b), b, segment)
        return x

    def _fill(self, b: int, segment: Segment | None) -> Callable[[np.ndarray, Any], None]:
        """Where the future cache's entering rows at batch ``b`` come from: the batch's segment
        (the packer put them in its run), or the backing store for an unpacked segment."""

        assert self.packed is not None
        packed, at = self.packed, self.packed.fill_rows(b)

        def fill(ids: np.ndarray, out: Any) -> None:
            if at.size != ids.size:
                raise DatasetError(f"{packed.path}: batch {b} packs {at.size} rows for the cache, whose policy "
                                   f"loads {ids.size}: packed for another cache (pack the epoch again)")
            _place(ids, at, None if segment is None else segment.rows, out, self.future.backing)

        return fill

    def _split(self, node: np.ndarray) -> tuple[np.ndarray | None, DeviceRows | None]:
        """Indices of ``node`` the host assembles (None: all) and the device cache's share."""
        cache = next((c for c in getattr(self.store, "caches", ()) if c.tier == "device"), None)
        if not self.defer_device or cache is None:
            return None, None
        import torch

        slots = cache.lookup(torch.from_numpy(np.asarray(node, dtype=np.int64)))
        held = slots >= 0
        host, at = torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()
        self.store.stats.add_hits(cache.tier, int(at.numel()), from_disk=False)
        return host.numpy(), DeviceRows(cache, host, at, slots[held], int(node.size))

    def _gather(self, node: np.ndarray, pos: np.ndarray | None, segment_rows: np.ndarray | None, out: Any) -> None:
        """Nodes with ``pos >= 0`` from ``segment_rows``, the rest (cached, or in an unpacked
        segment; all of them when ``pos`` is None) from the store."""
        import torch

        if pos is None or segment_rows is None:
            self.store.gather(torch.from_numpy(np.asarray(node, dtype=np.int64)), out=out)
            return
        self.store.stats.add_hits("packed", _place(node, pos, segment_rows, out, self.store), from_disk=False)

    def _feature_buffers(self) -> BatchBuffers:
        if self._features is None:
            self._features = BatchBuffers(self.store.dim, self.store.dtype, keep=self.keep, pin=self.pin)
        return self._features

    # --- counting and memory -------------------------------------------------------------------
    def _count_segment(self, rows: int, nbytes: int) -> None:
        stats = self.store.stats
        stats.disk_rows += rows
        stats.disk_bytes_read += nbytes
        stats.disk_reads += 1
        self.segment_bytes += nbytes
        self.segment_reads += 1

    def stats(self) -> dict[str, Any]:
        """The store's counters (the segment reads among its disk reads), and the segment reads."""
        return {**self.store.stats.as_dict(), "segment_reads": self.segment_reads, "segment_bytes": self.segment_bytes}

    def drop_buffers(self, *, segments: bool = False) -> None:
        """Free the kept feature buffers (and, with ``segments``, the segment buffers: an
        evaluation between epochs needs their memory; the next epoch makes them again)."""
        if self._features is not None:
            self._features.clear()
        if segments:
            self._segments.clear()

    def close(self) -> None:
        self.end()
        self.store.close()


def _place(ids: np.ndarray, at: np.ndarray, segment_rows: np.ndarray | None, out: Any, store: FeatureStore) -> int:
    """``out[i]`` = row ``ids[i]``: from ``segment_rows[at[i]]`` where ``at[i] >= 0`` (and a segment
    is at hand), else from ``store``; returns how many came from the segment."""
    import torch

    here = at >= 0 if segment_rows is not None else np.zeros(at.size, bool)
    if here.any():
        rows = torch.from_numpy(segment_rows)
        rows = rows.view(out.dtype) if rows.dtype != out.dtype else rows  # bfloat16 is stored as uint16
        move_rows(rows, torch.from_numpy(at[here]), out, torch.from_numpy(np.flatnonzero(here)))
    rest = np.flatnonzero(~here)
    if rest.size:
        store.gather_at(torch.from_numpy(np.asarray(ids, dtype=np.int64)[rest]), out, torch.from_numpy(rest))
    return int(here.sum())
