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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numba
import numpy as np
import pyarrow as pa

from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.ingest.kernels import min_max

T = TypeVar("T")
_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
# Threaded Parquet reads decode every row group ahead (the whole file in memory); a serial
# reader with a small buffer keeps one row group at a time.
_PARQUET_BUFFER = 1 << 20
_REMAP_HINT = "integer node ids; pass --remap for string or non-integer ids"
_MIXED_HINT = "one id type in every row of a column (integers throughout, or strings throughout)"
# Deflate expands at most ~1032x, and a CSV edge row takes at least 4 bytes ("0,0\n"): bounds on
# the rows a file can hold, for checks that must not under-count.
_GZIP_MAX_RATIO = 1032
_MIN_CSV_ROW_BYTES = 4


class IdRangeError(InputError):
    """An id is not below the node count (so the count, or where it came from, may be the culprit)."""


@dataclass(frozen=True)
class EdgeChunk:
    """Raw columns of consecutive rows of one edge file."""

    path: Path
    first_row: int
    src: Any
    dst: Any
    # Finds the first unparsable row of the file when a column turns out non-integer (CSV only).
    locate: Callable[[], InputError | None] | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.src)


class EdgeSource(ABC):
    """One edge file. Subclasses implement ``_chunks``; ``chunks`` turns failures into InputError."""

    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst", remap: bool = False) -> None:
        self.path = path
        self.src_col = src_col
        self.dst_col = dst_col
        self.remap = remap

    def chunks(self, max_rows: int) -> Iterator[EdgeChunk]:
        """Chunks of at most about ``max_rows`` rows, in file order."""
        if max_rows <= 0:
            raise ValueError("max_rows must be positive")
        yield from read_or_explain(self.path, self._chunks(max_rows), self._locate_failure)

    def _locate_failure(self) -> InputError | None:
        """After a parse failure: an error naming the bad row, when the format allows finding it."""
        return None

    def max_rows(self) -> int | None:
        """An upper bound on the file's rows (exact for Parquet and .npy), or None."""
        return self.exact_rows()

    def exact_rows(self) -> int | None:
        """The row count when the format records it (Parquet metadata, an .npy shape), else None."""
        return None

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
    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst", remap: bool = False) -> None:
        super().__init__(path, src_col, dst_col, remap)
        import pyarrow.parquet as pq

        try:
            self._file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_BUFFER)
        except (pa.ArrowException, OSError) as e:
            raise InputError(path, f"not a readable Parquet file ({_short(e)})") from e
        names = self._file.schema_arrow.names
        if src_col not in names or dst_col not in names:
            raise self._missing(names)
        _check_unique(path, names, (src_col, dst_col))

    def estimate_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    def exact_rows(self) -> int:
        return self.estimate_rows()

    def max_id_hint(self) -> int | None:
        meta = self._file.metadata
        # Statistics are per leaf column: nested columns before the ids shift the positions.
        leaves = [self._file.schema.column(i).path for i in range(len(self._file.schema))]
        if self.src_col not in leaves or self.dst_col not in leaves:
            return None
        cols = [leaves.index(self.src_col), leaves.index(self.dst_col)]
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

    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst", remap: bool = False) -> None:
        super().__init__(path, src_col, dst_col, remap)
        self.delimiter = "\t" if ".tsv" in path.name else ","
        first = _first_line(path)
        fields = [f.strip() for f in first.split(self.delimiter)] if first else []
        self.has_header = bool(fields) and not all(_is_number(f) for f in fields)
        if self.has_header:
            if src_col not in fields or dst_col not in fields:
                raise self._missing(fields)
            _check_unique(path, fields, (src_col, dst_col))
            self._cols = (src_col, dst_col)
        else:
            width = len(fields)
            self._cols = (_positional(src_col, 0, width, path), _positional(dst_col, 1, width, path))

    def estimate_rows(self) -> int:
        size = self.path.stat().st_size
        return max(1, size // (4 if self.path.name.endswith(".gz") else 12))

    def max_rows(self) -> int:
        size = self.path.stat().st_size
        text = size * _GZIP_MAX_RATIO if self.path.name.endswith(".gz") else size
        return text // _MIN_CSV_ROW_BYTES + 1

    def _locate_failure(self) -> InputError | None:
        problem = locate_csv_problem(self.path, self.delimiter, self.has_header, list(self._cols), pa.int64(),
                                     nulls_ok=False)
        if problem is None:
            return None
        if problem.fields is not None:
            return problem.field_count_error(self.path)
        which = "src" if problem.column == self._cols[0] else "dst"
        return _token_error(self.path, which, problem, self.remap)

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
                yield EdgeChunk(self.path, row, batch.column(self._cols[0]), batch.column(self._cols[1]),
                                locate=self._locate_failure)
                row += batch.num_rows


class NpyEdges(EdgeSource):
    """A ``.npy`` of shape (2, E) (or (E, 2)), read through a memory map."""

    def __init__(self, path: Path, src_col: str = "src", dst_col: str = "dst", remap: bool = False) -> None:
        super().__init__(path, src_col, dst_col, remap)
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

    def exact_rows(self) -> int:
        return self.estimate_rows()

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
    paths: Sequence[str | os.PathLike[str]], src_col: str = "src", dst_col: str = "dst", remap: bool = False
) -> list[EdgeSource]:
    """One source per file; folders expand to their Parquet (else CSV) files in name order."""
    sources: list[EdgeSource] = []
    for p in (Path(p) for p in paths):
        for f in _expand(p):
            sources.append(_open_one(f, src_col, dst_col, remap))
    if not sources:
        raise InputError(None, f"no edge files in {', '.join(str(p) for p in paths)}", expected="at least one edge file")
    return sources


def _expand(p: Path) -> list[Path]:
    if not p.exists():
        raise InputError(p, "does not exist", expected="an edge file or folder")
    if p.is_file():
        return [p]
    parquet = sorted(f for f in p.rglob("*.parquet") if f.is_file() and not f.name.startswith("."))
    text = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(_CSV_SUFFIXES) and not f.name.startswith("."))
    tables = [f for f in text if not f.name.endswith((".txt", ".txt.gz"))]  # a README.txt is no edge file
    if parquet and tables:
        # Taking one kind would silently drop the other's edges.
        raise InputError(p, f"folder holds both .parquet ({parquet[0].name}) and CSV/TSV ({tables[0].name}) files",
                         expected="edge files of one kind per folder (or list the files with --edges)")
    if not parquet and not text:
        raise InputError(p, "folder holds no .parquet or .csv/.tsv files", expected="edge files")
    return parquet or text


def _open_one(f: Path, src_col: str, dst_col: str, remap: bool) -> EdgeSource:
    name = f.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return ParquetEdges(f, src_col, dst_col, remap)
    if name.endswith(".npy"):
        return NpyEdges(f, src_col, dst_col, remap)
    if name.endswith(_CSV_SUFFIXES):
        return CsvEdges(f, src_col, dst_col, remap)
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
    if col.null_count:
        row = chunk.first_row + int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise InputError(chunk.path, f"{which} id is missing (null)", expected="an id in every row", row=row)
    if not pa.types.is_integer(col.type):
        located = chunk.locate() if chunk.locate is not None else None
        if located is not None:
            raise located
        raise InputError(chunk.path, f"{which} column has type {col.type}", expected=_REMAP_HINT,
                         row=chunk.first_row + _first_non_integer(col))
    return _numpy_ids(chunk, which, col.to_numpy(zero_copy_only=False))


def _first_non_integer(col: pa.Array) -> int:
    """Position of the first value that is no integer id (0 when the whole column is of a wrong type)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return first_cast_failure(col, pa.int64()) or 0
    if pa.types.is_floating(col.type):
        x = col.to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(x) | (x != np.round(x))
        return int(np.argmax(bad)) if bad.any() else 0
    return 0


def _numpy_ids(chunk: EdgeChunk, which: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        bad = 0
        if arr.dtype.kind == "f" and arr.size:
            wrong = ~np.isfinite(arr) | (arr != np.round(arr))
            bad = int(np.argmax(wrong)) if wrong.any() else 0
        raise InputError(chunk.path, f"{which} ids have dtype {arr.dtype}", expected=_REMAP_HINT,
                         row=chunk.first_row + bad if arr.size else None)
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        row = chunk.first_row + int(np.argmax(arr > np.iinfo(np.int64).max))
        raise InputError(chunk.path, f"{which} id {int(arr[row - chunk.first_row])} is too large", expected="ids below 2**63; pass --remap", row=row)
    return arr.astype(np.int64, copy=False)


def check_id_range(
    chunk: EdgeChunk, which: str, ids: np.ndarray, num_nodes: int | None, origin: str | None = None
) -> int:
    """Raise naming the first row whose id is negative or not below ``num_nodes`` (which ``origin``
    explains); else the max id."""
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
    raise IdRangeError(
        chunk.path,
        f"{which} id {int(ids[i])} is out of range",
        expected=f"ids < {num_nodes}, the number of nodes" + (f" ({origin})" if origin else ""),
        row=chunk.first_row + i,
    )


# --- slow paths: locating the row of a CSV failure ---------------------------------------------------
@dataclass(frozen=True)
class CsvProblem:
    """The first bad row of a CSV file: a token that does not parse, a missing value, or a wrong field count."""

    row: int
    column: str | None = None
    token: str | None = None
    fields: tuple[int, int] | None = None  # (expected, actual) when the row has the wrong field count

    def field_count_error(self, path: Path) -> InputError:
        assert self.fields is not None
        expected, actual = self.fields
        text = "" if self.token is None else f": {self.token[:80]!r}"
        return InputError(path, f"has {actual} field(s){text}", expected=f"{expected} fields like the first row",
                          row=self.row)


def locate_csv_problem(
    path: Path, delimiter: str, has_header: bool, columns: list[str] | None, to: pa.DataType, *, nulls_ok: bool
) -> CsvProblem | None:
    """Re-read ``path`` serially with ``columns`` (None: all) as text and find the first row that
    fails: a field count, a null (unless ``nulls_ok``) or a token that does not cast to ``to``.

    Only called after the fast read failed, so it may cost a second pass over the file.
    """
    from pyarrow import csv

    invalid: list[Any] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row)
        return "error"

    # Serial reading is what makes pyarrow number the invalid rows (non-empty lines, header included).
    read = csv.ReadOptions(use_threads=False, block_size=1 << 22, autogenerate_column_names=not has_header)
    parse = csv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    names = columns if columns is not None else _csv_names(path, delimiter, has_header)
    convert = csv.ConvertOptions(include_columns=columns or [], column_types={c: pa.string() for c in names},
                                 strings_can_be_null=True)
    row = 0
    try:
        with csv.open_csv(str(path), read_options=read, parse_options=parse, convert_options=convert) as r:
            for batch in r:
                found = _first_bad_in_batch(batch, to, nulls_ok)
                if found is not None:
                    i, name, token = found
                    return CsvProblem(row + i, name, token)
                row += batch.num_rows
    except (pa.ArrowException, OSError, EOFError, gzip.BadGzipFile):
        if invalid:
            bad = invalid[0]
            number = bad.number if bad.number is not None else row + 1 + int(has_header)
            return CsvProblem(number - 1 - int(has_header), token=bad.text,
                              fields=(bad.expected_columns, bad.actual_columns))
    return None


def _csv_names(path: Path, delimiter: str, has_header: bool) -> list[str]:
    fields = [f.strip() for f in _first_line(path).split(delimiter)]
    return fields if has_header else [f"f{i}" for i in range(len(fields))]


def _first_bad_in_batch(batch: pa.RecordBatch, to: pa.DataType, nulls_ok: bool) -> tuple[int, str, str | None] | None:
    best: tuple[int, str, str | None] | None = None
    for name, col in zip(batch.schema.names, batch.columns):
        cands = []
        if col.null_count and not nulls_ok:
            cands.append((int(np.flatnonzero(np.asarray(col.is_null()))[0]), None))
        if pa.types.is_string(col.type):
            i = first_cast_failure(col, to)
            if i is not None:
                cands.append((i, col[i].as_py()))
        for i, token in cands:
            if best is None or i < best[0]:
                best = (i, name, token)
    return best


def first_cast_failure(col: pa.Array, to: pa.DataType) -> int | None:
    """Index of the first string that does not cast to ``to`` (after trimming blanks, as the CSV
    reader does), or None: a bisection of whole-prefix casts, so vectorised however long the column."""
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(col)

    def ok(k: int) -> bool:
        try:
            pc.cast(text.slice(0, k), to)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
        return True

    if ok(len(text)):
        return None
    lo, hi = 0, len(text)  # the prefix of length lo casts; the one of length hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _token_error(path: Path, which: str, problem: CsvProblem, remap: bool) -> InputError:
    token = problem.token
    if token is None or not token.strip():
        return InputError(path, f"{which} id is missing", expected="an id in every row", row=problem.row)
    if token.strip().lstrip("-").isdigit():
        expected = "integer ids below 2**63 (or string ids in every row)" if remap else \
            "ids below 2**63; pass --remap to renumber them"
        return InputError(path, f"{which} id {token.strip()} is too large", expected=expected, row=problem.row)
    expected = _MIXED_HINT if remap else _REMAP_HINT
    return InputError(path, f"{which} id {token[:80]!r} is not an integer", expected=expected, row=problem.row)


def _check_unique(path: Path, names: Sequence[str], wanted: Sequence[str]) -> None:
    for name in wanted:
        if list(names).count(name) > 1:
            raise InputError(path, f"has {list(names).count(name)} columns named {name!r}",
                             expected="one column of each name (rename the others)")


def _first_line(path: Path) -> str:
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    try:
        # utf-8-sig: a byte-order mark is not part of the first column's name (pyarrow drops it too)
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
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


def read_or_explain(path: Path, items: Iterator[T], locate: Callable[[], InputError | None]) -> Iterator[T]:
    """``items`` as they come from reading ``path``; a failure of the reader becomes one
    ``InputError`` naming the file (the row, when ``locate`` finds it after an Arrow parse error)."""
    try:
        yield from items
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError, gzip.BadGzipFile) as e:
        located = locate() if isinstance(e, pa.ArrowInvalid) else None
        if located is not None:
            raise located from e
        raise InputError(path, f"cannot be read ({_short(e)})", expected="a complete, readable file") from e


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
