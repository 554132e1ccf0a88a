"""The one pool of reused buffers: batch feature tensors (pinned under CUDA) and the page-aligned
buffers packed segments are read into, so that assembling a batch writes into memory that is
already mapped.

A fresh ``torch.empty`` of a 35 MB batch (35 k rows of 1 KiB) is a new mmap whose pages fault in
on first write: 33 ms to allocate and fill it against 10 ms to fill a reused one (one thread, this
project's 2-core machine). Every mode gathers into these buffers, the in-memory reference too.

``BufferPool.take(size)`` gives a buffer of at least ``size`` and a function giving it back (once,
however often it is called). Without a ``limit`` it never blocks: with no free buffer it makes
one, so a caller that keeps batches (a test collecting a whole epoch) only loses the reuse, and
the pipeline's bounded queues still bound how many are in flight. With a ``limit`` (the two
segment buffers: one being read while the other's batches are assembled) it waits for a buffer
to come back, checking ``stop`` so that a closing pipeline is not held up. At most ``keep`` free
buffers are kept.

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

import mmap
import threading
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")
HEADROOM = 1.1  # new feature buffers hold this much more than the largest batch so far: sizes vary a little


class BufferPool(Generic[T]):
    """Buffers made by ``make(size)`` (``size_of`` says how big one is), reused; see the module."""

    def __init__(self, make: Callable[[int], T], size_of: Callable[[T], int], *, keep: int = 4,
                 limit: int | None = None, headroom: float = 1.0, stop: threading.Event | None = None) -> None:
        if keep < 0 or (limit is not None and limit < 1):
            raise ValueError(f"keep must be >= 0 and limit >= 1, got keep={keep}, limit={limit}")
        self._make, self._size_of = make, size_of
        self.keep, self.limit, self.headroom = int(keep), limit, float(headroom)
        self._stop = stop
        self._free: list[T] = []
        self._cond = threading.Condition()
        self._out = 0  # buffers taken and not given back
        self._largest = 0
        self.allocated = 0  # buffers made (a figure for tests and stats)

    def take(self, size: int) -> tuple[T, Callable[[], None]]:
        with self._cond:
            buf = self._reuse(size)
            if buf is None:
                self._largest = max(self._largest, int(size))
                self.allocated += 1
            self._out += 1
        if buf is None:
            try:
                buf = self._make(max(1, int(self._largest * self.headroom)))
            except BaseException:
                self._given_back(None)
                raise
        return buf, self._give_back_once(buf)

    def _reuse(self, size: int) -> T | None:
        """A free buffer of at least ``size`` (a smaller free one is dropped), or None to make one;
        waits while ``limit`` buffers are out. Called holding the lock."""
        while True:
            while self._free:
                buf = self._free.pop()
                if self._size_of(buf) >= size:
                    return buf
            if self.limit is None or self._out < self.limit:
                return None
            self._cond.wait(timeout=0.1)
            if self._stop is not None and self._stop.is_set():
                raise InterruptedError("the pipeline is closing")

    def _give_back_once(self, buf: T) -> Callable[[], None]:
        given = threading.Event()

        def give_back() -> None:
            if not given.is_set():  # a batch released twice gives its buffer back once
                given.set()
                self._given_back(buf)

        return give_back

    def _given_back(self, buf: T | None) -> None:
        with self._cond:
            self._out -= 1
            if buf is not None and len(self._free) < self.keep:
                self._free.append(buf)
            self._cond.notify()

    def forget_taken(self) -> None:
        """Stop counting the buffers out against ``limit``: called when no pipeline runs, those a
        closed pipeline left with batches it never assembled are not coming back."""
        with self._cond:
            self._out = 0
            self._cond.notify_all()

    def clear(self) -> None:
        """Drop the free buffers (their memory returns to the allocator)."""
        with self._cond:
            self._free.clear()


class BatchBuffers(BufferPool[Any]):
    """``take(rows)`` -> (a [rows, dim] tensor, a function giving its memory back)."""

    def __init__(self, dim: int, dtype: Any, *, keep: int = 4, pin: bool = False) -> None:
        self.dim, self.dtype, self.pin = int(dim), dtype, bool(pin)
        super().__init__(self._tensor, lambda t: int(t.shape[0]), keep=keep, headroom=HEADROOM)

    def _tensor(self, rows: int) -> Any:
        import torch

        return torch.empty((rows, self.dim), dtype=self.dtype, pin_memory=self.pin)

    def take(self, rows: int) -> tuple[Any, Callable[[], None]]:
        buf, give_back = super().take(rows)
        return buf[:rows], give_back


def segment_buffers(count: int, stop: threading.Event | None = None) -> BufferPool[mmap.mmap]:
    """At most ``count`` page-aligned buffers for segment reads (O_DIRECT needs the alignment)."""
    def make(n: int) -> mmap.mmap:  # anonymous maps start on a page; whole pages long too
        return mmap.mmap(-1, max(1, -(-n // mmap.PAGESIZE)) * mmap.PAGESIZE)

    return BufferPool(make, len, keep=count, limit=count, stop=stop)
