"""Rows read straight from the feature file with O_DIRECT: aligned, coalesced, from a thread pool.

A gather sorts its ids, turns each row into the 4 KiB pages that hold it, merges pages that
touch or overlap into runs (rows in the same page are read once; a run is at most
``max_run`` bytes), reads the runs into one aligned buffer from ``threads`` threads
(``os.preadv`` releases the GIL, so reads are in flight together), and copies each row out.
The page cache is bypassed, so what is counted is what the disk delivered: ``stats`` has the
bytes read and the read amplification (bytes read / bytes of rows served).

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

from gnn_ooc.graphstore.base import DATA_ALIGNMENT, FeatureStore, InputError
from gnn_ooc.graphstore.directio import open_read

PAGE = 4096


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
    """The direct-disk tier over an aligned feature ``.npy`` (O_DIRECT where the filesystem allows)."""

    tier = "disk"

    def __init__(self, path: str | os.PathLike[str], dtype: Any, *, threads: int = 16,
                 max_run: int = 1 << 20, direct: bool = True, max_buffer: int = 32 << 20) -> None:
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
        # one read buffer and one set of counters: concurrent gathers take turns
        self._lock = threading.Lock()

    @classmethod
    def of(cls, dataset: Any, **kwargs: Any) -> DirectStore:
        from gnn_ooc.graphstore.stores import torch_dtype

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
        assert self._buf is not None
        view = memoryview(self._buf)
        parts = np.array_split(np.arange(first.shape[0]), min(first.shape[0], 4 * self._threads))

        def read(part: np.ndarray) -> None:
            for r in part.tolist():
                a, n, at = int(buf_start[r]), int(pages[r]) * PAGE, int(first[r]) * PAGE
                try:
                    got = os.preadv(self._fd, [view[a : a + n]], at)
                except OSError as e:
                    raise InputError(self.path, f"read of {n} B at byte {at} failed ({e})") from None
                if got < min(n, self.file_end - at):  # short only at the end of the file
                    raise InputError(self.path, f"read {got} B at byte {at}, expected {min(n, self.file_end - at)} B",
                                     expected="the file as long as its header says (truncated?)")

        try:
            for f in [self._pool.submit(read, p) for p in parts]:
                f.result()
        finally:
            view.release()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._pool.shutdown(wait=True)
        self._buf = None
