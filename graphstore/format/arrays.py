"""Per-node array readers (features, labels) and split readers.

A ``RowSource`` streams blocks of rows from ``.npy`` (memory-mapped), Parquet (one list column,
or one numeric column per dimension) or headerless/headed CSV (optionally gzipped, as OGB ships
them). Split files are id lists (or boolean masks) in ``.npy``, ``.csv[.gz]``, ``.txt`` or
Parquet.

Example:
    >>> rows = open_rows("node_features.npy")                   # doctest: +SKIP
    >>> for start, block in rows.blocks(65536): ...              # doctest: +SKIP
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.format.base import SPLIT_NAMES
from gnn_ooc.graphstore.ingest.sources import (
    _PARQUET_BUFFER,
    _first_line,
    _is_number,
    _short,
    first_cast_failure,
    locate_csv_problem,
    read_or_explain,
)

_SPLIT_SUFFIXES = (".npy", ".csv.gz", ".csv", ".txt", ".parquet")
_SPLIT_ALIASES = {"valid": ("valid", "val", "validation"), "train": ("train",), "test": ("test",)}


class RowSource(ABC):
    """Rows of a per-node array; ``num_rows`` may be None until the file has been read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.num_rows: int | None = None
        self.dim: int | None = None

    def blocks(self, max_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` pairs in file order; blocks are 1-D or 2-D numpy arrays."""
        yield from read_or_explain(self.path, self._blocks(max_rows), self._locate_failure)

    @abstractmethod
    def _blocks(self, max_rows: int) -> Iterator[tuple[int, np.ndarray]]: ...

    def _locate_failure(self) -> InputError | None:
        """After a parse failure: an error naming the bad row, when the format allows finding it."""
        return None

    def count_rows(self) -> int:
        """The row count, reading the file if its format does not record it (a slow path)."""
        if self.num_rows is None:
            self.num_rows = sum(len(b) for _, b in self.blocks(1 << 20))
        return self.num_rows


class NpyRows(RowSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise InputError(path, f"not a readable .npy ({_short(e)})", expected="a complete .npy file") from e
        if self._arr.ndim not in (1, 2):
            raise InputError(path, f"array of shape {self._arr.shape}", expected="shape [N] or [N, D]")
        self.num_rows = int(self._arr.shape[0])
        self.dim = int(self._arr.shape[1]) if self._arr.ndim == 2 else None

    def _blocks(self, max_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        # Plain sequential reads: faulting a memory map in page by page is several times slower.
        assert self.num_rows is not None
        arr = self._arr
        if not isinstance(arr, np.memmap) or not arr.flags.c_contiguous:
            for start in range(0, self.num_rows, max_rows):
                yield start, np.asarray(arr[start : start + max_rows])
            return
        row_items = int(np.prod(arr.shape[1:], dtype=np.int64))
        row_bytes = row_items * arr.dtype.itemsize
        with open(self.path, "rb") as f:
            for start in range(0, self.num_rows, max_rows):
                rows = min(max_rows, self.num_rows - start)
                f.seek(arr.offset + start * row_bytes)
                block = np.fromfile(f, dtype=arr.dtype, count=rows * row_items)
                if block.size != rows * row_items:
                    raise InputError(self.path, f"ends before row {start + block.size // max(1, row_items)}", expected=f"{self.num_rows} rows")
                yield start, block.reshape((rows, *arr.shape[1:]))


class ParquetRows(RowSource):
    """One list column (``column`` or the only list column), else every numeric column in order."""

    def __init__(self, path: Path, column: str | None = None) -> None:
        super().__init__(path)
        import pyarrow.parquet as pq

        try:
            self._file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_BUFFER)
        except (pa.ArrowException, OSError) as e:
            raise InputError(path, f"not a readable Parquet file ({_short(e)})") from e
        schema = self._file.schema_arrow
        self._columns = _pick_columns(path, schema, column)
        self.num_rows = int(self._file.metadata.num_rows)
        first = schema.field(self._columns[0]).type
        if _is_list(first):
            self.dim = first.list_size if pa.types.is_fixed_size_list(first) else None
        elif len(self._columns) > 1:
            self.dim = len(self._columns)

    def _blocks(self, max_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        row = 0
        for batch in self._file.iter_batches(batch_size=max_rows, columns=self._columns, use_threads=False):
            yield row, self._to_numpy(batch, row)
            row += batch.num_rows

    def _to_numpy(self, batch: pa.RecordBatch, row: int) -> np.ndarray:
        cols = [batch.column(i) for i in range(batch.num_columns)]
        if _is_list(cols[0].type):
            return _list_to_numpy(self.path, cols[0], row)
        for i, c in enumerate(cols):
            if c.null_count and not pa.types.is_floating(c.type):
                bad = row + int(np.flatnonzero(np.asarray(c.is_null()))[0])
                raise InputError(self.path, f"null value in column {self._columns[i]!r}", expected="a value in every row", row=bad)
        arrays = [c.to_numpy(zero_copy_only=False) for c in cols]
        return arrays[0] if len(arrays) == 1 and self.dim is None else np.stack(arrays, axis=1)


class CsvRows(RowSource):
    """Comma-separated numbers, one row per node (OGB ``node-feat.csv.gz``, ``node-label.csv.gz``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        first = _first_line(path)
        fields = [f.strip() for f in first.split(",")] if first else []
        self.has_header = bool(fields) and not all(_is_number(f) or f.lower() == "nan" for f in fields)
        width = len(fields)
        self.dim = width if width > 1 else None

    def _blocks(self, max_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        from pyarrow import csv

        read = csv.ReadOptions(
            block_size=int(min(256 << 20, max(1 << 20, max_rows * 64))),
            autogenerate_column_names=not self.has_header,
        )
        row = 0
        with csv.open_csv(str(self.path), read_options=read) as r:
            for batch in r:
                if batch.num_rows == 0:
                    continue
                arrays = [self._column(batch, i, row) for i in range(batch.num_columns)]
                yield row, arrays[0] if self.dim is None else np.stack(arrays, axis=1)
                row += batch.num_rows
        self.num_rows = row

    def _column(self, batch: pa.RecordBatch, i: int, row: int) -> np.ndarray:
        col = batch.column(i)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type):
            if col.null_count and pa.types.is_integer(col.type):
                col = col.cast(pa.float64())
            return np.asarray(col.to_numpy(zero_copy_only=False))
        at = first_cast_failure(col, pa.float64()) if pa.types.is_string(col.type) else None
        if at is None:
            raise InputError(self.path, f"column {i} holds {col.type} values", expected="numbers", row=row)
        raise self._bad_value(i, row + at, col[at].as_py())

    def _bad_value(self, column: int, row: int, token: str) -> InputError:
        return InputError(self.path, f"column {column} value {token[:80]!r} is not a number", expected="numbers",
                          row=row)

    def _locate_failure(self) -> InputError | None:
        problem = locate_csv_problem(self.path, ",", self.has_header, None, pa.float64(), nulls_ok=True)
        if problem is None:
            return None
        if problem.fields is not None:
            return problem.field_count_error(self.path)
        names = [f.strip() for f in _first_line(self.path).split(",")]
        column = names.index(problem.column) if self.has_header and problem.column in names else \
            int(str(problem.column).lstrip("f") or 0)
        return self._bad_value(column, problem.row, problem.token or "")


def open_rows(path: str | os.PathLike[str], column: str | None = None) -> RowSource:
    """A row reader chosen by file name."""
    p = Path(path)
    if p.is_dir():
        raise InputError(p, "is a folder", expected="a file of per-node rows")
    if not p.is_file():
        raise InputError(p, "does not exist", expected="a file of per-node rows")
    name = p.name.lower()
    if name.endswith(".npy"):
        return NpyRows(p)
    if name.endswith(".parquet") or name.endswith(".pq"):
        return ParquetRows(p, column)
    if name.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
        return CsvRows(p)
    raise InputError(p, "unknown file type", expected=".npy, .parquet or .csv[.gz]")


def find_split_files(split_dir: Path) -> dict[str, Path]:
    """``{train, valid, test}`` files in a folder (``val``/``validation`` accepted for valid)."""
    if not split_dir.is_dir():
        raise InputError(split_dir, "is not a folder", expected="a folder with train/valid/test files")
    found: dict[str, Path] = {}
    for name in SPLIT_NAMES:
        for alias in _SPLIT_ALIASES[name]:
            for suffix in _SPLIT_SUFFIXES:
                candidate = split_dir / f"{alias}{suffix}"
                if candidate.is_dir():
                    raise InputError(candidate, "is a folder", expected="a split file of node ids or a boolean mask")
                if candidate.is_file() and name not in found:
                    found[name] = candidate
    if not found:
        raise InputError(split_dir, "holds no train/valid/test files", expected=f"files like train.npy ({', '.join(_SPLIT_SUFFIXES)})")
    return found


def read_split(path: Path) -> np.ndarray:
    """All ids of one split file as int64 (a boolean mask becomes the ids where it is true)."""
    return read_split_ids(path)[0]


def read_split_ids(path: Path) -> tuple[np.ndarray, int | None]:
    """``read_split``, and the row count of a boolean mask (None for an id list): a mask must have
    one row per node, which only the caller knows."""
    if not path.is_file():
        raise InputError(path, "is not a file", expected="a split file of node ids or a boolean mask")
    blocks = [b for _, b in open_rows(path).blocks(1 << 22)]
    arr: np.ndarray = np.concatenate(blocks) if blocks else np.empty(0, dtype=np.int64)
    if arr.ndim == 2 and arr.shape[-1] == 1:  # a one-column CSV or an [N, 1] array
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(path, f"array of shape {arr.shape}", expected="a 1-D list of node ids")
    if arr.dtype == np.bool_:
        return np.flatnonzero(arr).astype(np.int64), int(arr.shape[0])
    return _split_id_values(path, arr), None


def _split_id_values(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f":
        # Beyond 2**63 the cast to int64 would wrap: such a value is no node id either.
        bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (np.abs(arr) >= 2.0**63)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(path, f"value {float(arr[i])} is not a node id", expected="integer node ids", row=i)
    elif arr.dtype.kind not in "iu":
        raise InputError(path, f"values of type {arr.dtype}", expected="integer node ids")
    elif arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
        i = int(np.argmax(arr >= np.uint64(2**63)))
        raise InputError(path, f"value {int(arr[i])} is not a node id", expected="node ids below 2**63", row=i)
    return arr.astype(np.int64)


def _pick_columns(path: Path, schema: pa.Schema, column: str | None) -> list[str]:
    if column is not None:
        if column not in schema.names:
            raise InputError(path, f"missing column {column!r}", expected=f"one of {schema.names}")
        return [column]
    lists = [f.name for f in schema if _is_list(f.type)]
    if len(lists) == 1:
        return lists
    numeric = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    if len(lists) > 1 or not numeric:
        raise InputError(path, f"columns {schema.names}", expected="one list column or numeric columns (pick with --feature-col)")
    return numeric


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _list_to_numpy(path: Path, col: Any, row: int) -> np.ndarray:
    if col.null_count:
        bad = row + int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise InputError(path, "null feature row", expected="a feature vector in every row", row=bad)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
    else:
        lengths = np.asarray(col.value_lengths())
        width = int(lengths[0]) if lengths.size else 0
        if lengths.size and (lengths != width).any():
            i = int(np.argmax(lengths != width))
            raise InputError(path, f"feature row has {int(lengths[i])} values", expected=f"{width} like the first row", row=row + i)
    values = col.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(col), width)
