"""DiskGNN packing: each segment's cache misses stored contiguously, read back with one sequential read.

For every segment of ``segment_batches`` consecutive batches of a planned epoch, the rows its
batches need that neither cache holds are written to one file, each row once, in the order the
batches need them: the rows batch 0 of the segment uses first, then the rows batch 1 uses first,
and so on (a run per batch; ids ascending within a run). Training reads a segment with large
sequential O_DIRECT reads instead of one random 4 KiB read per row, and batch ``j`` needs only
the prefix up to its run's end (``runs`` in ``pack.json``), so a reader may start it early.

Packing streams: one sequential pass over the feature file per group of segments. Rows go by
in id order, and a run's rows are in id order too, so every run is an append stream at a known
offset of its segment file; each chunk of the feature file is staged into the runs it feeds and
whole pages go to disk with O_DIRECT writes (``runstreams``; never one random read per row, no
page-cache copy of what is written). Packing thus costs one read
of the feature file per group plus one write of the packed bytes (a group is as many segments
as a quarter of ``memory_budget`` can plan, within ``max_open_segments`` files). ``pack_budget`` caps
the packed bytes on disk; segments past it are left unpacked (their rows come from the tiered
store).

Layout, beside the plan's epochs::

    PLAN/packs/NAME/epoch-000003/pack.json        segments (batches, rows, run ends per batch, file,
                                                  size, CRC-32), the cache placement's digest, the
                                                  dataset identity
    PLAN/packs/NAME/epoch-000003/positions.npy    int32, aligned with the epoch's nodes.npy: the row
                                                  of each batch node in its segment; -1 = cached,
                                                  -2 = in an unpacked segment
    PLAN/packs/NAME/epoch-000003/segment-000000.npy   [rows, D] features (the dataset's dtype)

Example:
    >>> packed = pack_epoch(plan, 0, cached_ids=np.array([...]), spec=PackSpec())   # doctest: +SKIP
    >>> rows = packed.read_segment(0)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from gnn_ooc.graphstore.atomic import Staging
from gnn_ooc.graphstore.base import (
    DATA_ALIGNMENT,
    ChecksumError,
    DatasetError,
    FileEntry,
    MemoryBudgetError,
)
from gnn_ooc.graphstore.dataset import check_file_size
from gnn_ooc.graphstore.directio import PAGE, open_read
from gnn_ooc.graphstore.integrity import REBUILD, verify_entry
from gnn_ooc.graphstore.npyfile import (
    NpyWriter,
    crc32_combine,
    file_checksum,
    format_checksum,
    npy_header,
    write_bytes_entry,
)
from gnn_ooc.graphstore.owned import check_name
from gnn_ooc.graphstore.rowops import move_rows
from gnn_ooc.graphstore.runstreams import SPARE, RunStreams, slot_bytes
from gnn_ooc.progress import NoBar, bar
from gnn_ooc.units import format_size

PACK_FORMAT = "gnn-ooc-pack"
PACK_VERSION = 2  # 2: rows in order of first use (1: id order)
CACHED, UNPACKED = -1, -2
STAGE_LIMIT = 64 << 20  # staging of a pass's writes at most (larger slots buy no speed)


@dataclass(frozen=True)
class PackSpec:
    """How to pack; the defaults here are the only defaults.

    Example:
        >>> PackSpec(segment_batches=32).segment_batches
        32
    """

    name: str = "default"
    segment_batches: int = 64
    memory_budget: int = 1 << 30
    pack_budget: int | None = None
    read_chunk: int = 8 << 20
    max_open_segments: int = 256

    def __post_init__(self) -> None:
        check_name(self.name, "pack")
        if self.segment_batches < 1:
            raise ValueError(f"segment_batches {self.segment_batches}: expected >= 1 batches per segment")
        if self.pack_budget is not None and self.pack_budget < 0:
            raise ValueError(f"pack_budget {self.pack_budget}: expected >= 0 bytes")

    def identity(self) -> dict[str, Any]:
        """The settings an existing pack must match to be kept."""
        return {"segment_batches": self.segment_batches, "pack_budget": self.pack_budget, "version": PACK_VERSION}


@dataclass(frozen=True)
class PackStats:
    """What packing one epoch did (bytes and seconds)."""

    epoch: int
    segments: int
    packed_segments: int
    rows: int
    bytes_written: int
    bytes_read: int
    passes: int
    seconds: float


def cache_digest(cached_ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.sort(cached_ids), dtype=np.int64).tobytes()).hexdigest()[:32]


# --- planning the segments -------------------------------------------------------------------------
@dataclass
class _Segment:
    first_batch: int
    batches: int
    ids: np.ndarray        # the global ids the segment stores, sorted (the order they stream by)
    run_of: np.ndarray     # per id: the batch (within the segment) that uses it first
    runs: np.ndarray       # [batches + 1] row offsets of each batch's run in the file
    positions: np.ndarray  # per node of the segment's batches: its row in the segment, or CACHED
    packed: bool = True

    @property
    def planning_bytes(self) -> int:
        # held for the pass; positions and np.unique's temporaries only while planning
        return int(self.ids.nbytes + self.run_of.nbytes + self.runs.nbytes)


def _segment(nodes: np.ndarray, batch_starts: np.ndarray, cached_sorted: np.ndarray, first_batch: int) -> _Segment:
    """Plan one segment: ``batch_starts`` are its batches' offsets into ``nodes`` (from 0)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    miss = np.flatnonzero(~_isin_sorted(nodes, cached_sorted))
    ids, first, inverse = np.unique(nodes[miss], return_index=True, return_inverse=True)  # once per segment
    batches = batch_starts.size - 1
    run_dtype = np.uint16 if batches <= 1 << 16 else np.int32
    run_of = (np.searchsorted(batch_starts, miss[first], side="right") - 1).astype(run_dtype)
    runs = np.zeros(batches + 1, np.int64)
    np.cumsum(np.bincount(run_of, minlength=batches), out=runs[1:])
    row = np.empty(ids.size, np.int64)  # ids sorted by (first batch, id): the file's order
    row[np.argsort(run_of, kind="stable")] = np.arange(ids.size)
    positions = np.full(nodes.size, CACHED, np.int32)  # int32: half the planning memory per node
    positions[miss] = row[inverse]
    return _Segment(first_batch, batches, ids, run_of, runs, positions)


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(values.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[pos] == values


def plan_segments(epoch_plan: Any, cached_ids: np.ndarray, segment_batches: int) -> Iterator[_Segment]:
    """The segments of an epoch, one at a time: which rows each stores and where each batch node is."""
    cached_sorted = np.unique(np.asarray(cached_ids, dtype=np.int64))
    index, nodes = epoch_plan.index, epoch_plan._nodes
    for b0 in range(0, len(epoch_plan), segment_batches):
        b1 = min(len(epoch_plan), b0 + segment_batches)
        starts = np.asarray(index[b0 : b1 + 1, 0], dtype=np.int64)
        yield _segment(nodes[starts[0] : starts[-1]], starts - starts[0], cached_sorted, b0)


# --- the scatter pass ------------------------------------------------------------------------------
class _FeatureFile:
    """Sequential aligned reads of a feature ``.npy`` (O_DIRECT where the filesystem allows)."""

    def __init__(self, path: Path, checksum: str | None = None) -> None:
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2 or not arr.flags.c_contiguous or not isinstance(arr, np.memmap) or arr.offset % PAGE:
            raise DatasetError(f"{path}: not an aligned row-major 2-D feature .npy")
        self.path, self.rows, self.dtype = path, arr.shape[0], arr.dtype
        self.row_bytes = int(arr.dtype.itemsize * arr.shape[1])
        self.dim, self.offset = int(arr.shape[1]), int(arr.offset)
        del arr
        self.fd, _direct = open_read(path)
        self.bytes_read = 0
        # every pass reads every row: it checks the file's CRC-32 on the way, at no extra read
        self.checksum = checksum
        self._head_crc = zlib.crc32(_pread_exact(path, self.fd, self.offset)) if checksum else 0
        self.size = os.fstat(self.fd).st_size

    def chunks(self, chunk_bytes: int) -> Any:
        """Yield (first row, rows, bytes of those rows) covering the file in order.

        The next chunk is read by a helper thread while the caller scatters this one (two
        buffers): reading the file is a third of a pack's time, and the CPU work hides it.
        """
        rows_per = max(1, chunk_bytes // self.row_bytes)
        # page-aligned (anonymous maps) for O_DIRECT; freed with their last views, not closed, since
        # the caller may still hold the last chunk
        size = _round_up(rows_per * self.row_bytes + 2 * PAGE)
        bufs = [mmap.mmap(-1, size), mmap.mmap(-1, size)]
        starts = list(range(0, self.rows, rows_per))
        self._crc = self._head_crc
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._read_chunk, bufs[0], starts[0], rows_per) if starts else None
            for i in range(len(starts)):
                assert pending is not None
                chunk = pending.result()
                if i + 1 < len(starts):  # the other buffer: the caller is done with it
                    pending = pool.submit(self._read_chunk, bufs[(i + 1) % 2], starts[i + 1], rows_per)
                yield chunk
        self._check_pass()

    def _check_pass(self) -> None:
        if self.checksum is None:
            return
        crc = self._crc
        tail = self.size - self.offset - self.rows * self.row_bytes
        if tail > 0:  # bytes after the rows are part of the file's checksum too
            crc = zlib.crc32(_pread_exact(self.path, self.fd, tail, self.offset + self.rows * self.row_bytes), crc)
        if format_checksum(crc) != self.checksum:
            raise ChecksumError(self.path, f"checksum {format_checksum(crc)} differs from the manifest's "
                                           f"{self.checksum} (read while packing); {REBUILD}")

    def _read_chunk(self, buf: mmap.mmap, r0: int, rows_per: int) -> tuple[int, int, np.ndarray]:
        r1 = min(self.rows, r0 + rows_per)
        start = self.offset + r0 * self.row_bytes
        lo = start // PAGE * PAGE
        n = _round_up(self.offset + r1 * self.row_bytes - lo)
        got = os.preadv(self.fd, [memoryview(buf)[:n]], lo)
        if got < start - lo + (r1 - r0) * self.row_bytes:
            raise ChecksumError(self.path, f"read {got} B at byte {lo}, the rows need "
                                           f"{start - lo + (r1 - r0) * self.row_bytes} B (truncated?)")
        self.bytes_read += got
        view = np.frombuffer(buf, np.uint8)
        rows = view[start - lo : start - lo + (r1 - r0) * self.row_bytes]
        if self.checksum is not None:  # chunks are read one at a time, in order
            self._crc = zlib.crc32(rows.data, self._crc)
        return r0, r1, rows

    def close(self) -> None:
        os.close(self.fd)


def _round_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def _pread_exact(path: Path, fd: int, nbytes: int, at: int = 0) -> bytes:
    """``nbytes`` at byte ``at`` of a file that may be open with O_DIRECT (read through a plain
    descriptor: small unaligned reads)."""
    with open(path, "rb", buffering=0) as f:
        f.seek(at)
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ChecksumError(path, f"ends before byte {at + nbytes} (truncated?); {REBUILD}")
    return data


def _pass_bar(title: str | None, passes: int, feat: _FeatureFile) -> Any:
    return bar(feat.rows * feat.row_bytes, f"{title} (pass {passes + 1})", enabled=title is not None,
               unit="B", scale=True)


def _stream_group(feat: _FeatureFile, group: list[tuple[int, _Segment]], out: Path, chunk: int,
                  stage_budget: int, shown: Any = None) -> dict[int, FileEntry]:
    """One sequential pass over the feature file appending each packed segment's rows to its runs."""
    rb = feat.row_bytes
    shapes = [(int(seg.ids.size), feat.dim) for _, seg in group]
    headers = [npy_header(feat.dtype, shape) for shape in shapes]
    sizes = [DATA_ALIGNMENT + shape[0] * rb for shape in shapes]
    paths = [out / f"segment-{k:06d}.npy" for k, _ in group]
    segs = [seg for _, seg in group]
    bases = np.cumsum([0] + [seg.batches for seg in segs])[:-1]
    streams = RunStreams(paths, headers, sizes, row_bytes=rb, stage_budget=stage_budget,
                         run_file=np.repeat(np.arange(len(segs)), [seg.batches for seg in segs]),
                         run_start=np.concatenate([DATA_ALIGNMENT + seg.runs[:-1] * rb for seg in segs]),
                         run_end=np.concatenate([DATA_ALIGNMENT + seg.runs[1:] * rb for seg in segs]))
    shown = shown if shown is not None else NoBar()
    try:
        for r0, r1, raw in feat.chunks(chunk):
            local, runs = _chunk_rows(segs, bases, r0, r1)
            if local.size:
                streams.stage(raw.reshape(r1 - r0, rb), local, runs)
            shown.update((r1 - r0) * rb)
        crcs = streams.close()
    except BaseException:
        streams.abort()
        raise
    finally:
        shown.close()
    return {k: FileEntry(str(path.relative_to(out)), size,
                         format_checksum(crc32_combine(zlib.crc32(header), crc, size - len(header))),
                         str(feat.dtype), shape)
            for (k, _), path, header, size, shape, crc in zip(group, paths, headers, sizes, shapes, crcs)}


def _chunk_rows(segs: list[_Segment], bases: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``r0..r1`` of the feature file the segments store (as offsets from ``r0``), each with
    its run numbered across the segments. Segment by segment: a run's rows stay in id order, the
    order its file holds them, and no group-wide merged copy is held."""
    local, runs = [], []
    for seg, base in zip(segs, bases):
        a, b = np.searchsorted(seg.ids, (r0, r1))
        if a < b:
            local.append(seg.ids[a:b] - r0)
            runs.append(seg.run_of[a:b].astype(np.int32) + np.int32(base))
    if not local:
        return np.empty(0, np.int64), np.empty(0, np.int32)
    return np.concatenate(local), np.concatenate(runs)


def _group_full(group: list[tuple[int, _Segment]], row_bytes: int, limit: int, stage: int, files: int) -> bool:
    """Whether a pass over ``group`` is as large as it may get: its planning data at ``limit``
    bytes, its runs' smallest staging slots at ``stage`` bytes, or ``files`` files open."""
    runs = sum(seg.batches for _, seg in group)
    return (sum(seg.planning_bytes for _, seg in group) > limit or len(group) >= files
            or (runs + SPARE) * slot_bytes(runs, row_bytes, 0) > stage)


def fit_segment_batches(epoch_plan: Any, row_bytes: int, limit: int, most: int = 64) -> int:
    """The most consecutive batches (at most ``most``) whose rows fit one segment buffer of ``limit`` bytes.

    Rows are counted with repeats and cached rows included, so any window of that many batches
    of this epoch fits, whatever the cache and the deduplication leave (an upper bound: other
    epochs sample alike, and the reader grows its buffers to the largest segment anyway).

    Example:
        >>> class Plan: index = np.array([[0], [10], [30], [40]])
        >>> fit_segment_batches(Plan(), row_bytes=8, limit=240)
        2
    """
    rows = np.diff(np.asarray(epoch_plan.index[:, 0], dtype=np.int64))
    ends = np.concatenate([[0], np.cumsum(rows * row_bytes)])
    for count in range(min(most, rows.size), 0, -1):
        if int(np.max(ends[count:] - ends[:-count])) <= limit:
            return count
    need = int(rows.max()) * row_bytes
    raise MemoryBudgetError(
        f"{getattr(epoch_plan, 'path', 'the plan')}: a batch holds up to {format_size(need)} of feature rows, more "
        f"than one segment buffer may take ({format_size(limit)}): raise the memory budget or lower the batch size")


# --- packing an epoch ------------------------------------------------------------------------------
def pack_epoch(plan: Any, epoch: int, cached_ids: np.ndarray, features_path: str | os.PathLike[str],
               spec: PackSpec = PackSpec(), *, progress: Any = None, features_checksum: str | None = None,
               bars: bool = False) -> PackStats:
    """Pack epoch ``epoch`` of ``plan`` (atomically; an existing pack for the same caches is kept).

    With ``features_checksum`` (the manifest's), every pass over the feature file checks its
    CRC-32 and a mismatch raises ``ChecksumError``: nothing is packed from damaged rows.
    """
    t0 = time.perf_counter()
    root = plan.path / "packs" / spec.name
    target = root / f"epoch-{epoch:06d}"
    digest = cache_digest(np.asarray(cached_ids, dtype=np.int64))
    ep_plan = plan.epoch(epoch)
    nodes_crc = ep_plan.meta["files"]["nodes"]["checksum"]
    if _pack_matches(target, digest, nodes_crc, spec):
        return PackStats(epoch, 0, 0, 0, 0, 0, 0, 0.0)
    segments = plan_segments(ep_plan, cached_ids, spec.segment_batches)
    feat = _FeatureFile(Path(features_path), features_checksum)
    try:
        with Staging(target, what="gnn-ooc pack") as stage:  # replaces an older pack of the epoch
            stats = _write_pack(stage.path, plan, epoch, segments, feat, spec, digest, nodes_crc,
                                bar_title=f"packing epoch {epoch}" if bars else None)
            stage.publish()
    finally:
        feat.close()
    stats = PackStats(**{**stats.__dict__, "seconds": time.perf_counter() - t0})
    if progress:
        progress(f"packed epoch {epoch}: {stats.packed_segments}/{stats.segments} segments, "
                 f"{stats.bytes_written / 2**20:.0f} MiB in {stats.seconds:.2f} s ({stats.passes} passes)")
    return stats


def _pack_matches(target: Path, digest: str, nodes_crc: str, spec: PackSpec) -> bool:
    try:
        meta = json.loads((target / "pack.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return bool(meta.get("cache") == digest and meta.get("nodes") == nodes_crc
                and meta.get("settings") == spec.identity())


def _write_pack(out: Path, plan: Any, epoch: int, segments: Iterator[_Segment], feat: _FeatureFile,
                spec: PackSpec, digest: str, nodes_crc: str, bar_title: str | None = None) -> PackStats:
    """Segments planned a group at a time (their planning data within a quarter of the memory
    budget, the staging of their runs' writes within a quarter, two read chunks within an eighth,
    one segment's planning temporaries within half), each group packed by one sequential pass over
    the feature file: the whole of it stays within ``memory_budget``."""
    limit = max(1, spec.memory_budget // 4)
    stage = max(1 << 20, min(STAGE_LIMIT, spec.memory_budget // 4))
    chunk = max(1 << 20, min(spec.read_chunk, spec.memory_budget // 16))  # two in flight: an eighth
    budget_left = spec.pack_budget
    files: dict[int, Any] = {}
    meta_segments: list[dict[str, Any]] = []
    passes = rows = 0
    with NpyWriter(out / "positions.npy", np.int32, (None,), root=out) as positions:
        group: list[tuple[int, _Segment]] = []
        for k, seg in enumerate(segments):
            size = seg.ids.size * feat.row_bytes
            # planning a segment costs about 6 int64 per batch node; training holds its rows
            if 48 * seg.positions.size > spec.memory_budget // 2 or size > spec.memory_budget // 2:
                raise MemoryBudgetError(
                    f"segment of batches {seg.first_batch}..{seg.first_batch + seg.batches - 1} needs "
                    f"{format_size(max(48 * seg.positions.size, 2 * size))} (planning, or its rows read whole), more "
                    f"than the packing memory budget ({format_size(spec.memory_budget)}): use fewer batches per segment")
            seg.packed = budget_left is None or size <= budget_left
            if budget_left is not None and seg.packed:
                budget_left -= size
            positions.write(_stored_positions(seg))
            seg.positions = seg.positions[:0]  # on disk now
            meta_segments.append({"first_batch": seg.first_batch, "batches": seg.batches,
                                  "rows": int(seg.ids.size), "runs": seg.runs[1:].tolist(),
                                  "packed": seg.packed})
            if seg.packed:
                group.append((k, seg))
                rows += int(seg.ids.size)
            if group and _group_full(group, feat.row_bytes, limit, stage, spec.max_open_segments):
                files.update(_stream_group(feat, group, out, chunk, stage, _pass_bar(bar_title, passes, feat)))
                passes, group = passes + 1, []
        if group:
            files.update(_stream_group(feat, group, out, chunk, stage, _pass_bar(bar_title, passes, feat)))
            passes += 1
    assert positions.entry is not None
    for k, entry in files.items():
        meta_segments[k].update(name=entry.name, size=entry.size, checksum=entry.checksum)
    meta = {
        "format": PACK_FORMAT, "version": PACK_VERSION, "epoch": epoch, "cache": digest, "nodes": nodes_crc,
        "settings": spec.identity(),
        "dataset": plan.meta["dataset"]["identity"], "row_bytes": feat.row_bytes, "dtype": str(feat.dtype),
        "dim": feat.dim, "segment_batches": spec.segment_batches, "order": "first use",
        "positions": {"name": positions.entry.name, "size": positions.entry.size,
                      "checksum": positions.entry.checksum},
        "segments": meta_segments,
    }
    write_bytes_entry(out / "pack.json", out, json.dumps(meta, indent=2).encode())
    written = sum(int(e.size) for e in files.values())
    return PackStats(epoch, len(meta_segments), len(files), rows, written, feat.bytes_read, passes, 0.0)


def _stored_positions(seg: _Segment) -> np.ndarray:
    if seg.packed:
        return seg.positions.astype(np.int32)
    return np.where(seg.positions == CACHED, CACHED, UNPACKED).astype(np.int32)


# --- reading ---------------------------------------------------------------------------------------
class PackedEpoch:
    """A packed epoch: ``read_segment`` returns a segment's rows from one sequential read.

    ``positions(b)`` says where each node of batch ``b`` is: its row in the batch's segment,
    ``CACHED`` (-1) or ``UNPACKED`` (-2).
    """

    def __init__(self, plan: Any, epoch: int, name: str = "default") -> None:
        self.path = plan.path / "packs" / name / f"epoch-{epoch:06d}"
        meta_path = self.path / "pack.json"
        if not meta_path.is_file():
            raise DatasetError(f"{self.path}: epoch {epoch} is not packed")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise ChecksumError(meta_path, f"not valid JSON ({e}); remove the pack (gnn-ooc clean) and pack again") from None
        if self.meta["dataset"] != plan.meta["dataset"]["identity"]:
            raise DatasetError(f"{self.path}: packed for another dataset")
        self.epoch_plan = plan.epoch(epoch)
        if self.meta.get("nodes") != self.epoch_plan.meta["files"]["nodes"]["checksum"]:
            raise DatasetError(f"{self.path}: packed for another plan of epoch {epoch} (re-run gnn-ooc pack)")
        for seg in self.meta["segments"]:
            if seg["packed"]:
                self._check_size(seg)
        # read per batch through a memory map: checked whole here (4 bytes per batch node)
        verify_entry(self.path, FileEntry(**{k: self.meta["positions"][k] for k in ("name", "size", "checksum")}),
                     recorded_in="pack.json")
        self._positions = np.load(self.path / "positions.npy", mmap_mode="r")
        # opened now: a pack replaced while this epoch trains cannot mix new segments with old positions
        self._fds = {k: open_read(self.path / seg["name"])[0] for k, seg in enumerate(self.meta["segments"])
                     if seg["packed"]}
        self.segment_batches = int(self.meta["segment_batches"])
        self.row_bytes, self.dim = int(self.meta["row_bytes"]), int(self.meta["dim"])
        self.dtype = np.dtype(self.meta["dtype"])
        # callers without buffers of their own share one, made for the largest segment on the first
        # read (first-touching a fresh map on every larger segment cost a third of a read's time);
        # a trainer passing its own buffers never holds it
        self._buf: mmap.mmap | None = None
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

    def read_segment(self, k: int, *, verify: bool = True, buffer: mmap.mmap | None = None) -> np.ndarray:
        """Segment ``k``'s rows ([rows, D], the dataset's dtype) from one sequential (O_DIRECT) read.

        The array lives in ``buffer`` (page-aligned, at least ``buffer_bytes(k)``) or else in a
        buffer reused by the next call; copy it to keep it. ``verify`` (the default) checks the
        CRC-32, piece by piece as the pieces land, and raises ``ChecksumError`` naming the file.
        """
        seg = self.meta["segments"][k]
        if not seg["packed"]:
            raise DatasetError(f"{self.path}: segment {k} is not packed (over the pack budget)")
        path = self.path / seg["name"]
        data_len = seg["rows"] * self.row_bytes
        if buffer is not None and len(buffer) < self.buffer_bytes(k):
            raise ValueError(f"{path}: a {len(buffer)} B buffer cannot hold the segment ({self.buffer_bytes(k)} B)")
        buf = buffer if buffer is not None else self._buffer(self.buffer_bytes())
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
        return _round_up(PAGE + max([s["rows"] for s in segs if s["packed"]], default=0) * self.row_bytes)

    def _buffer(self, nbytes: int) -> mmap.mmap:
        if self._buf is None or len(self._buf) < nbytes:
            self._buf = mmap.mmap(-1, max(nbytes, 1 << 20))
            np.frombuffer(self._buf, np.uint8)[::PAGE] = 0  # fault the pages in
        return self._buf

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self.close()

    def verify(self) -> None:
        """Check every file's size and CRC-32; raises ``ChecksumError`` naming the first bad one."""
        for entry in [self.meta["positions"], *[s for s in self.meta["segments"] if s["packed"]]]:
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
    want = _round_up(nbytes)
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


def count_segment_read(stats: Any, rows: int, nbytes: int) -> None:
    """Count a segment read in a store's ``stats``: its rows count as rows from disk once, when
    read, so the read amplification of a packed epoch stays honest."""
    stats.disk_rows += rows
    stats.disk_bytes_read += nbytes
    stats.disk_reads += 1


def assemble_batch(node: np.ndarray, pos: np.ndarray | None, segment_rows: np.ndarray | None, store: Any,
                   out: Any = None) -> Any:
    """One batch's features: nodes with ``pos >= 0`` from ``segment_rows`` (its segment as read), the
    rest (cached, or in an unpacked segment; all of them when ``pos`` is None) from ``store``."""
    import torch

    out = out if out is not None else torch.empty((node.size, store.dim), dtype=store.dtype)
    from_seg = np.zeros(node.size, bool)
    if pos is not None and segment_rows is not None:
        from_seg = pos >= 0
        rows = torch.from_numpy(segment_rows)
        rows = rows.view(store.dtype) if rows.dtype != store.dtype else rows  # bfloat16 is stored as uint16
        move_rows(rows, torch.from_numpy(pos[from_seg]), out, torch.from_numpy(np.flatnonzero(from_seg)))
        store.stats.add_hits("packed", int(from_seg.sum()), from_disk=False)
    rest = np.flatnonzero(~from_seg)
    if rest.size:
        store.gather_at(torch.from_numpy(node[rest]), out, torch.from_numpy(rest))
    return out


class PackedReader:
    """Batch features of a packed epoch: segment rows (one sequential read per segment), cached rows
    from the caches, and rows of unpacked segments from ``store``.

    Example:
        >>> reader = PackedReader(PackedEpoch(plan, 0), store)     # doctest: +SKIP
        >>> x = reader.batch(0)                                     # doctest: +SKIP
    """

    def __init__(self, packed: PackedEpoch, store: Any) -> None:
        self.packed, self.store = packed, store
        self._segment: int | None = None
        self._rows: np.ndarray | None = None

    def batch(self, b: int, out: Any = None) -> Any:
        pos = self.packed.positions(b)
        rows = self._segment_rows(self.packed.segment_of(b)) if (pos >= 0).any() else None
        return assemble_batch(self.packed.epoch_plan.nodes(b), pos, rows, self.store, out)

    def _segment_rows(self, k: int) -> np.ndarray:
        if self._segment != k or self._rows is None:
            before = self.packed.bytes_read
            self._rows = self.packed.read_segment(k)
            count_segment_read(self.store.stats, self._rows.shape[0], self.packed.bytes_read - before)
            self._segment = k
        return self._rows
