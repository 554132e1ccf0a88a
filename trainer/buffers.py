"""Reused host tensors for batch features (pinned under CUDA), so that assembling a batch writes
into memory that is already mapped.

A fresh ``torch.empty`` of a 35 MB batch (35 k rows of 1 KiB) is a new mmap whose pages fault in
on first write: 33 ms to allocate and fill it against 10 ms to fill a reused one (one thread, this
project's 2-core machine). Every mode gathers into these buffers, the in-memory reference too.

A buffer goes back to the pool when its batch is released (after the step, or after the host to
device copy under CUDA). ``take`` never blocks: with no free buffer it allocates one, so a caller
that keeps batches (a test collecting a whole epoch) only loses the reuse, and the pipeline's
bounded queues still bound how many are in flight. The pool keeps at most ``keep`` free buffers.

Example:
    >>> import torch
    >>> pool = BatchBuffers(dim=4, dtype=torch.float32, keep=2)
    >>> x, give_back = pool.take(3)
    >>> tuple(x.shape)
    (3, 4)
    >>> give_back(); pool.take(2)[0].data_ptr() == x.data_ptr()   # the same memory again
    True
"""

from __future__ import annotations

import threading
from typing import Any, Callable

HEADROOM = 1.1  # new buffers hold this much more than the largest batch so far: sizes vary a little


class BatchBuffers:
    """``take(rows)`` -> (a [rows, dim] tensor, a function giving its memory back)."""

    def __init__(self, dim: int, dtype: Any, *, keep: int = 4, pin: bool = False) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.dim, self.dtype, self.keep, self.pin = int(dim), dtype, int(keep), bool(pin)
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self.allocated = 0  # buffers made (a figure for tests and stats)
        self._largest = 0

    def take(self, rows: int) -> tuple[Any, Callable[[], None]]:
        with self._lock:
            buf = self._free.pop() if self._free else None
        if buf is None or buf.shape[0] < rows:
            buf = self._new(rows)
        given = threading.Event()

        def give_back() -> None:
            if not given.is_set():  # a batch released twice gives its buffer back once
                given.set()
                self._give(buf)

        return buf[:rows], give_back

    def _new(self, rows: int) -> Any:
        import torch

        self.allocated += 1
        self._largest = max(self._largest, rows)
        return torch.empty((max(1, int(self._largest * HEADROOM)), self.dim), dtype=self.dtype, pin_memory=self.pin)

    def _give(self, buf: Any) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)

    def clear(self) -> None:
        """Drop the free buffers (their memory returns to the allocator)."""
        with self._lock:
            self._free.clear()
