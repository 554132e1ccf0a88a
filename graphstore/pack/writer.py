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

The layout on disk is ``pack.format``'s.

Example:
    >>> packed = pack_epoch(plan, 0, cached_ids=np.array([...]), spec=PackSpec())   # doctest: +SKIP
    >>> rows = packed.read_segment(0)                                                 # doctest: +SKIP
"""

from __future__ import annotations

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

from gnn_ooc.errors import ChecksumError, DatasetError, GnnOocError, MemoryBudgetError
from gnn_ooc.graphstore.features.policies.base import Serving
from gnn_ooc.graphstore.features.policies.static import StaticServing
from gnn_ooc.graphstore.format.base import DATA_ALIGNMENT, FileEntry
from gnn_ooc.graphstore.format.integrity import REBUILD
from gnn_ooc.graphstore.format.npyfile import (
    NpyWriter,
    crc32_combine,
    format_checksum,
    npy_header,
    write_array,
    write_bytes_entry,
)
from gnn_ooc.graphstore.io.atomic import Staging
from gnn_ooc.graphstore.io.directio import PAGE, open_read, page_round_up
from gnn_ooc.graphstore.io.runstreams import SPARE, RunStreams, slot_bytes
from gnn_ooc.graphstore.pack.format import (
    CACHED,
    PACK_FORMAT,
    PACK_VERSION,
    UNPACKED,
    PackSpec,
    epoch_dir,
    read_meta,
)
from gnn_ooc.progress import NoBar, bar
from gnn_ooc.units import format_size

STAGE_LIMIT = 64 << 20  # staging of a pass's writes at most (larger slots buy no speed)


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


# --- planning the segments -------------------------------------------------------------------------
@dataclass
class _Segment:
    first_batch: int
    batches: int
    ids: np.ndarray        # the global ids the segment stores, sorted (the order they stream by)
    run_of: np.ndarray     # per id: the batch (within the segment) that uses it first
    runs: np.ndarray       # [batches + 1] row offsets of each batch's run in the file
    positions: np.ndarray  # per node of the segment's batches: its row in the segment, or CACHED
    fills: np.ndarray      # per id the caches load at a step of these batches: its row in the segment
    fill_counts: np.ndarray  # [batches] how many of ``fills`` each batch's step loads
    packed: bool = True

    @property
    def planning_bytes(self) -> int:
        # held for the pass; positions and np.unique's temporaries only while planning
        return int(self.ids.nbytes + self.run_of.nbytes + self.runs.nbytes)


def _segment(nodes: np.ndarray, batch_starts: np.ndarray, served: np.ndarray, fills: list[np.ndarray],
             first_batch: int) -> _Segment:
    """Plan one segment: ``batch_starts`` are its batches' offsets into ``nodes`` (from 0), ``served``
    marks the nodes the caches serve, ``fills[j]`` the ids the caches load at batch ``j``'s step.
    A batch's run holds its fills and its nodes the caches do not serve that a run before it
    does not hold already."""
    nodes = np.asarray(nodes, dtype=np.int64)
    batches = batch_starts.size - 1
    miss = np.flatnonzero(~served)
    node_run = np.searchsorted(batch_starts, miss, side="right") - 1
    fill_counts = np.array([f.size for f in fills], np.int64)
    fill_ids = np.concatenate(fills).astype(np.int64) if fills else np.empty(0, np.int64)
    fill_run = np.repeat(np.arange(batches), fill_counts)
    want = np.concatenate([fill_ids, nodes[miss]])
    want_run = np.concatenate([fill_run, node_run])
    by_batch = np.argsort(want_run, kind="stable")  # so a row's first occurrence is its first batch
    ids, first, inverse = np.unique(want[by_batch], return_index=True, return_inverse=True)  # once per segment
    run_dtype = np.uint16 if batches <= 1 << 16 else np.int32
    run_of = want_run[by_batch][first].astype(run_dtype)
    runs = np.zeros(batches + 1, np.int64)
    np.cumsum(np.bincount(run_of, minlength=batches), out=runs[1:])
    row = np.empty(ids.size, np.int64)  # ids sorted by (first batch, id): the file's order
    row[np.argsort(run_of, kind="stable")] = np.arange(ids.size)
    entry_row = np.empty(want.size, np.int64)
    entry_row[by_batch] = row[inverse]
    positions = np.full(nodes.size, CACHED, np.int32)  # int32: half the planning memory per node
    positions[miss] = entry_row[fill_ids.size :]
    return _Segment(first_batch, batches, ids, run_of, runs, positions,
                    entry_row[: fill_ids.size].astype(np.int32), fill_counts)


def plan_segments(epoch_plan: Any, serving: Serving, segment_batches: int) -> Iterator[_Segment]:
    """The segments of an epoch, one at a time: which rows each stores and where each batch node
    is, for the caches ``serving`` says serve what (``features.policies.base.Serving``)."""
    index, nodes = epoch_plan.index, epoch_plan._nodes
    serving.begin(epoch_plan)
    for b0 in range(0, len(epoch_plan), segment_batches):
        b1 = min(len(epoch_plan), b0 + segment_batches)
        starts = np.asarray(index[b0 : b1 + 1, 0], dtype=np.int64)
        seg_nodes = np.asarray(nodes[starts[0] : starts[-1]], dtype=np.int64)
        rel = starts - starts[0]
        steps = [serving.step(b, seg_nodes[rel[b - b0] : rel[b - b0 + 1]]) for b in range(b0, b1)]
        served = np.concatenate([m for m, _ in steps]) if steps else np.zeros(0, bool)
        yield _segment(seg_nodes, rel, served, [f for _, f in steps], b0)
    serving.end()


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
        size = page_round_up(rows_per * self.row_bytes + 2 * PAGE)
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
        n = page_round_up(self.offset + r1 * self.row_bytes - lo)
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
def pack_epoch(plan: Any, epoch: int, cached_ids: np.ndarray | Serving, features_path: str | os.PathLike[str],
               spec: PackSpec | None = None, *, progress: Any = None, features_checksum: str | None = None,
               bars: bool = False) -> PackStats:
    """Pack epoch ``epoch`` of ``plan`` (atomically; an existing pack for the same caches is kept).

    ``cached_ids``: the rows static caches hold, or a ``Serving`` (a cache policy as the packer sees
    it: the future-aware cache's ``FutureServing``); a row the caches serve when a batch runs is
    not packed for it, and the rows a cache loads at a batch's step are packed in its run.

    With ``features_checksum`` (the manifest's), every pass over the feature file checks its
    CRC-32 and a mismatch raises ``ChecksumError``: nothing is packed from damaged rows.
    """
    t0 = time.perf_counter()
    spec = spec or PackSpec()
    target = epoch_dir(plan.path, spec.name, epoch)
    # ids (an array or any sequence of them) are static caches; anything else is a policy
    serving: Serving = cached_ids if callable(getattr(cached_ids, "step", None)) else StaticServing(cached_ids)
    digest = serving.identity()
    ep_plan = plan.epoch(epoch)
    nodes_crc = ep_plan.meta["files"]["nodes"]["checksum"]
    if _pack_matches(target, digest, nodes_crc, spec):
        return PackStats(epoch, 0, 0, 0, 0, 0, 0, 0.0)
    segments = plan_segments(ep_plan, serving, spec.segment_batches)
    feat = _FeatureFile(Path(features_path), features_checksum)
    try:
        with Staging(target, what="gnn-ooc pack") as stage:  # replaces an older pack of the epoch
            stats = _write_pack(stage.path, plan, epoch, segments, feat, spec, digest, nodes_crc,
                                bar_title=f"packing epoch {epoch}" if bars else None, serving=serving)
            stage.publish()
    finally:
        feat.close()
    stats = PackStats(**{**stats.__dict__, "seconds": time.perf_counter() - t0})
    if progress:
        progress(f"packed epoch {epoch}: {stats.packed_segments}/{stats.segments} segments, "
                 f"{stats.bytes_written / 2**20:.0f} MiB in {stats.seconds:.2f} s ({stats.passes} passes)")
    return stats


def _pack_matches(target: Path, digest: dict[str, Any], nodes_crc: str, spec: PackSpec) -> bool:
    try:
        meta = read_meta(target)
    except GnnOocError:  # missing, damaged, or of another version: packed again
        return False
    return bool(meta.get("cache") == digest and meta.get("nodes") == nodes_crc
                and meta.get("settings") == spec.identity())


def _write_pack(out: Path, plan: Any, epoch: int, segments: Iterator[_Segment], feat: _FeatureFile,
                spec: PackSpec, digest: dict[str, Any], nodes_crc: str, bar_title: str | None = None,
                serving: Serving | None = None) -> PackStats:
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
    fill_index = [np.zeros(1, np.int64)]
    with NpyWriter(out / "positions.npy", np.int32, (None,), root=out) as positions, \
            NpyWriter(out / "fills.npy", np.int32, (None,), root=out) as fills:
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
            fills.write(seg.fills if seg.packed else np.full(seg.fills.size, UNPACKED, np.int32))
            fill_index.append(fill_index[-1][-1] + np.cumsum(seg.fill_counts))
            seg.positions, seg.fills = seg.positions[:0], seg.fills[:0]  # on disk now
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
    assert positions.entry is not None and fills.entry is not None
    index_entry = write_array(out / "fill_index.npy", np.concatenate(fill_index), root=out)
    # the ids the caches started the epoch with (a cache that carries its rows over): a resumed
    # run starts its cache from them
    start = {k: _entry(write_array(out / f"cache_start_{k}.npy", np.asarray(v, np.int64), root=out))
             for k, v in (serving.start_state() if serving is not None else {}).items()}
    for k, entry in files.items():
        meta_segments[k].update(name=entry.name, size=entry.size, checksum=entry.checksum)
    meta = {
        "format": PACK_FORMAT, "version": PACK_VERSION, "epoch": epoch, "cache": digest, "nodes": nodes_crc,
        "settings": spec.identity(),
        "dataset": plan.meta["dataset"]["identity"], "row_bytes": feat.row_bytes, "dtype": str(feat.dtype),
        "dim": feat.dim, "segment_batches": spec.segment_batches, "order": "first use",
        "positions": _entry(positions.entry), "fills": _entry(fills.entry), "fill_index": _entry(index_entry),
        "cache_start": start,
        "segments": meta_segments,
    }
    write_bytes_entry(out / "pack.json", out, json.dumps(meta, indent=2).encode())
    written = sum(int(e.size) for e in files.values())
    return PackStats(epoch, len(meta_segments), len(files), rows, written, feat.bytes_read, passes, 0.0)


def _entry(entry: Any) -> dict[str, Any]:
    return {"name": entry.name, "size": entry.size, "checksum": entry.checksum}


def _stored_positions(seg: _Segment) -> np.ndarray:
    if seg.packed:
        return seg.positions.astype(np.int32)
    return np.where(seg.positions == CACHED, CACHED, UNPACKED).astype(np.int32)


# --- reading ---------------------------------------------------------------------------------------
