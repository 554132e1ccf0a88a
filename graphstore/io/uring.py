"""A small io_uring reader over raw syscalls (ctypes), for batches of positioned reads.

The standard library has no io_uring binding and liburing is not a dependency, so the ring is
set up with ``io_uring_setup`` and driven with ``io_uring_enter`` through ``libc.syscall``; the
submission queue, its SQE array and the completion queue are ``mmap``'d from the ring's fd.
Nothing in the hot path is per request in Python: a wave of SQEs is written with one numpy
record assignment, completions are harvested as arrays, and one ``io_uring_enter`` both submits
the wave and waits for a share of the requests in flight (refilling keeps the queue deep).

Memory ordering: the ring is not set up with SQPOLL, so the kernel reads the SQ tail only inside
``io_uring_enter`` on this thread, after our stores in program order. CQEs are read after the CQ
tail; x86 orders loads with loads (TSO), elsewhere ``_acquire_fence`` puts a lock release /
acquire pair (release then acquire of a held lock is a full fence) between the two. The kernel
reads SQEs only inside ``io_uring_enter`` too, so after a failure the ones it has not consumed
are taken back by moving the tail down to its head.

Example (``x.bin`` holds ``bytes(range(256)) * 64``):
    >>> buf = np.zeros(8192, np.uint8)                             # doctest: +SKIP
    >>> fd = os.open("x.bin", os.O_RDONLY)                         # doctest: +SKIP
    >>> with UringReader(entries=8) as ring:                       # doctest: +SKIP
    ...     ring.read_into(fd, np.array([0, 300]), np.array([100, 100]), buf, np.array([0, 4096]))
    array([100, 100])
    >>> int(buf[4096])                                             # doctest: +SKIP
    44
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import threading
import time
from typing import Any

import numpy as np

SYS_IO_URING_SETUP = 425  # the same number on x86_64 and aarch64 (the unified table)
SYS_IO_URING_ENTER = 426
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_RW_CUR_POS = 1 << 3  # came with Linux 5.6, as did IORING_OP_READ
IORING_ENTER_GETEVENTS = 1 << 0
IORING_OP_READ = 22
MAX_LENGTH = (1 << 31) - 1  # a CQE's res is an int32

SQE_DTYPE = np.dtype({
    "names": ["opcode", "flags", "ioprio", "fd", "off", "addr", "len", "rw_flags", "user_data"],
    "formats": [np.uint8, np.uint8, np.uint16, np.int32, np.uint64, np.uint64, np.uint32, np.uint32, np.uint64],
    "offsets": [0, 1, 2, 4, 8, 16, 24, 28, 32],
    "itemsize": 64,
})
CQE_DTYPE = np.dtype({"names": ["user_data", "res", "flags"], "formats": [np.uint64, np.int32, np.uint32],
                      "offsets": [0, 8, 12], "itemsize": 16})

_U32 = ctypes.c_uint32


class SqringOffsets(ctypes.Structure):
    _fields_ = [("head", _U32), ("tail", _U32), ("ring_mask", _U32), ("ring_entries", _U32), ("flags", _U32),
                ("dropped", _U32), ("array", _U32), ("resv1", _U32), ("user_addr", ctypes.c_uint64)]


class CqringOffsets(ctypes.Structure):
    _fields_ = [("head", _U32), ("tail", _U32), ("ring_mask", _U32), ("ring_entries", _U32), ("overflow", _U32),
                ("cqes", _U32), ("flags", _U32), ("resv1", _U32), ("user_addr", ctypes.c_uint64)]


class UringParams(ctypes.Structure):
    """``struct io_uring_params`` (120 bytes)."""

    _fields_ = [("sq_entries", _U32), ("cq_entries", _U32), ("flags", _U32), ("sq_thread_cpu", _U32),
                ("sq_thread_idle", _U32), ("features", _U32), ("wq_fd", _U32), ("resv", _U32 * 3),
                ("sq_off", SqringOffsets), ("cq_off", CqringOffsets)]


assert ctypes.sizeof(UringParams) == 120 and SQE_DTYPE.itemsize == 64 and CQE_DTYPE.itemsize == 16

_VIEWS = ("_sq_head", "_sq_tail", "_sq_array", "_cq_head", "_cq_tail", "_cqes", "_sqes")
_libc: Any = None
_TSO = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _syscall() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


def uring_setup(entries: int, params: UringParams) -> int:
    """``io_uring_setup``: the ring's fd, or OSError (ENOSYS, EPERM where disabled, ...)."""
    fd = int(_syscall()(ctypes.c_long(SYS_IO_URING_SETUP), ctypes.c_uint(entries), ctypes.byref(params)))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"io_uring_setup: {os.strerror(e)}")
    return fd


def _enter(fd: int, to_submit: int, min_complete: int, flags: int) -> int:
    """One ``io_uring_enter``; returns the SQEs consumed or ``-errno`` (the GIL is released inside)."""
    r = int(_syscall()(ctypes.c_long(SYS_IO_URING_ENTER), ctypes.c_int(fd), ctypes.c_uint(to_submit),
                       ctypes.c_uint(min_complete), ctypes.c_uint(flags), ctypes.c_void_p(None), ctypes.c_size_t(0)))
    return r if r >= 0 else -ctypes.get_errno()


class _Requests:
    """The state of one ``read`` call: where each request stands, and which wait to be (re)submitted."""

    def __init__(self, offsets: np.ndarray, lengths: np.ndarray, addresses: np.ndarray) -> None:
        self.off = offsets.astype(np.uint64)
        self.addr = addresses.astype(np.uint64)
        self.left = lengths.astype(np.int64)
        self.got = np.zeros(lengths.shape[0], np.int64)
        self.queue = np.arange(lengths.shape[0], dtype=np.int64)
        self.pos = 0
        self.retry: list[np.ndarray] = []

    def take(self, k: int) -> np.ndarray:
        if self.pos == self.queue.size and self.retry:
            self.queue, self.pos, self.retry = np.concatenate(self.retry), 0, []
        out = self.queue[self.pos : self.pos + k]
        self.pos += out.size
        return out

    def pending(self) -> bool:
        return self.pos < self.queue.size or bool(self.retry)


class UringReader:
    """Batches of ``pread``s through one io_uring of ``entries`` slots (the most reads in flight).

    ``read`` takes arrays of file offsets, lengths and destination addresses and returns the bytes
    read per request; a short read is continued from where it stopped while that keeps O_DIRECT
    alignment (4 KiB), so a short count left over means the end of the file. An error CQE raises
    OSError with its errno (after the reads in flight have landed). Not thread-safe: one caller
    at a time (``DirectStore`` holds its lock).

    Example:
        >>> with UringReader(entries=64) as ring:                             # doctest: +SKIP
        ...     got = ring.read_into(fd, offsets, lengths, buf, buf_offsets)
    """

    def __init__(self, entries: int = 128) -> None:
        if not 1 <= entries <= 4096:
            raise ValueError(f"entries must be in 1..4096, not {entries}")
        params = UringParams()
        self._fd = uring_setup(entries, params)
        self._maps: list[mmap.mmap] = []
        try:
            self._map_rings(params)
        except BaseException:
            self.close()
            raise
        self.entries = int(params.sq_entries)
        self._fence = threading.Lock()
        self._fence.acquire()

    def _map_rings(self, p: UringParams) -> None:
        so, co = p.sq_off, p.cq_off
        sq_size = so.array + p.sq_entries * 4
        cq_size = co.cqes + p.cq_entries * CQE_DTYPE.itemsize
        if p.features & IORING_FEAT_SINGLE_MMAP:
            sq = cq = self._map(max(sq_size, cq_size), IORING_OFF_SQ_RING)
        else:
            sq, cq = self._map(sq_size, IORING_OFF_SQ_RING), self._map(cq_size, IORING_OFF_CQ_RING)
        sqes = self._map(p.sq_entries * SQE_DTYPE.itemsize, IORING_OFF_SQES)

        def u32(m: mmap.mmap, off: int, n: int = 1) -> np.ndarray:
            return np.frombuffer(m, np.uint32, n, off)

        self._sq_head, self._sq_tail, self._sq_array = u32(sq, so.head), u32(sq, so.tail), u32(sq, so.array, p.sq_entries)
        self._sq_mask = int(u32(sq, so.ring_mask)[0])
        self._cq_head, self._cq_tail = u32(cq, co.head), u32(cq, co.tail)
        self._cq_mask = int(u32(cq, co.ring_mask)[0])
        self._cqes = np.frombuffer(cq, CQE_DTYPE, p.cq_entries, co.cqes)
        self._sqes = np.frombuffer(sqes, SQE_DTYPE, p.sq_entries)

    def _map(self, size: int, offset: int) -> mmap.mmap:
        m = mmap.mmap(self._fd, size, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                      mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        self._maps.append(m)
        return m

    def _acquire_fence(self) -> None:
        if not _TSO:  # releasing then taking a held lock orders every earlier access before every later one
            self._fence.release()
            self._fence.acquire()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    # --- public ------------------------------------------------------------------------------------
    def read(self, fd: int, offsets: np.ndarray, lengths: np.ndarray, addresses: np.ndarray,
             name: str | os.PathLike[str] | None = None) -> np.ndarray:
        """Read ``lengths[i]`` bytes at ``offsets[i]`` of ``fd`` to address ``addresses[i]``; bytes read per request.

        The caller keeps the memory behind ``addresses`` alive and writable for the call
        (``read_into`` does that for a buffer). ``name`` goes into errors (the file's name).
        """
        if self._fd < 0:
            raise ValueError("the io_uring reader is closed")
        offsets, lengths, addresses = (np.asarray(a, np.int64).reshape(-1) for a in (offsets, lengths, addresses))
        if not offsets.shape == lengths.shape == addresses.shape:
            raise ValueError("offsets, lengths and addresses differ in length")
        if offsets.size and (offsets.min() < 0 or lengths.min() < 0 or lengths.max() > MAX_LENGTH):
            raise ValueError(f"offsets must be >= 0 and lengths in 0..{MAX_LENGTH}")
        req = _Requests(offsets, lengths, addresses)
        align = 4096 if _is_direct(fd) else 1
        self._run(fd, req, align, name)
        return req.got

    def read_into(self, fd: int, offsets: np.ndarray, lengths: np.ndarray, buf: Any, buf_offsets: np.ndarray,
                  name: str | os.PathLike[str] | None = None) -> np.ndarray:
        """``read`` into a writable buffer (mmap, numpy array, bytearray) at ``buf_offsets``, bounds checked."""
        if isinstance(buf, np.ndarray) and not buf.flags.c_contiguous:
            raise ValueError("the buffer is not contiguous")  # reshape would read into a copy
        view = np.frombuffer(buf, np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1).view(np.uint8)
        if not view.flags.writeable:
            raise ValueError("the buffer is read-only")
        at, n = np.asarray(buf_offsets, np.int64).reshape(-1), np.asarray(lengths, np.int64).reshape(-1)
        if at.size and (at.min() < 0 or (at + n).max() > view.size):
            raise ValueError("a request falls outside the buffer")
        return self.read(fd, offsets, lengths, view.ctypes.data + at, name)  # ``view`` holds ``buf`` meanwhile

    def close(self) -> None:
        """Unmap the rings and close the fd (idempotent); reads still in flight are cancelled by the kernel."""
        for view in _VIEWS:  # our numpy views export the maps: drop them before unmapping
            self.__dict__.pop(view, None)
        for m in getattr(self, "_maps", []):
            try:
                m.close()
            except BufferError:  # a view still held elsewhere: unmapped when it goes
                pass
        self._maps = []
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> UringReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # --- the loop ----------------------------------------------------------------------------------
    def _run(self, fd: int, req: _Requests, align: int, name: Any) -> None:
        inflight, error = 0, None
        try:
            while inflight or (req.pending() and error is None):
                fresh = self._fill(fd, req, self.entries - inflight) if error is None else 0
                inflight += fresh
                # wait for a quarter of the queue: fewer enters than waiting for one, and the
                # queue is refilled before it drains
                self._submit_wait(fresh, min(inflight, max(1, self.entries // 4)))
                done, err = self._harvest(req, align)
                inflight -= done
                error = error or err
        except BaseException:
            self._drain(inflight)  # the kernel must not write into the caller's buffer after we return
            raise
        if error is not None:
            code, i = error
            raise OSError(code, f"{os.strerror(code)} (read of {int(req.left[i])} B at byte {int(req.off[i])})",
                          None if name is None else os.fspath(name))

    def _fill(self, fd: int, req: _Requests, room: int) -> int:
        """Write up to ``room`` SQEs for queued requests and publish them (tail store last)."""
        ids = req.take(room)
        k = ids.size
        if not k:
            return 0
        tail = int(self._sq_tail[0])
        slots = (tail + np.arange(k, dtype=np.int64)) & self._sq_mask
        sqe = np.zeros(k, SQE_DTYPE)
        sqe["opcode"], sqe["fd"], sqe["user_data"] = IORING_OP_READ, fd, ids
        sqe["off"], sqe["addr"], sqe["len"] = req.off[ids], req.addr[ids], req.left[ids]
        self._sqes[slots] = sqe
        self._sq_array[slots] = slots
        self._sq_tail[0] = (tail + k) & 0xFFFFFFFF  # a separate store after the SQEs: no SQPOLL reads early
        return k

    def _submit_wait(self, to_submit: int, min_complete: int) -> None:
        """Submit ``to_submit`` SQEs and wait for ``min_complete`` completions, retrying EINTR/EAGAIN/EBUSY."""
        tries = 0
        while True:
            r = _enter(self._fd, to_submit, min_complete, IORING_ENTER_GETEVENTS)
            if r >= 0:
                to_submit -= r
                if to_submit <= 0:
                    return
                continue  # part of the wave was taken: the rest is still in the ring
            if -r == errno.EINTR:
                continue
            if -r in (errno.EAGAIN, errno.EBUSY) and tries < 1000:
                tries += 1  # the kernel is short of request memory or the CQ is full: let reads land
                time.sleep(0.0001 * min(tries, 10))
                continue
            raise OSError(-r, f"io_uring_enter: {os.strerror(-r)}")

    def _harvest(self, req: _Requests, align: int) -> tuple[int, tuple[int, int] | None]:
        """Consume every CQE: bytes counted, short reads queued again; (completions, first error)."""
        head = int(self._cq_head[0])
        tail = int(self._cq_tail[0])
        n = (tail - head) & 0xFFFFFFFF
        if not n:
            return 0, None
        self._acquire_fence()
        cqe = self._cqes[(head + np.arange(n, dtype=np.int64)) & self._cq_mask]
        ids, res = cqe["user_data"].astype(np.int64), cqe["res"].astype(np.int64)
        self._cq_head[0] = tail  # the slots are ours to give back once copied out
        bad = res < 0
        ok_ids, ok_res = ids[~bad], res[~bad]
        req.got[ok_ids] += ok_res
        req.left[ok_ids] -= ok_res
        more = (ok_res > 0) & (req.left[ok_ids] > 0) & (req.got[ok_ids] % align == 0)
        if more.any():  # continue short reads where they stopped; 0 bytes means the end of the file
            again = ok_ids[more]
            req.off[again] += ok_res[more].astype(np.uint64)
            req.addr[again] += ok_res[more].astype(np.uint64)
            req.retry.append(again)
        first = int(np.argmax(bad)) if bad.any() else -1
        return int(n), None if first < 0 else (int(-res[first]), int(ids[first]))

    def _drain(self, inflight: int) -> None:
        """After a failure: take back SQEs the kernel has not consumed, wait for the reads in flight.

        A ring that cannot be drained is closed (the kernel then cancels what is left).
        """
        try:
            unsent = (int(self._sq_tail[0]) - int(self._sq_head[0])) & 0xFFFFFFFF
            self._sq_tail[0] = self._sq_head[0]  # without SQPOLL the kernel reads SQEs only inside enter
            inflight -= unsent
            while inflight > 0:
                r = _enter(self._fd, 0, inflight, IORING_ENTER_GETEVENTS)
                if r < 0 and -r not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                    raise OSError(-r, os.strerror(-r))
                inflight -= self._harvest_count()
        except BaseException:
            self.close()
            raise

    def _harvest_count(self) -> int:
        head, tail = int(self._cq_head[0]), int(self._cq_tail[0])
        self._cq_head[0] = tail
        return (tail - head) & 0xFFFFFFFF


def _is_direct(fd: int) -> bool:
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))
