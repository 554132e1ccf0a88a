"""``--remap``: map sparse integer ids or string ids to ``0..N-1`` in sorted original-id order.

New id ``i`` is the ``i``-th smallest original id (lexicographic for strings), so per-node files
given as ``.npy`` line up when their rows follow the sorted original ids. The table of unique
ids is held in memory (8 bytes per node for integers) and counted against the memory budget;
edges themselves are streamed.

Example:
    >>> m = IdMap.from_values(np.array([10, 500, 7]))
    >>> m.lookup(np.array([500, 7]), path=None, first_row=0, what="id").tolist()
    [2, 0]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gnn_ooc.errors import InputError, MemoryBudgetError
from gnn_ooc.graphstore.format.base import FileEntry
from gnn_ooc.graphstore.format.npyfile import file_checksum, write_array
from gnn_ooc.graphstore.ingest.sources import EdgeChunk, first_cast_failure

_INT_BYTES_PER_ID = 24
_STR_OVERHEAD_PER_ID = 40


class IdMap:
    """Sorted unique original ids; position = new id."""

    def __init__(self, values: np.ndarray | pa.Array) -> None:
        self.values = values
        self.is_string = isinstance(values, pa.Array)

    def __len__(self) -> int:
        return len(self.values)

    @staticmethod
    def from_values(values: np.ndarray | pa.Array) -> IdMap:
        if isinstance(values, pa.Array):
            uniq = pc.unique(values)
            return IdMap(uniq.take(pc.sort_indices(uniq)))
        return IdMap(np.unique(values))

    @staticmethod
    def from_edges(chunks: Iterable[EdgeChunk], memory_budget: int) -> IdMap:
        """One pass over the edges collecting unique ids, merging as the pending set grows."""
        collector = _Collector(memory_budget)
        for chunk in chunks:
            for which, col in (("src", chunk.src), ("dst", chunk.dst)):
                collector.add(chunk, which, _as_ids(chunk, which, col))
        return collector.result()

    def lookup(self, raw: Any, *, path: Path | str | None, first_row: int, what: str) -> np.ndarray:
        """New ids of ``raw`` original ids; an unknown id is an InputError naming its row."""
        if self.is_string:
            arr = raw if isinstance(raw, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(raw).astype(str))
            arr = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
            idx = pc.index_in(arr, value_set=self.values)
            if idx.null_count:
                i = int(np.flatnonzero(np.asarray(idx.is_null()))[0])
                raise InputError(path, f"{what} {arr[i].as_py()!r} does not occur in the edge list", expected="ids of known nodes", row=first_row + i)
            return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)
        ids = np.asarray(raw.to_numpy(zero_copy_only=False) if isinstance(raw, (pa.Array, pa.ChunkedArray)) else raw)
        if ids.dtype.kind not in "iu":
            raise InputError(path, f"{what} values of type {ids.dtype}", expected="integer ids like the edge list")
        pos = np.searchsorted(self.values, ids)
        pos_c = np.minimum(pos, len(self.values) - 1)
        bad = self.values[pos_c] != ids if len(self.values) else np.ones(ids.shape, dtype=bool)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(path, f"{what} {int(ids[i])} does not occur in the edge list", expected="ids of known nodes", row=first_row + i)
        return pos.astype(np.int64)

    def write(self, staging: Path) -> tuple[str, FileEntry]:
        """Write the table: ``node_ids.npy`` (int64) or ``node_ids.parquet`` (string column ``id``)."""
        if not self.is_string:
            return "node_ids.npy", write_array(staging / "node_ids.npy", np.asarray(self.values), root=staging)
        import pyarrow.parquet as pq

        path = staging / "node_ids.parquet"
        pq.write_table(pa.table({"id": self.values}), path)
        entry = FileEntry("node_ids.parquet", path.stat().st_size, file_checksum(path), "string", (len(self),))
        return "node_ids.parquet", entry


class _Collector:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.done: Any = None
        self.pending: list[Any] = []
        self.pending_len = 0
        self.string: bool | None = None
        self.first: tuple[Path, str] | None = None

    def add(self, chunk: EdgeChunk, which: str, ids: Any) -> None:
        is_str = isinstance(ids, pa.Array)
        if self.string is None:
            self.string, self.first = is_str, (chunk.path, which)
        elif self.string != is_str:
            assert self.first is not None
            # A text column whose first ids are integers holds one bad token: name its row.
            text = ids if is_str else None
            if text is not None and chunk.locate is not None and (first_cast_failure(text, pa.int64()) or 0) > 0:
                located = chunk.locate()
                if located is not None:
                    raise located
            raise InputError(chunk.path, f"{which} ids are {'strings' if is_str else 'integers'} here but not in {self.first[0]}", expected="one id type across all edge files", row=chunk.first_row)
        self.pending.append(pc.unique(ids) if is_str else np.unique(ids))
        self.pending_len += len(self.pending[-1])
        if self.pending_len > max(1 << 16, len(self.done) if self.done is not None else 0):
            self._merge()

    def _merge(self) -> None:
        parts = ([self.done] if self.done is not None else []) + self.pending
        if self.string:
            merged = pc.unique(pa.concat_arrays([p.cast(pa.large_string()) for p in parts]))
            size = merged.nbytes + _STR_OVERHEAD_PER_ID * len(merged)
        else:
            merged = np.unique(np.concatenate(parts))
            size = _INT_BYTES_PER_ID * len(merged)
        if size > self.budget:
            raise MemoryBudgetError(f"--remap of {len(merged)}+ distinct ids needs about {size} B, more than the memory budget {self.budget} B; raise --memory-budget")
        self.done, self.pending, self.pending_len = merged, [], 0

    def result(self) -> IdMap:
        self._merge()
        if self.done is None or len(self.done) == 0:
            return IdMap(np.empty(0, dtype=np.int64))
        if self.string:
            values = self.done.cast(pa.string())
            return IdMap(values.take(pc.sort_indices(values)))
        return IdMap(self.done)


def _as_ids(chunk: EdgeChunk, which: str, col: Any) -> Any:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, pa.Array):
        if col.null_count:
            i = int(np.flatnonzero(np.asarray(col.is_null()))[0])
            raise InputError(chunk.path, f"{which} id is missing (null)", expected="an id in every row", row=chunk.first_row + i)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return col.cast(pa.string())
        if pa.types.is_integer(col.type):
            return col.to_numpy(zero_copy_only=False).astype(np.int64)
        located = chunk.locate() if chunk.locate is not None else None
        if located is not None:
            raise located
        raise InputError(chunk.path, f"{which} column has type {col.type}", expected="integer or string ids",
                         row=chunk.first_row)
    arr = np.asarray(col)
    if arr.dtype.kind not in "iu":
        raise InputError(chunk.path, f"{which} ids have dtype {arr.dtype}", expected="integer or string ids")
    return arr.astype(np.int64)
