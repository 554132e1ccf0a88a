"""Rows read straight from the feature file with O_DIRECT: aligned, coalesced, io_uring or a thread pool.

A gather sorts its ids, turns each row into the 4 KiB pages that hold it, merges pages that
touch or overlap into runs (rows in the same page are read once; a run is at most
``max_run`` bytes), reads the runs into one aligned buffer, and copies each row out. The page
cache is bypassed, so what is counted is what the disk delivered: ``stats`` has the bytes read
and the read amplification (bytes read / bytes of rows served).

The runs are read by one of two backends (``io=``): "threads", ``os.preadv`` from ``threads``
threads (it releases the GIL, so reads are in flight together), or "io_uring", one ring of
``queue_depth`` slots (``uring.UringReader``: a wave of reads per syscall, no Python per read).
"auto" takes io_uring where ``capabilities.io_uring_available()``: measured here (2 cores,
virtio disk, 1.5 GB file of 512 B rows, random gathers, ``tools/bench/direct_io.py``) it
delivered 1.5x the rows/s of 16 threads at depth 128 (20,000-row batches; 1.7x at 2,000), while
the pool stays at ~0.057 M rows/s from 16 to 64 threads: each read costs the pool a Python call
and a GIL hand-off, which two cores cannot overlap. At depth 32 the two were even, so the
default depth is 128.

Example:
    >>> store = DirectStore("data/cora/features.npy", torch.float32)   # doctest: +SKIP
    >>> store.gather(torch.tensor([5, 6, 7])).shape                  # doctest: +SKIP
    torch.Size([3, 1433])
"""

from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from gnn_ooc.errors import GnnOocError, InputError
from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.format.base import DATA_ALIGNMENT
from gnn_ooc.graphstore.io.directio import PAGE, open_read
from gnn_ooc.graphstore.io.uring import UringReader

IO_BACKENDS = ("threads", "io_uring", "auto")
QUEUE_DEPTH = 128


class BackendUnavailable(GnnOocError, RuntimeError):
    """A read backend was asked for by name, and this machine cannot run it."""


def pick_io(io: str) -> str:
    """The read backend for ``io``: "auto" takes io_uring where the kernel allows it (see the module doc)."""
    from gnn_ooc.capabilities import io_uring_available

    if io not in IO_BACKENDS:
        raise ValueError(f"io must be one of {', '.join(IO_BACKENDS)}, not {io!r}")
    if io == "threads":
        return io
    if io_uring_available():
        return "io_uring"
    if io == "io_uring":
        raise BackendUnavailable("io='io_uring' asked for, but capability io_uring_available() is False here "
                           "(not Linux 5.6+, /proc/sys/kernel/io_uring_disabled, or a seccomp filter); "
                           "use io='threads' or 'auto'")
    return "threads"


@njit(cache=True)
def plan_runs(starts: np.ndarray, row_bytes: int, max_pages: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of pages covering rows at sorted byte offsets ``starts``: (first page, pages, run of each row)."""
    n = starts.shape[0]
    first = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    row_run = np.empty(n, np.int64)
    r = -1
    lo = hi = np.int64(-2)
    for i in range(n):
        p0 = starts[i] // PAGE
        p1 = (starts[i] + row_bytes - 1) // PAGE
        if r >= 0 and p0 <= hi + 1 and p1 - lo + 1 <= max_pages:
            if p1 > hi:
                hi = p1
        else:
            if r >= 0:
                count[r] = hi - lo + 1
            r += 1
            lo, hi = p0, p1
            first[r] = lo
        row_run[i] = r
    if r >= 0:
        count[r] = hi - lo + 1
    return first[: r + 1], count[: r + 1], row_run


@njit(parallel=True, cache=True)
def copy_rows(buf: np.ndarray, offsets: np.ndarray, row_bytes: int, dest: np.ndarray, order: np.ndarray) -> None:
    """dest[order[i]] = buf[offsets[i]:offsets[i] + row_bytes] for every i (bytes)."""
    for i in prange(offsets.shape[0]):
        o = offsets[i]
        d = order[i] * row_bytes
        dest[d : d + row_bytes] = buf[o : o + row_bytes]  # a slice copy is a memcpy (7x a byte loop)


class DirectStore(FeatureStore):
    """The direct-disk tier over an aligned feature ``.npy`` (O_DIRECT where the filesystem allows).

    ``io`` picks how runs are read: "threads" (``threads`` preadv calls in flight), "io_uring"
    (``queue_depth`` reads in flight on one ring; BackendUnavailable where the kernel refuses it)
    or "auto" (io_uring where available: faster here, see the module doc); ``io`` then holds
    the backend in use.

    Example:
        >>> with DirectStore("features.npy", torch.float32, io="auto") as store:   # doctest: +SKIP
        ...     store.io, store.gather([3, 1]).shape
        ('io_uring', torch.Size([2, 128]))
    """

    tier = "disk"

    def __init__(self, path: str | os.PathLike[str], dtype: Any, *, threads: int = 16,
                 max_run: int = 1 << 20, direct: bool = True, max_buffer: int = 32 << 20,
                 io: str = "auto", queue_depth: int = QUEUE_DEPTH) -> None:
        if not 1 <= queue_depth <= 4096:
            raise ValueError(f"queue_depth must be in 1..4096, not {queue_depth}")
        self.io = pick_io(io)
        self.path = Path(path)
        try:
            arr = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise InputError(self.path, f"cannot map the feature file ({e})", expected="a whole .npy") from None
        if arr.ndim != 2 or not isinstance(arr, np.memmap) or arr.offset % DATA_ALIGNMENT or not arr.flags.c_contiguous:
            raise InputError(self.path, "not an aligned row-major 2-D feature .npy",
                             expected="C order, data on a 4 KiB boundary")
        super().__init__(arr.shape[0], arr.shape[1], dtype)
        if arr.dtype.itemsize * arr.shape[1] != self.row_bytes:
            raise InputError(self.path, f"rows are {arr.dtype}[{arr.shape[1]}], not {dtype}[{arr.shape[1]}]",
                             expected=f"a {self.row_bytes}-byte row")
        self.data_offset = int(arr.offset)
        self.file_end = self.data_offset + self.num_rows * self.row_bytes
        del arr
        self._fd, self.direct = open_read(self.path, direct)
        self.max_pages = max(1, max_run // PAGE)
        # rows per pass bound the read buffer: a row spans at most two pages
        self.rows_per_pass = max(1, max_buffer // (PAGE * (2 + (self.row_bytes - 1) // PAGE)))
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="gnn-ooc-direct")
        self._threads = max(1, threads)
        self._buf: mmap.mmap | None = None
        self._queue_depth = queue_depth
        self._ring: UringReader | None = None
        self._ring_pid = 0
        # one read buffer and one set of counters: concurrent gathers take turns
        self._lock = threading.Lock()

    @classmethod
    def of(cls, dataset: Any, **kwargs: Any) -> DirectStore:
        from gnn_ooc.graphstore.features.stores import torch_dtype

        return cls(dataset.path / dataset.manifest.files["features"].name, torch_dtype(dataset.feature_dtype), **kwargs)

    def _buffer(self, nbytes: int) -> np.ndarray:
        if self._buf is None or len(self._buf) < nbytes:
            # the old map is dropped, not closed: a view of it may outlive a failed gather
            self._buf = mmap.mmap(-1, max(nbytes, 1 << 20))  # anonymous maps are page-aligned
        return np.frombuffer(self._buf, np.uint8)

    def gather(self, ids: Any, out: Any = None, *, device: Any = None) -> Any:
        with self._lock:
            return super().gather(ids, out, device=device)

    def _gather(self, ids: Any, out: Any) -> None:
        import torch

        if self._fd < 0:
            raise InputError(self.path, "the store is closed")
        idx = ids.numpy()
        order = np.argsort(idx, kind="stable")
        target = out if out.device.type == "cpu" and out.is_contiguous() else torch.empty_like(out, device="cpu")
        dest = target.view(torch.uint8).numpy().reshape(-1)
        for s in range(0, order.size, self.rows_per_pass):  # bounded buffer, sorted pieces
            part = order[s : s + self.rows_per_pass]
            self._read_rows(self.data_offset + idx[part] * self.row_bytes, part, dest)
        if target is not out:
            out.copy_(target)

    def _read_rows(self, starts: np.ndarray, order: np.ndarray, dest: np.ndarray) -> None:
        first, pages, row_run = plan_runs(starts, self.row_bytes, self.max_pages)
        buf_start = np.zeros(first.shape[0] + 1, np.int64)
        np.cumsum(pages * PAGE, out=buf_start[1:])
        buf = self._buffer(int(buf_start[-1]))
        self._read_runs(first, pages, buf_start)
        offsets = buf_start[row_run] + (starts - first[row_run] * PAGE)
        copy_rows(buf, offsets, self.row_bytes, dest, order)
        self.stats.disk_bytes_read += int(buf_start[-1])
        self.stats.disk_reads += int(first.shape[0])

    def _read_runs(self, first: np.ndarray, pages: np.ndarray, buf_start: np.ndarray) -> None:
        at, n = first * PAGE, pages * PAGE
        try:
            got = self._uring_reads(at, n, buf_start) if self.io == "io_uring" else self._thread_reads(at, n, buf_start)
        except OSError as e:
            raise InputError(self.path, f"read failed: {e.strerror}") from None
        want = np.minimum(n, self.file_end - at)
        short = np.flatnonzero(got < want)  # short only at the end of the file
        if short.size:
            r = int(short[0])
            raise InputError(self.path, f"read {int(got[r])} B at byte {int(at[r])}, expected {int(want[r])} B",
                             expected="the file as long as its header says (truncated?)")

    def _thread_reads(self, at: np.ndarray, n: np.ndarray, buf_start: np.ndarray) -> np.ndarray:
        assert self._buf is not None
        view = memoryview(self._buf)
        got = np.zeros(at.shape[0], np.int64)
        parts = np.array_split(np.arange(at.shape[0]), min(at.shape[0], 4 * self._threads))

        def read(part: np.ndarray) -> None:
            for r in part.tolist():
                a, k, o = int(buf_start[r]), int(n[r]), int(at[r])
                try:
                    got[r] = os.preadv(self._fd, [view[a : a + k]], o)
                except OSError as e:
                    raise OSError(e.errno, f"{e.strerror} (read of {k} B at byte {o})") from None

        try:
            for f in [self._pool.submit(read, p) for p in parts]:
                f.result()
        finally:
            view.release()
        return got

    def _uring_reads(self, at: np.ndarray, n: np.ndarray, buf_start: np.ndarray) -> np.ndarray:
        if self._ring is None or self._ring_pid != os.getpid():
            # a forked child shares its parent's ring (the fd and maps): it makes its own
            self._ring, self._ring_pid = UringReader(self._queue_depth), os.getpid()
        return self._ring.read_into(self._fd, at, n, self._buf, buf_start[:-1], self.path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._pool.shutdown(wait=True)
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._buf = None
