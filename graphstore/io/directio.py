"""Sequential file writes that bypass the page cache (O_DIRECT) where the filesystem allows.

Writing a new file through the page cache costs a page allocation per 4 KiB, and measured here
2.6x the time of O_DIRECT writes of the same bytes (0.74 s vs 0.28 s for 755 MB); the dataset's
files are written once and read later, so caching them while writing buys nothing. Data goes
through an aligned staging buffer; the tail is padded to the alignment and the file truncated to
its true size. Filesystems without O_DIRECT (tmpfs) get plain unbuffered writes.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> w = SequentialWriter(path)
    >>> w.write(b"abc" * 3000); w.close()
    >>> os.path.getsize(path)
    9000
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gnn_ooc.capabilities import o_direct_flag

PAGE = 4096  # O_DIRECT's alignment of offsets, lengths and buffers (and the page size here)
_ALIGN = PAGE
_STAGING = 8 << 20


class SequentialWriter:
    """Append-only writer; ``write_at_start`` rewrites the first aligned block (a header)."""

    def __init__(self, path: str | os.PathLike[str], *, direct: bool = True, staging: int = _STAGING) -> None:
        self.path = Path(path)
        self._staging = max(_ALIGN, staging // _ALIGN * _ALIGN)
        self.size = 0
        self._fd, self.direct = _open(self.path, direct)
        self._mmap: mmap.mmap | None = None
        self._buf: np.ndarray | None = None
        self._used = 0
        self._sealed = False
        if self.direct:
            self._mmap = mmap.mmap(-1, self._staging)
            self._buf = np.frombuffer(self._mmap, dtype=np.uint8)

    def write(self, data: Any) -> None:
        if self._sealed:
            raise ValueError(f"{self.path}: write after write_at_start")
        view = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
        self.size += view.size
        if self._buf is None:
            write_all(partial(os.write, self._fd), view.data.cast("B"))
            return
        while view.size:
            take = min(view.size, self._staging - self._used)
            self._buf[self._used : self._used + take] = view[:take]
            self._used += take
            view = view[take:]
            if self._used == self._staging:
                self._flush(self._staging)

    def write_at_start(self, block: bytes) -> None:
        """Overwrite the first ``len(block)`` bytes (a multiple of 4096) after the last write."""
        if len(block) % _ALIGN or self.size < len(block):
            raise ValueError("write_at_start needs a whole aligned block that was already written")
        self._drain()
        self._sealed = True
        aligned = mmap.mmap(-1, len(block))
        try:
            aligned[:] = block
            if os.pwrite(self._fd, aligned, 0) != len(block):
                raise OSError(f"{self.path}: short header write")
        finally:
            aligned.close()

    def close(self, fsync: bool = True) -> None:
        if self._fd < 0:
            return
        try:
            self._drain()
            if fsync:
                os.fsync(self._fd)
        finally:
            self.abort()

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._mmap is not None:
            self._buf = None
            self._mmap.close()
            self._mmap = None

    def _drain(self) -> None:
        if self._buf is None or not self._used:
            return
        used = self._used
        padded = -(-used // _ALIGN) * _ALIGN
        self._buf[used:padded] = 0
        self._flush(padded)
        if padded != used:
            os.ftruncate(self._fd, self.size)
            self._sealed = True

    def _flush(self, nbytes: int) -> None:
        assert self._mmap is not None
        view = memoryview(self._mmap)[:nbytes]
        try:
            write_all(partial(os.write, self._fd), view)
        finally:
            view.release()
        self._used = 0


def page_round_up(n: int) -> int:
    """``n`` rounded up to a whole number of pages (O_DIRECT lengths and buffers)."""
    return (n + PAGE - 1) // PAGE * PAGE


def _open(path: Path, direct: bool) -> tuple[int, bool]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    extra = o_direct_flag() if direct else 0
    if extra:
        try:
            return os.open(path, flags | extra, 0o644), True
        except OSError:
            pass
    return os.open(path, flags, 0o644), False


def open_read(path: str | os.PathLike[str], direct: bool = True) -> tuple[int, bool]:
    """A read descriptor, O_DIRECT where asked and the filesystem allows (tmpfs refuses it).

    Returns the descriptor and whether it is direct.
    """
    extra = o_direct_flag() if direct else 0
    if extra:
        try:
            return os.open(path, os.O_RDONLY | extra), True
        except OSError:
            pass
    return os.open(path, os.O_RDONLY), False


def write_all(write: Callable[[memoryview], int], data: memoryview) -> None:
    """Call ``write`` (``os.write`` on a descriptor, a raw file's ``write``) until all bytes are down."""
    while len(data):
        data = data[write(data) :]


def process_read_bytes() -> int | None:
    """Bytes the kernel read from disk for this process so far (``/proc/self/io`` ``read_bytes``:
    memory-map page faults included, other processes' reads not); None where there is no such file.

    Example:
        >>> n = process_read_bytes()
        >>> n is None or n >= 0
        True
    """
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split(":")[1])
    return None
