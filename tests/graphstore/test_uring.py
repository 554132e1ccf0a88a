"""The io_uring reader: reads equal os.pread (buffered and O_DIRECT), short reads, errors, closing."""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from gnn_ooc.capabilities import io_uring_available, o_direct_flag
from gnn_ooc.graphstore.io.directio import open_read
from gnn_ooc.graphstore.io.uring import UringReader

pytestmark = pytest.mark.skipif(not io_uring_available(), reason="io_uring is unavailable here "
                                "(not Linux 5.6+, disabled by sysctl, or filtered by seccomp)")

SIZE = (1 << 20) + 1000  # not a whole number of pages: the last one is short


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("uring") / "data.bin"
    path.write_bytes(data)
    return data, path


@pytest.fixture
def ring() -> Iterator[UringReader]:
    with UringReader(entries=8) as r:
        yield r


def aligned(nbytes: int) -> np.ndarray:
    return np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)  # anonymous maps are page-aligned (O_DIRECT)


def check_against_pread(ring: UringReader, fd: int, offsets: np.ndarray, lengths: np.ndarray,
                        ref_fd: int | None = None) -> None:
    """The ring's reads of ``fd`` equal ``os.pread`` of ``ref_fd`` (a buffered twin of an O_DIRECT fd)."""
    at = np.zeros(lengths.size, np.int64)
    np.cumsum(lengths[:-1], out=at[1:])
    buf = aligned(int(lengths.sum()) or 1)
    got = ring.read_into(fd, offsets, lengths, buf, at)
    for o, n, a, g in zip(offsets.tolist(), lengths.tolist(), at.tolist(), got.tolist()):
        want = os.pread(fd if ref_fd is None else ref_fd, n, o)
        assert g == len(want) and buf[a : a + g].tobytes() == want


def test_buffered_reads_equal_pread(ring: UringReader, data_file: tuple[bytes, Path]) -> None:
    _, path = data_file
    rng = np.random.default_rng(1)
    offsets = rng.integers(0, SIZE + 100, 500)  # 500 requests through 8 slots; some past the end
    lengths = rng.integers(0, 9000, 500)
    fd = os.open(path, os.O_RDONLY)
    try:
        check_against_pread(ring, fd, offsets, lengths)
    finally:
        os.close(fd)


@pytest.mark.skipif(not o_direct_flag(), reason="no O_DIRECT on this platform")
def test_direct_reads_equal_pread(ring: UringReader, data_file: tuple[bytes, Path]) -> None:
    _, path = data_file
    rng = np.random.default_rng(2)
    pages = -(-SIZE // 4096)
    offsets = rng.integers(0, pages, 300) * 4096
    lengths = rng.integers(1, 4, 300) * 4096
    try:
        fd = os.open(path, os.O_RDONLY | o_direct_flag())
    except OSError:
        pytest.skip("the filesystem refuses O_DIRECT (tmpfs)")
    ref = os.open(path, os.O_RDONLY)  # os.pread's buffer is not aligned: O_DIRECT would refuse it
    try:
        check_against_pread(ring, fd, offsets, lengths, ref)
    finally:
        os.close(fd)
        os.close(ref)


def test_short_read_at_the_end_is_reported(ring: UringReader, data_file: tuple[bytes, Path]) -> None:
    data, path = data_file
    fd, _ = open_read(path)  # O_DIRECT where the filesystem allows
    try:
        buf = aligned(3 * 8192)
        last = SIZE // 4096 * 4096
        got = ring.read_into(fd, np.array([last - 4096, last, last + 4096]), np.full(3, 8192),
                             buf, np.array([0, 8192, 16384]))
    finally:
        os.close(fd)
    assert got.tolist() == [4096 + SIZE - last, SIZE - last, 0]
    assert buf[8192 : 8192 + SIZE - last].tobytes() == data[last:]


def test_errors_raise_oserror_and_leave_the_ring_usable(ring: UringReader, data_file: tuple[bytes, Path],
                                                        tmp_path: Path) -> None:
    _, path = data_file
    buf = aligned(4096 * 40)
    with pytest.raises(OSError):
        ring.read_into(987654, np.zeros(1), np.ones(1), buf, np.zeros(1))
    wfd = os.open(tmp_path / "w.bin", os.O_WRONLY | os.O_CREAT)  # a descriptor that cannot read: EBADF per read
    try:
        with pytest.raises(OSError, match="w.bin") as e:
            ring.read_into(wfd, np.arange(40) * 10, np.full(40, 10), buf, np.arange(40) * 4096,
                           name=tmp_path / "w.bin")
        assert e.value.errno == 9
    finally:
        os.close(wfd)
    fd = os.open(path, os.O_RDONLY)
    try:
        check_against_pread(ring, fd, np.arange(50) * 777, np.full(50, 333))  # nothing stale left in the ring
    finally:
        os.close(fd)


def test_bad_arguments(ring: UringReader) -> None:
    buf = aligned(4096)
    with pytest.raises(ValueError, match="outside the buffer"):
        ring.read_into(0, np.zeros(1), np.full(1, 4097), buf, np.zeros(1))
    with pytest.raises(ValueError, match=">= 0"):
        ring.read(0, np.array([-1]), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="read-only"):
        ring.read_into(0, np.zeros(1), np.ones(1), bytes(10), np.zeros(1))
    with pytest.raises(ValueError, match="contiguous"):
        ring.read_into(0, np.zeros(1), np.ones(1), np.zeros((4, 4), np.uint8)[:, 1], np.zeros(1))
    assert ring.read(0, [], [], []).size == 0


def test_close_is_idempotent() -> None:
    r = UringReader(entries=4)
    assert r.entries == 4 and not r.closed
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.read(0, np.zeros(1), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="entries"):
        UringReader(entries=0)


def test_failures_mid_read_leave_nothing_behind(ring: UringReader, data_file: tuple[bytes, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from gnn_ooc.graphstore.io import uring

    _, path = data_file
    fd = os.open(path, os.O_RDONLY)
    buf = aligned(100 * 4096)
    offsets, lengths, at = np.arange(100) * 5000, np.full(100, 4096), np.arange(100) * 4096
    try:
        with monkeypatch.context() as m:  # the kernel refuses the first wave: its SQEs are taken back
            m.setattr(uring, "_enter", lambda *a: -errno.EIO)
            with pytest.raises(OSError, match="io_uring_enter"):
                ring.read_into(fd, offsets, lengths, buf, at)
        calls = {"n": 0}
        harvest = ring._harvest

        def interrupted(*a: object) -> object:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return harvest(*a)

        with monkeypatch.context() as m:  # interrupted with reads in flight: they land before it returns
            m.setattr(ring, "_harvest", interrupted)
            with pytest.raises(KeyboardInterrupt):
                ring.read_into(fd, offsets, lengths, buf, at)
        check_against_pread(ring, fd, offsets, lengths)  # nothing stale submitted or harvested later
    finally:
        os.close(fd)
