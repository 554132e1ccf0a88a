"""Never train on unchecked bytes: the checks a command runs on what it reads, and when.

=====================  ===========================================================  ==================
when                   what                                                         cost
=====================  ===========================================================  ==================
every open             manifest, format version, each file's size; ``.npy`` shapes  microseconds
start of train,        CRC-32 of the topology, labels and splits, and their         one sequential read
sample, embed          structure: ``indptr`` from 0 to E, non-decreasing;           of those files
                       ``indices`` in [0, N); labels in [-1, C); split ids in
                       range, labelled (``check_dataset``)
the features           CRC-32 of the whole file before training on it: memory      free in memory and
                       mode while loading it, offline mode during each pack pass    offline mode; one
                       (the pass reads every byte anyway), online/mmap and embed    sequential read
                       by a pass at the start                                       otherwise
packed segments        the segment's CRC-32 as it is read                          CRC of the bytes
plans, packs           an epoch's CRCs (and its pack's positions) when a run opens  CRC of the bytes
                       it; ``gnn-ooc pack`` and ``sample`` check reused epochs
checkpoints            a CRC-32 beside each checkpoint, checked on load             CRC of the file
the loss               a non-finite loss stops the run, naming the batch and rows   free
=====================  ===========================================================  ==================

Example:
    >>> report = check_dataset(Dataset.open("demo/dataset"), features=False)   # doctest: +SKIP
    >>> report.bytes, report.seconds                                             # doctest: +SKIP
"""

from __future__ import annotations

import mmap
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gnn_ooc.errors import ChecksumError
from gnn_ooc.graphstore.format.base import DATA_ALIGNMENT, FileEntry
from gnn_ooc.graphstore.format.npyfile import format_checksum
from gnn_ooc.graphstore.io.directio import open_read

CHUNK = 8 << 20
REBUILD = "the file is damaged: rebuild the dataset with gnn-ooc preprocess --force"

OnData = Callable[[np.ndarray, int], None]


@dataclass
class CheckReport:
    """What a check read: files, bytes and seconds (reported in ``summary.json``)."""

    files: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def add(self, name: str, nbytes: int, seconds: float) -> None:
        self.files.append(name)
        self.bytes += nbytes
        self.seconds += seconds

    def as_dict(self) -> dict[str, Any]:
        rate = self.bytes / self.seconds / 1e9 if self.seconds else 0.0
        return {"files": list(self.files), "bytes": self.bytes, "seconds": round(self.seconds, 4),
                "gb_per_s": round(rate, 3)}


def file_crc(path: Path, *, direct: bool = False, on_data: OnData | None = None,
             data_offset: int = DATA_ALIGNMENT) -> tuple[int, int]:
    """(CRC-32, size) of a whole file, read sequentially in ``CHUNK`` pieces by a helper thread
    while this one checksums the last (both release the GIL). ``on_data(bytes, at)`` sees each
    piece's part past ``data_offset`` (a ``.npy``'s data), ``at`` bytes into the data."""
    fd, _ = open_read(path, direct=direct)
    bufs = [mmap.mmap(-1, CHUNK), mmap.mmap(-1, CHUNK)]  # page-aligned, as O_DIRECT needs
    crc = pos = 0
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(os.preadv, fd, [bufs[0]], 0)
            for i in range(1 << 62):
                got = pending.result()
                if got == CHUNK:
                    pending = pool.submit(os.preadv, fd, [bufs[(i + 1) % 2]], pos + got)
                piece = np.frombuffer(bufs[i % 2], np.uint8, count=got)
                crc = zlib.crc32(piece.data, crc)
                if on_data is not None and pos + got > data_offset:
                    skip = max(0, data_offset - pos)
                    on_data(piece[skip:], pos + skip - data_offset)
                pos += got
                if got < CHUNK:
                    break
    finally:
        os.close(fd)
    return crc, pos


def verify_entry(root: Path, entry: FileEntry, report: CheckReport | None = None, *, direct: bool = False,
                 on_data: OnData | None = None, recorded_in: str = "the manifest") -> None:
    """Raise ``ChecksumError`` naming the file unless its size and CRC-32 are the entry's."""
    path = root / entry.name
    t0 = time.perf_counter()
    found: list[ChecksumError] = []

    def structure(raw: np.ndarray, at: int) -> None:
        if on_data is not None and not found:
            try:
                on_data(raw, at)
            except ChecksumError as e:  # named after the checksum, which is the first thing to say
                found.append(e)

    try:
        crc, size = file_crc(path, direct=direct, on_data=structure)
    except FileNotFoundError:
        raise ChecksumError(path, "file is missing") from None
    if size != entry.size:
        raise ChecksumError(path, f"size {size} B differs from {recorded_in}'s {entry.size} B (truncated?)")
    if format_checksum(crc) != entry.checksum:
        raise ChecksumError(path, f"checksum {format_checksum(crc)} differs from {recorded_in}'s "
                                  f"{entry.checksum}; {REBUILD}")
    if found:
        raise found[0]
    if report is not None:
        report.add(entry.name, size, time.perf_counter() - t0)


# --- structure ---------------------------------------------------------------------------------
class _Monotone:
    """``indptr``: starts at 0, never decreases, ends at the edge count."""

    def __init__(self, path: Path, num_edges: int) -> None:
        self.path, self.num_edges, self.last = path, num_edges, None

    def __call__(self, raw: np.ndarray, at: int) -> None:
        values = raw.view(np.int64)
        if values.size == 0:
            return
        if self.last is None and values[0] != 0:
            raise ChecksumError(self.path, f"entry 0 is {int(values[0])}, expected 0; {REBUILD}")
        prev = values[0] if self.last is None else self.last
        drops = np.flatnonzero(np.diff(values, prepend=prev) < 0)
        if drops.size:
            i = at // 8 + int(drops[0])
            raise ChecksumError(self.path, f"entry {i} is {int(values[drops[0]])}, below entry {i - 1}; "
                                           f"expected non-decreasing offsets; {REBUILD}")
        self.last = values[-1]

    def finish(self) -> None:
        if self.last is not None and int(self.last) != self.num_edges:
            raise ChecksumError(self.path, f"last entry is {int(self.last)}, expected the edge count "
                                           f"{self.num_edges}; {REBUILD}")


class _InRange:
    """Every value of an integer ``.npy`` in ``[lo, hi)``."""

    def __init__(self, path: Path, dtype: np.dtype, lo: int, hi: int, what: str, expected: str) -> None:
        self.path, self.dtype, self.lo, self.hi = path, np.dtype(dtype), lo, hi
        self.what, self.expected = what, expected

    def __call__(self, raw: np.ndarray, at: int) -> None:
        values = raw.view(self.dtype)
        if values.size and (int(values.min()) < self.lo or int(values.max()) >= self.hi):
            i = int(np.argmax((values < self.lo) | (values >= self.hi)))
            raise ChecksumError(self.path, f"position {at // self.dtype.itemsize + i}: {self.what} "
                                           f"{int(values[i])}, expected {self.expected}; {REBUILD}")


# --- the dataset -------------------------------------------------------------------------------
def check_dataset(ds: Any, *, features: bool = True, report: CheckReport | None = None) -> CheckReport:
    """Check what training reads from ``ds``: every file's CRC-32 (the features' only when
    ``features``: callers that read them whole check them as they do) and the structure of the
    topology, labels and splits. Raises ``ChecksumError`` naming the file and the position."""
    report = report if report is not None else CheckReport()
    m, root, n = ds.manifest, ds.path, ds.num_nodes
    mono = _Monotone(root / m.files["indptr"].name, ds.num_edges)
    verify_entry(root, m.files["indptr"], report, on_data=mono)
    mono.finish()
    idx = m.files["indices"]
    verify_entry(root, idx, report, on_data=_InRange(root / idx.name, np.dtype(m.index_dtype), 0, n,
                                                     "neighbour id", f"an id below {n}, the node count"))
    if "labels" in m.files:
        classes = m.num_classes or 0
        lab = m.files["labels"]
        verify_entry(root, lab, report, on_data=_InRange(root / lab.name, np.dtype(np.int64), -1, classes,
                                                         "label", f"-1 (unknown) or a class below {classes}"))
    for key in sorted(k for k in m.files if k.startswith("split/")):
        split = m.files[key]
        verify_entry(root, split, report, on_data=_InRange(root / split.name, np.dtype(np.int64), 0, n,
                                                           "node id", f"an id below {n}"))
    for key in sorted(k for k in m.files if k not in ("indptr", "indices", "labels", "features")
                      and not k.startswith("split/")):
        verify_entry(root, m.files[key], report)  # the manifest's own entry, the id map
    if features and "features" in m.files:
        verify_entry(root, m.files["features"], report, direct=True)
    return report


def check_labelled(ds: Any, split: str, report: CheckReport | None = None) -> None:
    """Every node of ``split`` has a label (training on -1 would fail in the loss, and evaluation
    would count it wrong): raise ``ChecksumError`` naming the split file, the row and the node."""
    if ds.labels is None or f"split/{split}" not in ds.manifest.files:
        return
    ids = np.asarray(ds.split(split), dtype=np.int64)
    unlabelled = np.flatnonzero(np.asarray(ds.labels[ids]) < 0) if ids.size else np.empty(0, np.int64)
    if unlabelled.size:
        i = int(unlabelled[0])
        raise ChecksumError(ds.path / ds.manifest.files[f"split/{split}"].name,
                            f"row {i}: node {int(ids[i])} has no label (-1), and {unlabelled.size - 1} more; "
                            f"expected only labelled nodes in the {split} split (fix the split and preprocess again)")


def read_verified(path: Path, entry: FileEntry, offset: int, out: np.ndarray) -> None:
    """Read a ``.npy``'s data (from byte ``offset``) into ``out`` with sequential reads, checking the
    whole file's CRC-32 on the way (memory mode loads and checks its features in one pass)."""
    view = out.reshape(-1).view(np.uint8)
    with open(path, "rb", buffering=0) as f:
        header = f.read(offset)
        crc = zlib.crc32(header)
        done = 0
        while done < view.size:
            got = f.readinto(view[done : done + (64 << 20)].data)
            if not got:
                raise ChecksumError(path, f"ends at byte {offset + done}, expected {offset + view.size} bytes "
                                          f"of rows; {REBUILD}")
            crc = zlib.crc32(view[done : done + got].data, crc)
            done += got
        crc = zlib.crc32(f.read(), crc)  # anything after the rows is part of the file's checksum
    if len(header) + view.size > entry.size or format_checksum(crc) != entry.checksum:
        raise ChecksumError(path, f"checksum {format_checksum(crc)} differs from the manifest's {entry.checksum}; "
                                  f"{REBUILD}")
