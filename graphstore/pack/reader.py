"""Reading a packed epoch: ``PackedEpoch`` checks ``pack.json`` and every segment's size when
opened, and reads a segment into a caller's buffer with large sequential O_DIRECT requests,
checking its CRC-32 as the pieces land.

Example:
    >>> packed = PackedEpoch(plan, 0)                                     # doctest: +SKIP
    >>> rows = packed.read_segment(0, buffer=mmap.mmap(-1, packed.buffer_bytes()))  # doctest: +SKIP
"""


from __future__ import annotations

import mmap
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gnn_ooc.errors import ChecksumError, DatasetError
from gnn_ooc.graphstore.format.base import FileEntry
from gnn_ooc.graphstore.format.dataset import check_file_size
from gnn_ooc.graphstore.format.integrity import verify_entry
from gnn_ooc.graphstore.format.npyfile import (
    crc32_combine,
    file_checksum,
    format_checksum,
)
from gnn_ooc.graphstore.io.directio import PAGE, open_read, page_round_up
from gnn_ooc.graphstore.pack.format import epoch_dir, read_meta


class PackedEpoch:
    """A packed epoch: ``read_segment`` returns a segment's rows from one sequential read.

    ``positions(b)`` says where each node of batch ``b`` is: its row in the batch's segment,
    ``CACHED`` (-1) or ``UNPACKED`` (-2).
    """

    def __init__(self, plan: Any, epoch: int, name: str = "default") -> None:
        self.path = epoch_dir(plan.path, name, epoch)
        self.meta = read_meta(self.path)
        if self.meta["dataset"] != plan.meta["dataset"]["identity"]:
            raise DatasetError(f"{self.path}: packed for another dataset")
        self.epoch_plan = plan.epoch(epoch)
        if self.meta.get("nodes") != self.epoch_plan.meta["files"]["nodes"]["checksum"]:
            raise DatasetError(f"{self.path}: packed for another plan of epoch {epoch} (re-run gnn-ooc pack)")
        for seg in self.meta["segments"]:
            if seg["packed"]:
                self._check_size(seg)
        # read per batch through a memory map: checked whole here (4 bytes per batch node)
        for key in ("positions", "fills", "fill_index"):
            verify_entry(self.path, FileEntry(**{k: self.meta[key][k] for k in ("name", "size", "checksum")}),
                         recorded_in="pack.json")
        self._positions = np.load(self.path / "positions.npy", mmap_mode="r")
        self._fills = np.load(self.path / "fills.npy", mmap_mode="r")
        self._fill_index = np.load(self.path / "fill_index.npy")
        # opened now: a pack replaced while this epoch trains cannot mix new segments with old positions
        self._fds = {k: open_read(self.path / seg["name"])[0] for k, seg in enumerate(self.meta["segments"])
                     if seg["packed"]}
        self.segment_batches = int(self.meta["segment_batches"])
        self.row_bytes, self.dim = int(self.meta["row_bytes"]), int(self.meta["dim"])
        self.dtype = np.dtype(self.meta["dtype"])
        self.bytes_read = 0

    def _check_size(self, entry: dict[str, Any]) -> None:
        check_file_size(self.path / entry["name"], entry["size"], "pack.json")

    @property
    def segments(self) -> list[dict[str, Any]]:
        return list(self.meta["segments"])

    def segment_of(self, batch: int) -> int:
        return batch // self.segment_batches

    def positions(self, batch: int) -> np.ndarray:
        index = self.epoch_plan.index
        return np.asarray(self._positions[index[batch, 0] : index[batch + 1, 0]], dtype=np.int64)

    def fill_rows(self, batch: int) -> np.ndarray:
        """The segment rows of the rows a cache loads at batch ``batch``'s step, in the cache's order
        (``UNPACKED`` where the segment is not packed); empty for static caches."""
        lo, hi = int(self._fill_index[batch]), int(self._fill_index[batch + 1])
        return np.asarray(self._fills[lo:hi], dtype=np.int64)

    def cache_start(self) -> dict[str, np.ndarray]:
        """The ids the caches started this epoch with (``Serving.start_state``), checked; {} for static."""
        out = {}
        for key, entry in self.meta.get("cache_start", {}).items():
            verify_entry(self.path, FileEntry(**{k: entry[k] for k in ("name", "size", "checksum")}),
                         recorded_in="pack.json")
            out[key] = np.load(self.path / entry["name"])
        return out

    @property
    def cache(self) -> dict[str, Any]:
        """The cache policy this epoch was packed for (``Serving.identity()``)."""
        return dict(self.meta["cache"])

    def read_segment(self, k: int, *, verify: bool = True, buffer: mmap.mmap | None = None) -> np.ndarray:
        """Segment ``k``'s rows ([rows, D], the dataset's dtype) from one sequential (O_DIRECT) read.

        The array lives in ``buffer`` (page-aligned, at least ``buffer_bytes(k)``: the trainer's come
        from its buffer pool) or else in a new one. ``verify`` (the default) checks the
        CRC-32, piece by piece as the pieces land, and raises ``ChecksumError`` naming the file.
        """
        seg = self.meta["segments"][k]
        if not seg["packed"]:
            raise DatasetError(f"{self.path}: segment {k} is not packed (over the pack budget)")
        path = self.path / seg["name"]
        data_len = seg["rows"] * self.row_bytes
        if buffer is not None and len(buffer) < self.buffer_bytes(k):
            raise ValueError(f"{path}: a {len(buffer)} B buffer cannot hold the segment ({self.buffer_bytes(k)} B)")
        buf = buffer if buffer is not None else mmap.mmap(-1, max(self.buffer_bytes(k), PAGE))
        got, crc = _read_fd(self._fds[k], buf, PAGE + data_len, checksum=verify)
        self.bytes_read += got
        if got < PAGE + data_len:
            raise ChecksumError(path, f"read {got} B, expected {PAGE + data_len} B (truncated?)")
        raw = np.frombuffer(buf, np.uint8, count=PAGE + data_len)
        if verify and format_checksum(crc) != seg["checksum"]:
            raise ChecksumError(path, f"checksum {format_checksum(crc)} differs from pack.json's {seg['checksum']}: "
                                      "the packed segment is damaged (remove the pack with gnn-ooc clean and pack again)")
        return raw[PAGE:].view(self.dtype).reshape(seg["rows"], self.dim)

    def buffer_bytes(self, k: int | None = None) -> int:
        """Bytes a ``read_segment`` buffer needs for segment ``k`` (default: the largest segment)."""
        segs = self.meta["segments"] if k is None else [self.meta["segments"][k]]
        return page_round_up(PAGE + max([s["rows"] for s in segs if s["packed"]], default=0) * self.row_bytes)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self.close()

    def verify(self) -> None:
        """Check every file's size and CRC-32; raises ``ChecksumError`` naming the first bad one."""
        for entry in [self.meta["positions"], self.meta["fills"], self.meta["fill_index"],
                      *[s for s in self.meta["segments"] if s["packed"]]]:
            self._check_size(entry)
            path = self.path / entry["name"]
            if file_checksum(path) != entry["checksum"]:
                raise ChecksumError(path, f"checksum differs from {self.path / 'pack.json'}")


def _read_fd(fd: int, buf: mmap.mmap, nbytes: int, piece: int = 8 << 20, in_flight: int = 4,
             *, checksum: bool = False) -> tuple[int, int]:
    """Read ``nbytes`` from the start of ``fd`` into ``buf``: ``piece``-sized requests, ``in_flight``
    at a time (a queue of large requests keeps the device busy between them). Returns the bytes
    read and, with ``checksum``, their CRC-32: each piece's is computed by the thread that read it
    (zlib releases the GIL), then combined in order."""
    want = page_round_up(nbytes)
    view = memoryview(buf)

    def one(a: int) -> tuple[int, int]:
        n = os.preadv(fd, [view[a : min(want, a + piece)]], a)
        return n, zlib.crc32(view[a : a + min(n, max(0, nbytes - a))]) if checksum else 0

    try:
        starts = list(range(0, want, piece))
        with ThreadPoolExecutor(max(1, min(in_flight, len(starts)))) as pool:
            got = list(pool.map(one, starts))
    finally:
        view.release()
    done = crc = 0
    for a, (n, part) in zip(starts, got):  # bytes up to the first short piece
        done = a + n
        crc = crc32_combine(crc, part, min(n, max(0, nbytes - a)))
        if a + n < min(want, a + piece):
            break
    return min(done, nbytes), crc


