"""Many append streams ("runs") at known byte ranges of a few files, written with O_DIRECT.

Packing scatters each chunk of the feature file into hundreds of runs. Through the page cache
every byte was copied twice more (into the cache, then written back), the dirty pages counted
against the caller's memory cgroup, and writeback throttling stalled the pass: buffered writes
ran at a quarter of this disk's O_DIRECT speed. Here each run stages its rows in an aligned
buffer of its own (a numba kernel copies the rows), and whole pages go to disk with O_DIRECT
writes from a few writer threads, which also fold the CRC-32 of what they write. A full buffer
goes to a writer and its run takes a spare one, so the run goes on filling while its last
buffer is on its way to disk; the writes are as large as one buffer per run in the budget allows
(64 KiB writes cost this disk twice the time and three times the CPU of 256 KiB ones).

A run's first and last page may hold the neighbouring run's bytes too; those partial pages are
written through the page cache (a few KiB per run), so no page is ever written both ways.
Filesystems without O_DIRECT (tmpfs) get plain writes for everything.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "f.bin"
    >>> s = RunStreams([path], [b""], [24], run_file=np.array([0, 0]), run_start=np.array([0, 8]),
    ...                run_end=np.array([8, 24]), row_bytes=8)
    >>> rows = np.arange(24, dtype=np.uint8).reshape(3, 8)
    >>> s.stage(rows, local=np.array([0, 1, 2]), run=np.array([1, 0, 1], dtype=np.int32))
    >>> crcs = s.close()
    >>> list(path.read_bytes()) == list(rows[1]) + list(rows[0]) + list(rows[2])
    True
"""

from __future__ import annotations

import mmap
import os
import queue
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np

from gnn_ooc.graphstore.format.npyfile import crc32_combine
from gnn_ooc.graphstore.io.directio import PAGE, _open, write_all
from gnn_ooc.graphstore.io.rowops import word_dtype

MAX_SLOT = 4 << 20  # bytes per write at most: larger buys no speed on this disk
WRITERS = 4         # O_DIRECT writes in flight (each blocks its thread until the device is done)
SPARE = 2 * WRITERS  # buffers beyond one per run: the writes in flight and those queued for a writer


@numba.njit(cache=True, nogil=True)
def _stage_rows(rows: np.ndarray, local: np.ndarray, run: np.ndarray, i: int, bufs: np.ndarray,
                cur: np.ndarray, fill: np.ndarray) -> int:
    """Copy rows ``local[i:]`` into their runs' current buffers; stop at the first that would overflow.

    ``rows`` and ``bufs`` are views in the widest word the row size allows (``word_dtype``);
    ``fill`` counts bytes."""
    word, width, cap = rows.itemsize, rows.shape[1], bufs.shape[1]
    while i < local.size:
        g = run[i]
        f = fill[g] // word
        if f + width > cap:
            return i
        dst, src = bufs[cur[g]], rows[local[i]]
        for j in range(width):
            dst[f + j] = src[j]
        fill[g] += width * word
        i += 1
    return i


def slot_bytes(runs: int, row_bytes: int, budget: int) -> int:
    """Bytes per staging buffer: one per run and ``SPARE`` in flight within ``budget``, never below
    a row and two pages (a write is then at least a page)."""
    least = -(-(row_bytes + 2 * PAGE) // PAGE) * PAGE
    return max(least, min(MAX_SLOT, budget // (runs + SPARE) // PAGE * PAGE))


class RunStreams:
    """Runs ``r`` fill ``[run_start[r], run_end[r])`` of file ``run_file[r]``, rows appended in order.

    Each run fills a buffer of its own; a full one goes to a writer thread and the run takes a
    free buffer from ``SPARE`` more (the partial last page copied over), so writes are as large
    as the budget allows with one buffer per run, not two.
    """

    def __init__(self, paths: list[Path], headers: list[bytes], sizes: list[int], *, run_file: np.ndarray,
                 run_start: np.ndarray, run_end: np.ndarray, row_bytes: int, stage_budget: int = 32 << 20) -> None:
        self.paths, self.sizes, self.row_bytes = paths, sizes, row_bytes
        self.run_file = np.asarray(run_file, np.int64)
        self.run_start = np.asarray(run_start, np.int64)
        self.run_end = np.asarray(run_end, np.int64)
        runs = self.run_start.size
        cap = slot_bytes(runs, row_bytes, stage_budget)
        self._map = mmap.mmap(-1, (runs + SPARE) * cap)  # page-aligned: O_DIRECT needs it
        self._bufs = np.frombuffer(self._map, np.uint8).reshape(runs + SPARE, cap)
        self._word = word_dtype(row_bytes)  # buffers and run starts are aligned to it too
        self._words = self._bufs.view(self._word)
        self.cur = np.arange(runs, dtype=np.int64)         # the buffer each run fills
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for b in range(runs, runs + SPARE):
            self._free.put(b)
        self.base = self.run_start // PAGE * PAGE          # file offset of the current buffer's byte 0
        self.fill = (self.run_start - self.base).astype(np.int64)
        self.head = self.fill.copy()                       # where the run's bytes begin in its first buffer
        self._last: list[Future[int] | None] = [None] * runs  # each run's latest write
        self._failed: BaseException | None = None
        self._fds: list[tuple[int, int]] = []
        self._pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="gnn-ooc-pack-write")
        try:
            for path, header, size in zip(paths, headers, sizes):
                self._fds.append(self._open(path, header, size))
        except BaseException:
            self.abort()
            raise

    @staticmethod
    def _open(path: Path, header: bytes, size: int) -> tuple[int, int]:
        direct, is_direct = _open(path, True)
        plain = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)) if is_direct else direct
        os.ftruncate(plain, size)
        write_all(lambda v: os.pwrite(plain, v, len(header) - len(v)), memoryview(header))
        return direct, plain

    def stage(self, rows: np.ndarray, local: np.ndarray, run: np.ndarray) -> None:
        """Append ``rows[local[i]]`` to run ``run[i]`` for every ``i``, in order (rows: [n, row_bytes] uint8)."""
        rows = rows.reshape(rows.shape[0], self.row_bytes).view(self._word)
        local, run = np.asarray(local, np.int64), np.asarray(run, np.int32)
        i = 0
        while i < local.size:
            i = _stage_rows(rows, local, run, i, self._words, self.cur, self.fill)
            if i < local.size:
                self._flush(int(run[i]))

    def _flush(self, g: int) -> None:
        """Send run ``g``'s whole pages to disk and go on filling a free buffer."""
        if self._failed is not None:
            raise self._failed
        fill, old = int(self.fill[g]), int(self.cur[g])
        full = fill // PAGE * PAGE
        new = self._free.get()  # waits for a write to give its buffer back
        self._bufs[new, : fill - full] = self._bufs[old, full:fill]
        self._last[g] = self._pool.submit(self._write, g, old, int(self.head[g]), full, int(self.base[g]), False,
                                          self._last[g])
        self.base[g] += full
        self.cur[g], self.fill[g], self.head[g] = new, fill - full, 0

    def _write(self, g: int, buf: int, lo: int, hi: int, at: int, last: bool, before: Future[int] | None) -> int:
        """Write buffer bytes ``lo..hi`` at file offset ``at + lo``, give the buffer back; returns the
        run's CRC-32 so far.

        The CRC goes on from the run's previous write (submitted earlier, so already taken by a
        writer thread: waiting for it cannot deadlock; combining CRCs instead cost a minute a pass).
        Whole pages go O_DIRECT; a page shared with the neighbouring run (the first one when
        ``lo`` is not 0, everything of the ``last`` write) goes through the page cache."""
        try:
            direct, plain = self._fds[int(self.run_file[g])]
            view = memoryview(self._bufs[buf])
            split = hi if last else (PAGE if lo else 0)
            write_all(lambda v: os.pwrite(plain, v, at + split - len(v)), view[lo:split])
            write_all(lambda v: os.pwrite(direct, v, at + hi - len(v)), view[split:hi])
            prior = before.result() if before is not None else 0
            return zlib.crc32(view[lo:hi], prior)
        except BaseException as exc:
            self._failed = exc
            raise
        finally:
            self._free.put(buf)

    def close(self) -> list[int]:
        """Finish every run (each must hold exactly its bytes) and make the files durable; returns
        the CRC-32 of each file's bytes after its header, in the order of ``paths``."""
        try:
            for g in range(self.run_start.size):
                self._finish(g)
            crcs = self._file_crcs()
            for _direct, plain in self._fds:
                os.fdatasync(plain)
                if hasattr(os, "posix_fadvise"):  # written once, read much later: keep no cache
                    os.posix_fadvise(plain, 0, 0, os.POSIX_FADV_DONTNEED)
            return crcs
        finally:
            self.abort()

    def _finish(self, g: int) -> None:
        end = int(self.base[g] + self.fill[g])
        if end != self.run_end[g]:
            raise AssertionError(f"{self.paths[int(self.run_file[g])]}: run {g} holds bytes up to {end}, "
                                 f"expected {int(self.run_end[g])}")
        self._last[g] = self._pool.submit(self._write, g, int(self.cur[g]), int(self.head[g]), int(self.fill[g]),
                                          int(self.base[g]), True, self._last[g])

    def _file_crcs(self) -> list[int]:
        crcs = [0] * len(self.paths)
        for g in np.argsort(self.run_start, kind="stable"):  # each file's runs in file order
            k, last = int(self.run_file[g]), self._last[g]
            assert last is not None
            crcs[k] = crc32_combine(crcs[k], last.result(), int(self.run_end[g] - self.run_start[g]))
        return crcs

    def abort(self) -> None:
        """Stop: wait for writes in flight, close the files (a caller removes them)."""
        self._pool.shutdown(wait=True)
        for direct, plain in self._fds:
            os.close(direct)
            if plain != direct:
                os.close(plain)
        self._fds = []
        self._bufs = self._words = np.empty((0, 0), np.uint8)
        if not self._map.closed:
            try:
                self._map.close()
            except BufferError:  # a view still alive in an exception's frame: freed with it
                pass
