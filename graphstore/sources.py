"""Edge-list readers: Parquet files or folders, CSV/TSV (optionally gzipped), and (2, E) ``.npy``.

Each reader streams bounded chunks of raw ``(src, dst)`` columns with their first row number so
errors can name the file and the row (rows count from 0 and exclude a CSV header line).
``edge_ids`` turns a raw column into validated int64 ids when ids are used as they are.

Example:
    >>> src = open_edge_sources(["data/raw/edges.parquet"])[0]      # doctest: +SKIP
    >>> for chunk in src.chunks(1 << 20): ...                         # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numba
import numpy as np
import pyarrow as pa

from gnn_ooc.graphstore.base import InputError
from gnn_ooc.graphstore.kernels import min_max

_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
# Threaded Parquet reads decode every row group ahead (the whole file in memory); a serial
# reader with a small buffer keeps one row group at a time.
_PARQUET_BUFFER = 1 << 20
_REMAP_HINT = "integer node ids; pass --remap for string or non-integer ids"


@dataclass(frozen=True)
class EdgeChunk:
    """Raw columns of consecutive rows of one edge file."""

    path: Path
    first_row: int
    src: Any
    dst: Any

    def __len__(self) -> int:
        return len(self.src)


class EdgeSource(ABC):
    """One edge file. Subclasses implement ``_chunks``; ``chunks`` turns failures into InputError."""

    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst") -> None:
        self.path = path
        self.src_col = src_col
        self.dst_col = dst_col

    def chunks(self, max_rows: int) -> Iterator[EdgeChunk]:
        """Chunks of at most about ``max_rows`` rows, in file order."""
        if max_rows <= 0:
            raise ValueError("max_rows must be positive")
        try:
            yield from self._chunks(max_rows)
        except InputError:
            raise
        except (pa.ArrowException, OSError, ValueError, EOFError, gzip.BadGzipFile) as e:
            raise InputError(self.path, f"cannot be read ({_short(e)})", expected="a complete, readable file") from e

    @abstractmethod
    def _chunks(self, max_rows: int) -> Iterator[EdgeChunk]:
        """Yield raw chunks; may raise any reader error."""

    def estimate_rows(self) -> int | None:
        """Row count when the format records it, else a guess from the file size, else None."""
        return None

    def max_id_hint(self) -> int | None:
        """The largest id when the file records it (Parquet statistics), else None."""
        return None

    def _missing(self, available: Sequence[str]) -> InputError:
        cols = [c for c in (self.src_col, self.dst_col) if c not in available]
        return InputError(
            self.path,
            f"missing column {', '.join(repr(c) for c in cols)}",
            expected=f"columns {self.src_col!r} and {self.dst_col!r} (have {list(available)}; "
            "choose with --src-col/--dst-col)",
        )


class ParquetEdges(EdgeSource):
    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst") -> None:
        super().__init__(path, src_col, dst_col)
        import pyarrow.parquet as pq

        try:
            self._file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_BUFFER)
        except (pa.ArrowException, OSError) as e:
            raise InputError(path, f"not a readable Parquet file ({_short(e)})") from e
        names = self._file.schema_arrow.names
        if src_col not in names or dst_col not in names:
            raise self._missing(names)

    def estimate_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    def max_id_hint(self) -> int | None:
        meta = self._file.metadata
        names = self._file.schema_arrow.names
        cols = [names.index(self.src_col), names.index(self.dst_col)]
        top = -1
        for g in range(meta.num_row_groups):
            for c in cols:
                stats = meta.row_group(g).column(c).statistics
                if stats is None or not stats.has_min_max or not isinstance(stats.max, int):
                    return None
                top = max(top, stats.max)
        return top

    def _chunks(self, max_rows: int) -> Iterator[EdgeChunk]:
        row = 0
        cols = [self.src_col, self.dst_col]
        for batch in self._file.iter_batches(batch_size=max_rows, columns=cols, use_threads=False):
            yield EdgeChunk(self.path, row, batch.column(0), batch.column(1))
            row += batch.num_rows


class CsvEdges(EdgeSource):
    """CSV or TSV; the header is detected (a first line of numbers is data, columns then 0, 1...)."""

    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst") -> None:
        super().__init__(path, src_col, dst_col)
        self.delimiter = "\t" if ".tsv" in path.name else ","
        first = _first_line(path)
        fields = [f.strip() for f in first.split(self.delimiter)] if first else []
        self.has_header = bool(fields) and not all(_is_number(f) for f in fields)
        if self.has_header:
            if src_col not in fields or dst_col not in fields:
                raise self._missing(fields)
            self._cols = (src_col, dst_col)
        else:
            width = len(fields)
            self._cols = (_positional(src_col, 0, width, path), _positional(dst_col, 1, width, path))

    def estimate_rows(self) -> int:
        size = self.path.stat().st_size
        return max(1, size // (4 if self.path.name.endswith(".gz") else 12))

    def _chunks(self, max_rows: int) -> Iterator[EdgeChunk]:
        from pyarrow import csv

        read = csv.ReadOptions(
            block_size=int(min(256 << 20, max(1 << 20, max_rows * 16))),
            autogenerate_column_names=not self.has_header,
        )
        parse = csv.ParseOptions(delimiter=self.delimiter)
        convert = csv.ConvertOptions(include_columns=list(self._cols))
        row = 0
        with csv.open_csv(str(self.path), read_options=read, parse_options=parse, convert_options=convert) as r:
            for batch in r:
                if batch.num_rows == 0:
                    continue
                yield EdgeChunk(self.path, row, batch.column(self._cols[0]), batch.column(self._cols[1]))
                row += batch.num_rows


class NpyEdges(EdgeSource):
    """A ``.npy`` of shape (2, E) (or (E, 2)), read through a memory map."""

    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst") -> None:
        super().__init__(path, src_col, dst_col)
        try:
            self._arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise InputError(path, f"not a readable .npy ({_short(e)})", expected="a complete .npy file") from e
        shape = self._arr.shape
        if self._arr.ndim != 2 or 2 not in shape:
            raise InputError(path, f"array of shape {shape}", expected="an edge array of shape (2, E)")
        self._rows_first = shape[0] != 2

    def estimate_rows(self) -> int:
        return int(self._arr.shape[0] if self._rows_first else self._arr.shape[1])

    def _chunks(self, max_rows: int) -> Iterator[EdgeChunk]:
        total = self.estimate_rows()
        for start in range(0, total, max_rows):
            stop = min(total, start + max_rows)
            if self._rows_first:
                block = np.asarray(self._arr[start:stop])
                yield EdgeChunk(self.path, start, block[:, 0], block[:, 1])
            else:
                yield EdgeChunk(self.path, start, np.asarray(self._arr[0, start:stop]), np.asarray(self._arr[1, start:stop]))


def open_edge_sources(
    paths: Sequence[str | os.PathLike[str]], src_col: str = "src", dst_col: str = "dst"
) -> list[EdgeSource]:
    """One source per file; folders expand to their Parquet (else CSV) files in name order."""
    sources: list[EdgeSource] = []
    for p in (Path(p) for p in paths):
        for f in _expand(p):
            sources.append(_open_one(f, src_col, dst_col))
    if not sources:
        raise InputError(None, f"no edge files in {', '.join(str(p) for p in paths)}", expected="at least one edge file")
    return sources


def _expand(p: Path) -> list[Path]:
    if not p.exists():
        raise InputError(p, "does not exist", expected="an edge file or folder")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*.parquet") if f.is_file() and not f.name.startswith("."))
    if not files:
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(_CSV_SUFFIXES))
    if not files:
        raise InputError(p, "folder holds no .parquet or .csv/.tsv files", expected="edge files")
    return files


def _open_one(f: Path, src_col: str, dst_col: str) -> EdgeSource:
    name = f.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return ParquetEdges(f, src_col, dst_col)
    if name.endswith(".npy"):
        return NpyEdges(f, src_col, dst_col)
    if name.endswith(_CSV_SUFFIXES):
        return CsvEdges(f, src_col, dst_col)
    raise InputError(f, "unknown edge file type", expected=".parquet, .csv, .tsv (optionally .gz) or .npy")


def edge_ids(chunk: EdgeChunk, which: str) -> np.ndarray:
    """The ``src`` or ``dst`` column of a chunk as int64, or an InputError naming the row."""
    col = chunk.src if which == "src" else chunk.dst
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col, pa.Array):
        return _arrow_ids(chunk, which, col)
    return _numpy_ids(chunk, which, np.asarray(col))


def _arrow_ids(chunk: EdgeChunk, which: str, col: pa.Array) -> np.ndarray:
    if not pa.types.is_integer(col.type):
        raise InputError(chunk.path, f"{which} column has type {col.type}", expected=_REMAP_HINT)
    if col.null_count:
        row = chunk.first_row + int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise InputError(chunk.path, f"{which} id is missing (null)", expected="an id in every row", row=row)
    return _numpy_ids(chunk, which, col.to_numpy(zero_copy_only=False))


def _numpy_ids(chunk: EdgeChunk, which: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        raise InputError(chunk.path, f"{which} ids have dtype {arr.dtype}", expected=_REMAP_HINT)
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        row = chunk.first_row + int(np.argmax(arr > np.iinfo(np.int64).max))
        raise InputError(chunk.path, f"{which} id {int(arr[row - chunk.first_row])} is too large", expected="ids below 2**63; pass --remap", row=row)
    return arr.astype(np.int64, copy=False)


def check_id_range(chunk: EdgeChunk, which: str, ids: np.ndarray, num_nodes: int | None) -> int:
    """Raise naming the first row whose id is negative or not below ``num_nodes``; else the max id."""
    if ids.size == 0:
        return -1
    lo, hi = (int(v) for v in min_max(ids, numba.get_num_threads()))
    if lo >= 0 and (num_nodes is None or hi < num_nodes):
        return hi
    if lo < 0:
        i = int(np.argmax(ids < 0))
        raise InputError(chunk.path, f"{which} id {int(ids[i])} is negative", expected="ids >= 0", row=chunk.first_row + i)
    assert num_nodes is not None
    i = int(np.argmax(ids >= num_nodes))
    raise InputError(
        chunk.path,
        f"{which} id {int(ids[i])} is out of range",
        expected=f"ids < {num_nodes}, the number of nodes",
        row=chunk.first_row + i,
    )


def _first_line(path: Path) -> str:
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return str(f.readline()).rstrip("\r\n")
    except (OSError, EOFError) as e:
        raise InputError(path, f"cannot be read ({_short(e)})") from e


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _positional(col: str, default: int, width: int, path: Path) -> str:
    # pyarrow names headerless columns f0, f1, ...; a numeric --src-col picks a position.
    index = int(col) if col.isdigit() else default
    if index >= width:
        raise InputError(path, f"has {width} column(s)", expected=f"at least {index + 1} columns")
    return f"f{index}"


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
