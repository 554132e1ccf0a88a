"""Build the CSC topology from an edge stream by an external sort bounded by a memory budget.

Edges are partitioned by destination range into buckets (numba counting sort); buckets stay in
memory while they fit in half the budget and are appended to scratch files when they do not.
``finish`` then sorts one bucket at a time into CSC (numba, parallel over destinations) and
streams ``indptr`` and ``indices`` out in destination order. A bucket larger than one in-memory
sort is split again by a finer range, so skewed or unannounced graphs still fit the budget.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> b = CscBuilder(tmp, num_nodes=3, memory_budget=1 << 24)
    >>> b.add(np.array([0, 2, 1]), np.array([1, 1, 0]))
    >>> from gnn_ooc.graphstore.format.npyfile import NpyWriter
    >>> with NpyWriter(tmp / "p.npy", np.int64, (4,)) as p, NpyWriter(tmp / "i.npy", np.int32, (None,)) as i:
    ...     stats = b.finish(p, i)
    >>> np.load(tmp / "p.npy").tolist(), np.load(tmp / "i.npy").tolist()
    ([0, 1, 3, 3], [1, 0, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import numba
import numpy as np

from gnn_ooc.errors import MemoryBudgetError
from gnn_ooc.graphstore.format.npyfile import NpyWriter, WriteBehind
from gnn_ooc.graphstore.ingest.kernels import bucket_to_csc, partition_edges
from gnn_ooc.graphstore.io.directio import write_all

_INT32_MAX = np.iinfo(np.int32).max
_MIN_BUDGET = 1 << 20
_BUCKET_EDGES = 1 << 21
_MAX_BUCKETS = 4096
# Ranges are widened once the largest id needs this many times the buckets the first chunk's ids
# suggested (a margin, so that ids growing through the file do not rewrite the buckets each time).
_COARSEN_FACTOR = 16


@dataclass(frozen=True)
class CscStats:
    """What a CSC build did."""

    num_nodes: int
    num_edges: int
    edges_in: int
    buckets: int
    spilled_bytes: int
    resplits: int


def index_dtype(num_nodes: int) -> np.dtype:
    """``indices`` dtype of the format: int32 while every id fits, else int64."""
    return np.dtype(np.int32 if num_nodes <= _INT32_MAX else np.int64)


class CscBuilder:
    """External-sort CSC builder; ``add`` edge chunks, then ``finish`` into two ``NpyWriter``.

    ``num_nodes`` may be None, in which case it becomes the largest id plus one.
    """

    def __init__(
        self,
        scratch: Path,
        *,
        num_nodes: int | None,
        memory_budget: int,
        expected_edges: int | None = None,
        undirected: bool = False,
        drop_self_loops: bool = False,
        dedup: bool = False,
        id_bound: int | None = None,
    ) -> None:
        if memory_budget < _MIN_BUDGET:
            raise MemoryBudgetError(f"memory budget {memory_budget} B is below the minimum of 1 MiB")
        self.scratch = scratch
        self.num_nodes = num_nodes
        self.budget = memory_budget
        self.undirected = undirected
        self.drop_self_loops = drop_self_loops
        self.dedup = dedup
        # ids are known to stay below ``id_bound`` (e.g. from Parquet statistics) even when the
        # node count is not, so records can still be 32-bit.
        self.id_bound = num_nodes if num_nodes is not None else id_bound
        small = self.id_bound is not None and self.id_bound <= _INT32_MAX
        self.rec_dtype = np.dtype(np.int32 if small else np.int64)
        self.max_id = -1
        self.edges_in = 0
        self.spilled_bytes = 0
        self.resplits = 0
        self._shift: int | None = None
        self._expected = expected_edges
        self._buffers: dict[int, list[np.ndarray]] = {}
        self._buffered = 0
        self._spilled: set[int] = set()
        self._parts = max(1, numba.get_num_threads())

    # --- sizes ------------------------------------------------------------------------------
    # Budget shares while partitioning: half for buffered buckets, an eighth for the edge chunks
    # in flight (the one being partitioned, its records, one read ahead), the rest for the
    # reader's own buffers (a Parquet row group, a CSV block) and the allocator's slack. While
    # sorting, buffered buckets and one bucket's sort share the budget the same way.
    @property
    def chunk_edges(self) -> int:
        """How many input edges one ``add`` call should carry to stay within the budget."""
        fan = 2 if self.undirected else 1
        per_edge = 2 * 16 + 2 * fan * self.rec_dtype.itemsize
        return max(1 << 12, self.budget // (8 * per_edge))

    def _sort_capacity(self, width: int) -> int:
        idx = 8 if self.rec_dtype.itemsize == 8 else 4
        per_edge = 2 * self.rec_dtype.itemsize + 2 * idx
        return max(1, (self.budget - (16 + 8 * self._parts) * width) // per_edge)

    def _choose_shift(self, num_nodes_estimate: int) -> int:
        # Buckets of at most ~2 M edges keep each bucket's scatter and sort inside the CPU
        # caches (measured 1.7x faster than one 25 M-edge bucket); at most 4096 buckets.
        fan = 2 if self.undirected else 1
        expected = (self._expected or num_nodes_estimate * 16) * fan
        target = max(1, min(self._sort_capacity(0) // 2, _BUCKET_EDGES))
        buckets = max(1, min(_MAX_BUCKETS, -(-expected // target)))
        width = max(1, -(-num_nodes_estimate // buckets))
        shift = max(0, int(width - 1).bit_length())
        # A bucket's counters must fit in a quarter of the budget too.
        while shift > 0 and ((16 + 8 * self._parts) << shift) > self.budget // 4:
            shift -= 1
        return min(shift, 62)

    # --- partition ------------------------------------------------------------------------
    def add(self, src: np.ndarray, dst: np.ndarray, max_id: int | None = None) -> None:
        """Add validated int64 edges ``src -> dst`` (ids in ``[0, num_nodes)``; ``max_id`` if known)."""
        if src.shape[0] == 0:
            return
        self.edges_in += src.shape[0]
        chunk_max = int(max(src.max(), dst.max())) if max_id is None else max_id
        self.max_id = max(self.max_id, chunk_max)
        if self._shift is None:
            nodes = self.id_bound if self.id_bound is not None else 2 * (chunk_max + 1)
            self._shift = self._choose_shift(nodes)
        if self.id_bound is not None and self.max_id >= self.id_bound:
            raise ValueError(f"node id {self.max_id} >= the announced bound {self.id_bound}")
        if self.id_bound is None:
            self._maybe_coarsen()
        num_buckets = (self.max_id >> self._shift) + 1
        sample = np.empty(0, dtype=self.rec_dtype)
        offsets, rec = partition_edges(
            src, dst, self._shift, num_buckets, self.drop_self_loops, self.undirected, sample, self._parts
        )
        nonempty = np.flatnonzero(np.diff(offsets))
        for b in nonempty.tolist():
            self._buffers.setdefault(b, []).append(rec[offsets[b] : offsets[b + 1]])
        self._buffered += rec.nbytes
        if self._buffered > self.budget // 2:
            self.spill()

    def spill(self) -> None:
        """Append every buffered bucket to its scratch file and free the buffers."""
        for b, parts in self._buffers.items():
            for part in parts:
                _append(self._bucket_path(b), part)
                self.spilled_bytes += part.nbytes
            self._spilled.add(b)
        self._buffers.clear()
        self._buffered = 0

    # --- widening the ranges (node count unknown) -------------------------------------------
    def _maybe_coarsen(self) -> None:
        # Without a node count the ranges were sized from the first chunk's ids. Far larger ids
        # later would make every chunk's bucket counters grow with the largest id (a MemoryError
        # for ids near 2**63), so the ranges are widened to what those ids call for instead.
        assert self._shift is not None
        target = max(self._choose_shift(2 * (self.max_id + 1)), self._counter_shift())
        if target <= self._shift:
            return
        if (self.max_id >> self._shift) + 1 > _COARSEN_FACTOR * ((self.max_id >> target) + 1):
            self._coarsen(target)

    def _counter_shift(self) -> int:
        """The narrowest ranges whose per-chunk counters (8 B per bucket and thread) fit in an
        eighth of the budget. Wider than a sort can take at once only for ids far beyond the
        budget; ``finish`` then splits those ranges again."""
        limit = max(1, self.budget // (64 * self._parts))
        return max(0, min(62, int(self.max_id // limit).bit_length()))

    def _coarsen(self, shift: int) -> None:
        """Merge each run of 2**(shift - old shift) buckets into one; records keep their sources
        and get their destination offset within the wider range (order within a bucket is free:
        the sort orders every destination's sources in full)."""
        assert self._shift is not None
        k, old = shift - self._shift, self._shift
        buffers: dict[int, list[np.ndarray]] = {}
        for b, parts in self._buffers.items():
            offset = (b & ((1 << k) - 1)) << old
            for part in parts:
                if offset:
                    part[:, 0] += offset
                buffers.setdefault(b >> k, []).append(part)
        self._buffers = buffers
        self._coarsen_spilled(k, old)
        self._shift = shift

    def _coarsen_spilled(self, k: int, old: int) -> None:
        moved = {}
        for b in sorted(self._spilled):
            moved[b] = self._bucket_path(b, level="-old")
            self._bucket_path(b).rename(moved[b])
        self._spilled = set()
        rows = max(1, self.budget // (32 * self.rec_dtype.itemsize))
        for b, path in moved.items():
            offset = (b & ((1 << k) - 1)) << old
            for block in self._chunks([path], rows):
                if offset:
                    block[:, 0] += offset
                _append(self._bucket_path(b >> k), block)
                self.spilled_bytes += block.nbytes
            self._spilled.add(b >> k)

    def _bucket_path(self, b: int, level: str = "") -> Path:
        return self.scratch / f"bucket{level}-{b:08d}.bin"

    # --- sort -----------------------------------------------------------------------------
    def finish(self, indptr: NpyWriter, indices: NpyWriter, on_range: Callable[[int], Any] | None = None) -> CscStats:
        """Sort every bucket into CSC, writing ``indptr`` [N+1] and ``indices`` [E] in order
        (``on_range(1)`` after each destination range, for a progress bar)."""
        ptr_out, idx_out = _Named(WriteBehind(indptr), indptr.path), _Named(WriteBehind(indices), indices.path)
        try:
            return self._finish(ptr_out, idx_out, on_range)
        finally:
            ptr_out.drain()
            idx_out.drain()

    def _finish(self, indptr: _Named, indices: _Named, on_range: Callable[[int], Any] | None = None) -> CscStats:
        n = self.num_nodes if self.num_nodes is not None else self.max_id + 1
        if self.max_id >= n:
            raise ValueError(f"node id {self.max_id} >= num_nodes {n}")
        shift = self._shift if self._shift is not None else self._choose_shift(max(1, n))
        self._index_dtype = index_dtype(n)
        self._written = 0
        indptr.write(np.zeros(1, dtype=np.int64))
        num_buckets = -(-n // (1 << shift)) if n else 0
        for b in range(num_buckets):
            lo = b << shift
            width = min(1 << shift, n - lo)
            self._emit_range(self._take_bucket(b), width, indptr, indices)
            if on_range is not None:
                on_range(1)
        self._buffers.clear()
        return CscStats(n, self._written, self.edges_in, num_buckets, self.spilled_bytes, self.resplits)

    def _take_bucket(self, b: int) -> list[Path | np.ndarray]:
        parts: list[Path | np.ndarray] = list(self._buffers.pop(b, []))
        if b in self._spilled:
            parts.insert(0, self._bucket_path(b))
        return parts

    def _rows(self, part: Path | np.ndarray) -> int:
        if isinstance(part, Path):
            return part.stat().st_size // (2 * self.rec_dtype.itemsize)
        return int(part.shape[0])

    def _emit_range(
        self, parts: list[Path | np.ndarray], width: int, indptr: _Named, indices: _Named
    ) -> None:
        m = sum(self._rows(p) for p in parts)
        if m > self._sort_capacity(width):
            if width == 1:
                raise MemoryBudgetError(
                    f"one node has in-degree {m}, more than a {self.budget} B budget can sort; "
                    "raise --memory-budget"
                )
            self._emit_split(parts, m, width, indptr, indices)
            return
        rec = self._load(parts)
        deg, idx = bucket_to_csc(rec, width, self.dedup, np.empty(0, dtype=self._index_dtype), self._parts)
        del rec
        indptr.write(self._written + np.cumsum(deg))
        indices.write(idx)
        self._written += idx.shape[0]

    def _load(self, parts: list[Path | np.ndarray]) -> np.ndarray:
        arrays = []
        for p in parts:
            if isinstance(p, Path):
                arrays.append(np.fromfile(p, dtype=self.rec_dtype).reshape(-1, 2))
                p.unlink()
            else:
                arrays.append(p)
        if not arrays:
            return np.empty((0, 2), dtype=self.rec_dtype)
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def _chunks(self, parts: list[Path | np.ndarray], rows: int) -> Iterator[np.ndarray]:
        for p in parts:
            if not isinstance(p, Path):
                yield p
                continue
            total = self._rows(p)
            for start in range(0, total, rows):
                count = min(rows, total - start)
                offset = start * 2 * self.rec_dtype.itemsize
                yield np.fromfile(p, dtype=self.rec_dtype, count=2 * count, offset=offset).reshape(-1, 2)
            p.unlink()

    def _emit_split(
        self,
        parts: list[Path | np.ndarray],
        m: int,
        width: int,
        indptr: _Named,
        indices: _Named,
    ) -> None:
        # Stream the oversized range into 2..64 finer ranges on disk, then sort each in order.
        self.resplits += 1
        level = self.resplits
        capacity = self._sort_capacity(width)
        sub = max(2, min(64, 2 * -(-m // capacity)))
        sub_shift = max(0, int(-(-width // sub) - 1).bit_length())
        count = -(-width // (1 << sub_shift))
        paths = [self._bucket_path(s, level=f"-split{level}") for s in range(count)]
        for chunk in self._chunks(parts, max(1, capacity // 4)):
            offsets, rec = partition_edges(
                chunk[:, 1], chunk[:, 0], sub_shift, count, False, False, chunk[:0, 0], self._parts
            )
            for s in np.flatnonzero(np.diff(offsets)).tolist():
                _append(paths[s], rec[offsets[s] : offsets[s + 1]])
                self.spilled_bytes += int(offsets[s + 1] - offsets[s]) * 2 * self.rec_dtype.itemsize
        parts.clear()
        for s in range(count):
            sub_parts: list[Path | np.ndarray] = [paths[s]] if paths[s].exists() else []
            sub_width = min(1 << sub_shift, width - (s << sub_shift))
            self._emit_range(sub_parts, sub_width, indptr, indices)


def _append(path: Path, rec: np.ndarray) -> None:
    """Append records to a scratch file; a failed write names the file (``os.write`` errors do not)."""
    try:
        with open(path, "ab", buffering=0) as f:
            write_all(f.write, np.ascontiguousarray(rec).reshape(-1).data.cast("B"))
    except OSError as e:
        raise_named(e, path)


def raise_named(e: OSError, path: Path) -> NoReturn:
    """Re-raise ``e`` with ``path`` as its file name when it has none (errno kept, so callers can
    still tell a full disk); call it in an ``except`` block."""
    if e.filename is not None:
        raise e
    raise OSError(e.errno, e.strerror or str(e), str(path)) from e


class _Named:
    """A ``WriteBehind`` whose failed writes name its file."""

    def __init__(self, inner: WriteBehind, path: Path) -> None:
        self.inner, self.path = inner, path

    def write(self, rows: np.ndarray) -> None:
        try:
            self.inner.write(rows)
        except OSError as e:
            raise_named(e, self.path)

    def drain(self) -> None:
        try:
            self.inner.drain()
        except OSError as e:
            raise_named(e, self.path)
