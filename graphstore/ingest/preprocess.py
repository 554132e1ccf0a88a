"""``gnn-ooc preprocess``: raw graph files to the on-disk dataset, out of core and crash-safe.

Inputs are opened and checked (columns, shapes, row counts) before any heavy work; the output
is built in a locked temporary sibling and renamed into place; a rerun on unchanged inputs and
options does nothing (the fingerprint in ``manifest.json`` matches) unless ``force``.

Example:
    >>> spec = PreprocessSpec(output=Path("data/cora"), edges=(Path("raw/edges.parquet"),),
    ...                       features=Path("raw/node_features.npy"), undirected=True)
    >>> result = preprocess(spec)                       # doctest: +SKIP
    >>> result.manifest.num_nodes                       # doctest: +SKIP
    2708
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

import gnn_ooc
from gnn_ooc.errors import DatasetError, DiskSpaceError, InputError
from gnn_ooc.graphstore.format.arrays import RowSource, find_split_files, open_rows, read_split_ids
from gnn_ooc.graphstore.format.base import (
    DATA_ALIGNMENT,
    FEATURE_DTYPES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    NAN_POLICIES,
    SPLIT_NAMES,
    FileEntry,
    Manifest,
)
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.format.npyfile import NpyWriter, write_array, write_bytes_entry
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.csc import CscBuilder, CscStats, index_dtype
from gnn_ooc.graphstore.ingest.remap import IdMap
from gnn_ooc.graphstore.ingest.sources import (
    EdgeChunk,
    EdgeSource,
    IdRangeError,
    check_id_range,
    edge_ids,
    open_edge_sources,
)
from gnn_ooc.graphstore.io.atomic import LockedDir, Staging, remove_stale
from gnn_ooc.graphstore.io.owned import DATASET
from gnn_ooc.progress import bar
from gnn_ooc.units import format_size

Progress = Callable[[str], None]
_SIDE_MIN_BUDGET = 16 << 20
T = TypeVar("T")
# Without --num-nodes, --remap or a per-node file, N is the largest id + 1; more than this many
# nodes (at least 64 per edge, the indptr then 128x the indices) means the ids are sparse, not
# a graph of mostly isolated nodes (README, "What preprocess guarantees").
_SPARSE_MIN_NODES = 1 << 16
_SPARSE_NODES_PER_EDGE = 64
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_MANIFEST_RESERVE = 1 << 16


@dataclass(frozen=True)
class PreprocessResult:
    """Where the dataset is, its manifest, and whether the run was skipped as up to date."""

    path: Path
    manifest: Manifest
    skipped: bool
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class _Inputs:
    edges: list[EdgeSource]
    features: RowSource | None
    labels: RowSource | None
    split_files: dict[str, Path]


def preprocess(spec: PreprocessSpec, progress: Progress | None = None, *, bars: bool = False) -> PreprocessResult:
    """Build (or find up to date) the dataset that ``spec`` describes; ``bars`` shows progress bars
    (edges partitioned, rows copied, ranges sorted) on a terminal."""
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    _check_spec(spec)
    inputs = _open_inputs(spec)
    fingerprint = input_fingerprint(spec)
    current = None if spec.force else _up_to_date(spec.output, fingerprint, say)
    if current is not None and not spec.force:
        say(f"{spec.output} is up to date (inputs unchanged); nothing to do (use --force to rebuild)")
        return PreprocessResult(spec.output, current, True, time.perf_counter() - t0)
    _set_threads(spec.threads)
    with Staging(spec.output, kind=DATASET, inputs=_all_inputs(spec)) as staging:
        build = _Build(spec, inputs, staging.path, say)
        build.bars = bars
        manifest = build.run(fingerprint)
        staging.publish()
    say(f"wrote {spec.output}")
    _say_carried(staging, say)
    return PreprocessResult(spec.output, manifest, False, time.perf_counter() - t0, build.phases)


def _all_inputs(spec: PreprocessSpec) -> list[Path]:
    """Every input path: an output may not be, hold, or lie inside one of them."""
    paths = [p for group in spec.input_paths().values() for p in group]
    return paths + ([spec.source_dir] if spec.source_dir is not None else [])


def _say_carried(staging: Staging, say: Progress) -> None:
    if staging.carried:
        say(f"kept what the previous {staging.target} held besides its dataset files: {', '.join(staging.carried)}")
    if staging.kept is not None:
        say(f"warning: {staging.kept} holds files gnn-ooc did not write whose names the new dataset uses; "
            "it was kept: move what you need out of it")


# --- checks before any work --------------------------------------------------------------------
def _check_spec(spec: PreprocessSpec) -> None:
    if spec.feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"--feature-dtype {spec.feature_dtype!r}: expected one of {FEATURE_DTYPES}")
    if spec.nan_policy not in NAN_POLICIES:
        raise ValueError(f"--nan-policy {spec.nan_policy!r}: expected one of {NAN_POLICIES}")
    if spec.split is not None:
        finite = all(np.isfinite(f) for f in spec.split)
        if len(spec.split) != 3 or not finite or min(spec.split) < 0 or sum(spec.split) > 1 + 1e-9:
            raise ValueError(f"--split {spec.split}: expected three fractions >= 0 summing to at most 1")
        if spec.split_dir is not None:
            raise ValueError("--split and --split-dir exclude each other")
    if spec.num_nodes is not None and spec.num_nodes < 1:
        raise ValueError(f"--num-nodes {spec.num_nodes}: expected a count >= 1 (the edges need nodes)")
    if not spec.edges:
        raise ValueError("no edge input given (--edges)")
    if spec.tmp_dir is not None and spec.tmp_dir.exists() and not spec.tmp_dir.is_dir():
        raise ValueError(f"--tmp-dir {spec.tmp_dir}: is not a folder")


def _open_inputs(spec: PreprocessSpec) -> _Inputs:
    return _Inputs(
        edges=open_edge_sources(spec.edges, spec.src_col, spec.dst_col, remap=spec.remap),
        features=open_rows(spec.features, spec.feature_col) if spec.features else None,
        labels=open_rows(spec.labels) if spec.labels else None,
        split_files=find_split_files(spec.split_dir) if spec.split_dir else {},
    )


def _set_threads(threads: int | None) -> None:
    if threads:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


# --- fingerprint and idempotence -----------------------------------------------------------------
def input_fingerprint(spec: PreprocessSpec) -> str:
    """Hash of the options and of each input file's path, size, mtime and first/last 64 KiB."""
    files: list[dict[str, Any]] = []
    for role, paths in spec.input_paths().items():
        for p in paths:
            for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
                if f.is_file():
                    files.append({"role": role, **_file_stamp(f)})
    doc = {"format_version": FORMAT_VERSION, "options": spec.options(), "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            f.seek(max(0, st.st_size - (1 << 16)))
            tail = f.read(1 << 16)
    except OSError as e:  # an unreadable file in an input folder (a split folder's neighbour, say)
        raise InputError(path, f"cannot be read ({e.strerror or e})", expected="readable input files") from e
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sample_crc": zlib.crc32(tail, zlib.crc32(head)),
    }


def _up_to_date(output: Path, fingerprint: str, say: Progress | None = None) -> Manifest | None:
    """The existing dataset's manifest when it was built from these inputs and options and its
    files still verify (every checksum: a flipped byte means a rebuild, not "up to date")."""
    if not (output / MANIFEST_NAME).is_file():
        return None
    try:
        ds = Dataset.open(output)
        if ds.manifest.fingerprint != fingerprint:
            return None
        ds.verify()
    except (DatasetError, OSError) as e:
        if say is not None:
            say(f"{output}: the existing dataset does not verify ({e}); rebuilding it")
        return None
    return ds.manifest


# --- the build -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Origin:
    """Where the node count came from, so that errors comparing against it can say so."""

    text: str
    path: Path | None = None  # the per-node file whose rows set it
    what: str | None = None  # "feature" or "label"


class _Build:
    """One preprocess run inside a staging folder."""

    def __init__(self, spec: PreprocessSpec, inputs: _Inputs, root: Path, say: Progress) -> None:
        self.spec = spec
        self.inputs = inputs
        self.root = root
        self.say = say
        self.files: dict[str, FileEntry] = {}
        self.stats: dict[str, Any] = {}
        self.phases: dict[str, float] = {}
        self.id_map: IdMap | None = None
        self.num_nodes: int | None = None
        self._mask_splits: set[str] = set()  # splits given as boolean masks: a node's row is its id
        self.origin = _Origin("the largest edge id + 1")
        self.need = 0  # the largest disk need estimated on the output's filesystem, for messages
        self.bars = False
        self._cancel = threading.Event()
        self._side: _Side | None = None

    def _phase(self, name: str, t0: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - t0, 4)

    def run(self, fingerprint: str) -> Manifest:
        try:
            return self._run(fingerprint)
        except OSError as e:
            # Writes that no narrower handler named (a mkdir, a file creation) still end as one line.
            if not _is_disk_full(e):
                raise
            shown = self._display(Path(e.filename)) if e.filename else self.spec.output
            raise self._disk_full_error(e, shown) from e

    def _run(self, fingerprint: str) -> Manifest:
        spec = self.spec
        with _scratch(spec, self.root) as scratch:
            if spec.remap:
                t0 = time.perf_counter()
                self.say("remap: collecting distinct ids")
                self.id_map = IdMap.from_edges(self._raw_chunks(1 << 20), spec.memory_budget)
                self._phase("remap", t0)
            n = self._known_num_nodes()
            # Split ids are checked against N early only when every per-node file's row count is
            # known: else a short per-node file would be blamed on a split.
            splits = self._read_splits(n) if n is not None and self._counts_known() else None
            if n is not None:
                self._check_disk(n, self._exact_edges(), splits, scratch, side=True, scratch_pending=True)
            self._side = self._start_side(n)
            try:
                csc = self._topology(scratch, n, splits)
            except BaseException:
                if self._side is not None:
                    self._cancel.set()
                    self._side.join()
                raise
        n = csc.num_nodes
        if self._side is not None:
            feature_dim, num_classes = self._side.result()
        else:
            feature_dim, num_classes = self._features(n), self._labels(n)
        if splits is None:
            splits = self._read_splits(n)
        self._check_split_labels(splits)
        self._splits(splits, n)
        if self.id_map is not None:
            with self._writing("node_ids.parquet" if self.id_map.is_string else "node_ids.npy"):
                key, entry = self.id_map.write(self.root)
            self.files[key] = entry
        with self._writing(MANIFEST_NAME):
            return self._manifest(fingerprint, csc, feature_dim, num_classes)

    def _start_side(self, n: int | None) -> _Side | None:
        """Copy features and labels in a thread while the topology builds, when N is known."""
        if n is None or self.spec.memory_budget < _SIDE_MIN_BUDGET:
            return None
        known = n
        return _Side(lambda: (self._features(known), self._labels(known)))

    # num_nodes --------------------------------------------------------------------------------
    def _known_num_nodes(self) -> int | None:
        spec = self.spec
        counts = self._per_node_counts()
        if self.id_map is not None:
            n = len(self.id_map)
            if spec.num_nodes is not None and spec.num_nodes != n:
                raise InputError(None, f"--num-nodes {spec.num_nodes} but the edges hold {n} distinct ids", expected="--num-nodes to match with --remap (or leave it out)")
            self.origin = _Origin(f"the {n} distinct ids of the edge list, --remap")
        elif spec.num_nodes is not None:
            n = spec.num_nodes
            self.origin = _Origin(f"--num-nodes {n}")
        elif counts:
            first, what = counts[0]
            n = int(first.num_rows or 0)
            self.origin = _Origin(f"the {n} {what} rows of {first.path}", first.path, what)
        else:
            return None
        # Every per-node file is held to N before anything else reads it, so a mismatch is blamed
        # on the two files, not on a split or an edge id checked against one of them.
        for src, what in counts:
            if src.num_rows != n:
                raise self._count_mismatch(src.path, int(src.num_rows or 0), what, n)
        self.num_nodes = n
        return n

    def _per_node(self) -> list[tuple[RowSource, str]]:
        pairs = ((self.inputs.features, "feature"), (self.inputs.labels, "label"))
        return [(src, what) for src, what in pairs if src is not None]

    def _per_node_counts(self) -> list[tuple[RowSource, str]]:
        """Per-node files whose row count is known without reading them; one without rows is refused."""
        out = []
        for src, what in self._per_node():
            if src.num_rows == 0:
                raise InputError(src.path, f"has no {what} rows", expected=f"one {what} row per node")
            if src.num_rows is not None:
                out.append((src, what))
        return out

    def _counts_known(self) -> bool:
        return all(src.num_rows is not None for src, _ in self._per_node())

    def _count_mismatch(self, path: Path, rows: int, what: str, n: int) -> InputError:
        o = self.origin
        if o.path is not None and o.path != path:
            return InputError(path, f"has {rows} {what} rows but {o.path} has {n} {o.what} rows",
                              expected="one row per node in both")
        return InputError(path, f"has {rows} {what} rows", expected=f"{n}, one per node ({o.text})")

    def _blame_counts(self, err: InputError) -> InputError:
        """An id beyond a node count taken from one per-node file: when the other per-node file
        (a CSV, counted now: a slow path after the failure) has another row count, the two files
        disagreeing is the real problem."""
        if self.origin.path is None or self.num_nodes is None:
            return err
        for src, what in self._per_node():
            if src.path != self.origin.path:
                rows = src.count_rows()
                if rows != self.num_nodes:
                    return self._count_mismatch(src.path, rows, what, self.num_nodes)
        return err

    # sparse ids ---------------------------------------------------------------------------------
    def _sparse_limit(self, edges: int) -> int:
        return max(_SPARSE_MIN_NODES, _SPARSE_NODES_PER_EDGE * edges)

    def _check_sparse(self, n: int, edges: int, where: tuple[Path | None, int | None, str] | None,
                      exact: bool = True) -> None:
        """Refuse a node count from the largest id that is far larger than the edges (and than any
        per-node file) call for: the ids are sparse, and the indptr would be mostly empty."""
        limit = self._sparse_limit(edges)
        if n <= limit or self._per_node_rows() >= n:
            return
        path, row, which = where if where is not None else self._locate_id(n - 1)
        count = f"{edges} edge rows" if exact else f"at most {edges} edge rows"
        raise InputError(
            path, f"{which} id {n - 1} would make {n} nodes for {count}: the ids look sparse", row=row,
            expected=f"at most {limit} nodes (64 per edge, at least {_SPARSE_MIN_NODES}) when the ids set the "
                     f"node count: pass --remap to renumber them, or --num-nodes {n} if the graph really has "
                     "that many nodes",
        )

    def _per_node_rows(self) -> int:
        # Only reached when the ids look sparse; a CSV per-node file is then counted (a slow path).
        return max((src.count_rows() for src, _ in self._per_node()), default=0)

    def _locate_id(self, value: int) -> tuple[Path | None, int | None, str]:
        """The first row holding ``value`` (a slow path: re-reads the edges)."""
        for chunk in self._raw_chunks(1 << 20):
            found = _where(chunk, edge_ids(chunk, "src"), edge_ids(chunk, "dst"), value)
            if found is not None:
                return found
        return None, None, "node"

    # disk space ---------------------------------------------------------------------------------
    def _exact_edges(self) -> int | None:
        rows = [s.exact_rows() for s in self.inputs.edges]
        return None if any(r is None for r in rows) else sum(int(r or 0) for r in rows)

    def _check_disk(self, n: int, edges: int | None, splits: _Splits | None, scratch: Path, *,
                    side: bool, scratch_pending: bool) -> None:
        """Refuse before writing when the output's (or --tmp-dir's) filesystem has less free space
        than what is still to be written (unknown sizes, like a CSV's edge count, count as 0 and
        are checked again once known)."""
        need = self._disk_need(n, edges, splits, side=side)
        spill = self._scratch_need(n, edges) if scratch_pending and edges is not None else 0
        if spill and _same_filesystem(scratch, self.root):
            need["scratch bucket files"] = spill
        elif spill:
            _refuse_if_short(scratch, {"scratch bucket files": spill}, f"--tmp-dir {self.spec.tmp_dir}",
                             "or pass another --tmp-dir")
        self.need = max(self.need, sum(need.values()))
        _refuse_if_short(self.root, need, f"{self.spec.output}", "or write the dataset elsewhere with -o")

    def _disk_need(self, n: int, edges: int | None, splits: _Splits | None, *, side: bool) -> dict[str, int]:
        # Python ints throughout: 8 * (N + 1) overflows int64 for ids near 2**63.
        fan = 2 if self.spec.undirected else 1
        need = {"indptr.npy": DATA_ALIGNMENT + 8 * (n + 1)}
        if edges is not None:
            need["indices.npy"] = DATA_ALIGNMENT + index_dtype(n).itemsize * fan * edges
        if side:
            need.update(self._per_node_need(n))
        need["split"] = self._split_need(n, splits)
        if self.id_map is not None:
            values = self.id_map.values
            size = int(values.nbytes) if self.id_map.is_string else 8 * len(values)
            need["node_ids"] = DATA_ALIGNMENT + size
        need[MANIFEST_NAME] = _MANIFEST_RESERVE
        return {k: v for k, v in need.items() if v}

    def _per_node_need(self, n: int) -> dict[str, int]:
        need = {}
        feats = self.inputs.features
        if feats is not None and feats.dim is not None:
            item = 4 if self.spec.feature_dtype == "float32" else 2
            need["features.npy"] = DATA_ALIGNMENT + n * feats.dim * item
        if self.inputs.labels is not None:
            need["labels.npy"] = DATA_ALIGNMENT + 8 * n
        return need

    def _split_need(self, n: int, splits: _Splits | None) -> int:
        if self.spec.split is not None:
            return 3 * DATA_ALIGNMENT + 8 * n
        if splits is not None:
            return sum(DATA_ALIGNMENT + 8 * len(ids) for _, ids in splits.values())
        return sum(DATA_ALIGNMENT + p.stat().st_size for p in self.inputs.split_files.values())

    def _scratch_need(self, n: int, edges: int) -> int:
        # Bucket records (dst, src) spill only once they outgrow half the budget.
        fan = 2 if self.spec.undirected else 1
        total = index_dtype(n).itemsize * 2 * fan * edges
        return total if total > self.spec.memory_budget // 2 else 0

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """A full disk while writing ``name`` (of the output) ends as a DiskSpaceError naming the
        file (the one the OSError names, when it names one) and the free space."""
        try:
            yield
        except OSError as e:
            if not _is_disk_full(e):
                raise
            shown = self._display(Path(e.filename)) if e.filename else self.spec.output / name
            raise self._disk_full_error(e, shown) from e

    def _display(self, path: Path) -> Path:
        try:
            return self.spec.output / path.relative_to(self.root)
        except ValueError:
            return path

    def _disk_full_error(self, e: OSError, shown: Path) -> DiskSpaceError:
        where = Path(e.filename).parent if e.filename else self.root
        total = f"; this run needs about {_size(self.need)} on the output's filesystem" if self.need else ""
        return DiskSpaceError(
            f"{shown}: no space left on the device while writing it ({_size(_free_bytes(where))} free "
            f"on its filesystem{total}); the partial output is removed (expected enough free space: free "
            "some, or write elsewhere with -o or --tmp-dir)"
        )

    # topology -----------------------------------------------------------------------------------
    def _raw_chunks(self, rows: int) -> Iterator[Any]:
        for source in self.inputs.edges:
            yield from source.chunks(rows)

    def _topology(self, scratch: Path, n: int | None, splits: _Splits | None) -> CscStats:
        t0 = time.perf_counter()
        spec = self.spec
        expected = sum(s.estimate_rows() or 0 for s in self.inputs.edges) or None
        bound = None if n is not None else self._id_bound()
        if bound is not None:  # Parquet statistics give the node count before any edge is read
            self._check_sparse(bound, self._exact_edges() or 0, None)
            self._check_disk(bound, self._exact_edges(), splits, scratch, side=True, scratch_pending=True)
        # Features copy alongside (I/O-bound) and keep an eighth of the budget for their blocks.
        budget = spec.memory_budget - (spec.memory_budget // 8 if self._side is not None else 0)
        builder = CscBuilder(scratch, num_nodes=n, memory_budget=budget, expected_edges=expected,
                             undirected=spec.undirected, drop_self_loops=spec.drop_self_loops, dedup=spec.dedup,
                             id_bound=bound)
        self.say(f"topology: partitioning edges (budget {format_size(spec.memory_budget)})")
        with self._writing(".scratch"), bar(expected, "partitioning edges", enabled=self.bars, unit="edge",
                                            scale=False, position=0) as shown:
            for src, dst, top in _prefetch(self._id_chunks(builder.chunk_edges, n, bound)):
                if self._side is not None:
                    self._side.raise_if_failed()  # bad features stop the run now, not after the sort
                builder.add(src, dst, top)
                shown.update(len(src))
        if builder.edges_in == 0:
            names = ", ".join(str(s.path) for s in self.inputs.edges)
            raise InputError(names, "the edge list is empty", expected="at least one edge")
        self._phase("partition", t0)
        t0 = time.perf_counter()
        final_n = n if n is not None else self._inferred_num_nodes(builder)
        self._check_disk(final_n, builder.edges_in, splits, scratch, side=self._side is None, scratch_pending=False)
        self.say(f"topology: sorting {builder.edges_in} edges into CSC")
        # Failed writes name their file (the CSC builder adds names os.write leaves out); the rest
        # is put down to the file whose block the failure happened in.
        with self._writing("indptr.npy"), \
                NpyWriter(self.root / "indptr.npy", np.int64, (final_n + 1,), root=self.root) as indptr:
            with self._writing("indices.npy"), \
                    NpyWriter(self.root / "indices.npy", index_dtype(final_n), (None,), root=self.root) as indices:
                with bar(None, "sorting into CSC", enabled=self.bars, unit="range") as shown:
                    csc = builder.finish(indptr, indices, on_range=shown.update)
                with self._writing("indptr.npy"):
                    self.files["indptr"] = indptr.close()
                self.files["indices"] = indices.close()
        self._phase("sort", t0)
        return csc

    def _inferred_num_nodes(self, builder: CscBuilder) -> int:
        n = builder.max_id + 1
        self._check_sparse(n, builder.edges_in, None)
        self.num_nodes = n
        return n

    def _id_bound(self) -> int | None:
        if self.id_map is not None:
            return None
        hints = [s.max_id_hint() for s in self.inputs.edges]
        return None if any(h is None for h in hints) else max(int(h) for h in hints if h is not None) + 1

    def _id_chunks(self, rows: int, n: int | None, bound: int | None) -> Iterator[tuple[np.ndarray, np.ndarray, int | None]]:
        seen = 0
        bounds = [s.max_rows() for s in self.inputs.edges]
        most = None if any(b is None for b in bounds) else sum(int(b or 0) for b in bounds)
        exact = most is not None and most == self._exact_edges()
        for chunk in self._raw_chunks(rows):
            if self.id_map is not None:
                src = self.id_map.lookup(chunk.src, path=chunk.path, first_row=chunk.first_row, what="src id")
                dst = self.id_map.lookup(chunk.dst, path=chunk.path, first_row=chunk.first_row, what="dst id")
                yield src, dst, None
                continue
            src, dst = edge_ids(chunk, "src"), edge_ids(chunk, "dst")
            try:
                top = max(check_id_range(chunk, "src", src, n, self.origin.text),
                          check_id_range(chunk, "dst", dst, n, self.origin.text))
            except IdRangeError as e:
                raise self._blame_counts(e) from None
            if n is None:
                seen += len(chunk)
                self._check_growing_ids(chunk, src, dst, top, max(seen, most or 0), bound, exact)
            yield src, dst, top

    def _check_growing_ids(self, chunk: EdgeChunk, src: np.ndarray, dst: np.ndarray, top: int, edges: int,
                           bound: int | None, exact: bool) -> None:
        """While N is unknown: stop at the first chunk whose ids are already too sparse for the
        most edges the files can hold, and at ids above what the Parquet statistics promised."""
        if bound is not None and top >= bound:
            path, row, which = _where(chunk, src, dst, top) or (chunk.path, None, "src")
            raise InputError(path, f"{which} id {top} is above the largest id ({bound - 1}) the Parquet "
                             "statistics of the edge files record", row=row,
                             expected="column statistics that match the data (rewrite the file)")
        if top + 1 > self._sparse_limit(edges):
            self._check_sparse(top + 1, edges, _where(chunk, src, dst, top), exact=exact)

    # features -----------------------------------------------------------------------------------
    def _features(self, n: int) -> int | None:
        src = self.inputs.features
        if src is None:
            return None
        t0 = time.perf_counter()
        if src.num_rows is not None and src.num_rows != n:
            raise self._count_mismatch(src.path, src.num_rows, "feature", n)
        self.say(f"features: copying {n} rows as {self.spec.feature_dtype}")
        with self._writing("features.npy"):
            dim = self._copy_features(src, n)
        self._phase("features", t0)
        return dim

    def _copy_features(self, src: RowSource, n: int) -> int:
        conv = _FeatureConverter(self.spec.feature_dtype, self.spec.nan_policy, src.path)
        storage = np.uint16 if self.spec.feature_dtype == "bfloat16" else np.dtype(self.spec.feature_dtype)
        rows = _feature_block_rows(self.spec.memory_budget, src.dim)
        writer: NpyWriter | None = None
        shown = bar(n, "copying features", enabled=self.bars, unit="row", position=1)
        try:
            for start, block in _prefetch(src.blocks(rows)):
                self._check_cancel()
                shown.update(len(block))
                if block.ndim == 1:  # one value per node (a one-column CSV, an [N] array): D = 1
                    block = block[:, None]
                if block.ndim != 2:
                    raise InputError(src.path, f"rows of shape {block.shape[1:]}", expected="a 2-D feature array [N, D]")
                if block.shape[1] == 0:
                    raise InputError(src.path, "feature rows have 0 values", expected="at least one feature per node")
                if writer is None:
                    writer = NpyWriter(self.root / "features.npy", storage, (n, block.shape[1]), root=self.root,
                                       logical_dtype=self.spec.feature_dtype)
                writer.write(conv(block, start))
            if writer is None:
                writer = NpyWriter(self.root / "features.npy", storage, (n, src.dim or 0), root=self.root,
                                   logical_dtype=self.spec.feature_dtype)
            if writer.rows != n:
                raise self._count_mismatch(src.path, writer.rows, "feature", n)
            self.files["features"] = writer.close()
        finally:
            shown.close()
            if writer is not None:
                writer.abort()
        self.stats["nonfinite_features_zeroed"] = conv.zeroed
        return writer.row_shape[0]

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise _Cancelled()

    # labels -------------------------------------------------------------------------------------
    def _labels(self, n: int) -> int | None:
        src = self.inputs.labels
        if src is None:
            return None
        t0 = time.perf_counter()
        if src.num_rows is not None and src.num_rows != n:
            raise self._count_mismatch(src.path, src.num_rows, "label", n)
        top = -1
        with self._writing("labels.npy"), NpyWriter(self.root / "labels.npy", np.int64, (None,), root=self.root) as w:
            for start, block in src.blocks(1 << 21):
                self._check_cancel()
                labels = _labels_block(src.path, block, start, n)
                top = max(top, int(labels.max()) if labels.size else -1)
                w.write(labels)
            if w.rows != n:
                raise self._count_mismatch(src.path, w.rows, "label", n)
            self.files["labels"] = w.close()
        self._phase("labels", t0)
        return top + 1

    # splits -------------------------------------------------------------------------------------
    def _read_splits(self, n: int) -> _Splits:
        out: _Splits = {}
        for name, path in self.inputs.split_files.items():
            raw, mask_rows = read_split_ids(path)
            if mask_rows is not None and mask_rows != n:
                raise InputError(path, f"is a boolean mask of {mask_rows} rows",
                                 expected=f"{n} rows, one per node ({self.origin.text})")
            if mask_rows is not None:
                self._mask_splits.add(name)
            if self.id_map is not None:
                ids = self.id_map.lookup(raw, path=path, first_row=0, what="split id")
            else:
                ids = raw
            out[name] = (path, ids)
        try:
            _check_splits(out, n, self.origin.text)
        except IdRangeError as e:
            raise self._blame_counts(e) from None
        return out

    def _check_split_labels(self, splits: _Splits) -> None:
        """Training takes its loss over a split's labels, so a split node labelled -1 (unknown)
        is refused now rather than crashing the loss later."""
        if "labels" not in self.files or self.spec.split is not None:
            return
        labels = np.load(self.root / "labels.npy", mmap_mode="r")
        step = 1 << 22
        for name, (path, ids) in splits.items():
            for start in range(0, len(ids), step):
                unknown = np.asarray(labels[ids[start : start + step]]) < 0
                if unknown.any():
                    i = start + int(np.argmax(unknown))
                    row = int(ids[i]) if name in self._mask_splits else i
                    raise InputError(
                        path, f"{name} node {self._original_id(int(ids[i]))} has no label (its label in "
                        f"{self.inputs.labels.path if self.inputs.labels else 'labels'} is -1, unknown)", row=row,
                        expected="labelled nodes only in a split: drop it from the split or give it a label",
                    )

    def _original_id(self, node: int) -> Any:
        if self.id_map is None:
            return node
        value = self.id_map.values[node]
        return value.as_py() if hasattr(value, "as_py") else int(value)

    def _splits(self, splits: _Splits, n: int) -> None:
        if self.spec.split is not None:
            splits = self._random_split(n)
        for name, (_, ids) in splits.items():
            with self._writing(f"split/{name}.npy"):
                self.files[f"split/{name}"] = self._write_split(name, np.sort(ids))

    def _write_split(self, name: str, ids: np.ndarray) -> FileEntry:
        (self.root / "split").mkdir(exist_ok=True)
        return write_array(self.root / "split" / f"{name}.npy", ids.astype(np.int64), root=self.root)

    def _random_split(self, n: int) -> _Splits:
        assert self.spec.split is not None
        candidates = self._labelled_nodes(n)
        perm = np.random.default_rng(self.spec.split_seed).permutation(candidates)
        m = len(perm)
        n_train = int(round(self.spec.split[0] * m))
        n_valid = min(m - n_train, int(round(self.spec.split[1] * m)))
        n_test = min(m - n_train - n_valid, int(round(self.spec.split[2] * m)))
        bounds = [0, n_train, n_train + n_valid, n_train + n_valid + n_test]
        return {name: (None, perm[bounds[i] : bounds[i + 1]]) for i, name in enumerate(SPLIT_NAMES)}

    def _labelled_nodes(self, n: int) -> np.ndarray:
        if "labels" not in self.files:
            return np.arange(n, dtype=np.int64)
        labels = np.load(self.root / "labels.npy", mmap_mode="r")
        parts = [start + np.flatnonzero(labels[start : start + (1 << 22)] >= 0) for start in range(0, n, 1 << 22)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # manifest -----------------------------------------------------------------------------------
    def _manifest(self, fingerprint: str, csc: CscStats, feature_dim: int | None, num_classes: int | None) -> Manifest:
        self.stats.update(
            edges_read=csc.edges_in, buckets=csc.buckets, scratch_bytes=csc.spilled_bytes, resplits=csc.resplits,
            phase_seconds=self.phases,
        )
        manifest = Manifest(
            num_nodes=csc.num_nodes,
            num_edges=csc.num_edges,
            feature_dim=feature_dim,
            feature_dtype=self.spec.feature_dtype if feature_dim is not None else None,
            num_classes=num_classes,
            index_dtype=str(index_dtype(csc.num_nodes)),
            id_map=None if self.id_map is None else ("node_ids.parquet" if self.id_map.is_string else "node_ids.npy"),
            files=self.files,
            fingerprint=fingerprint,
            inputs={role: [str(p) for p in paths] for role, paths in self.spec.input_paths().items()},
            options=self.spec.options(),
            stats=self.stats,
            created_by=f"gnn-ooc {gnn_ooc.__version__}",
        )
        write_bytes_entry(self.root / MANIFEST_NAME, self.root, manifest.to_json().encode())
        return manifest


# --- helpers ---------------------------------------------------------------------------------------
class _scratch:
    """Scratch space for bucket files: inside the staging folder, or a locked folder in --tmp-dir."""

    def __init__(self, spec: PreprocessSpec, root: Path) -> None:
        self.spec, self.root = spec, root
        self._locked: LockedDir | None = None

    def __enter__(self) -> Path:
        if self.spec.tmp_dir is None:
            path = self.root / ".scratch"
            path.mkdir()
            return path
        self.spec.tmp_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(self.spec.tmp_dir, "gnn-ooc-scratch-", "gnn-ooc preprocess")
        import uuid

        self._locked = LockedDir(self.spec.tmp_dir / f"gnn-ooc-scratch-{uuid.uuid4().hex[:12]}")
        return self._locked.path

    def __exit__(self, *exc: object) -> None:
        import shutil

        path = self._locked.path if self._locked else self.root / ".scratch"
        shutil.rmtree(path, ignore_errors=True)
        if self._locked:
            self._locked.release()


class _Cancelled(Exception):
    """The side work stops because the main build failed."""


class _Side:
    """Run ``fn`` in a thread; ``result`` re-raises its exception in the caller."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="gnn-ooc-features", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._result = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self._error = e

    def join(self) -> None:
        self._thread.join()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def result(self) -> Any:
        self._thread.join()
        self.raise_if_failed()
        return self._result


class _FeatureConverter:
    """float blocks to the stored dtype, with the non-finite policy applied."""

    def __init__(self, dtype: str, nan_policy: str, path: Path) -> None:
        self.dtype, self.nan_policy, self.path = dtype, nan_policy, path
        self.zeroed = 0

    def __call__(self, block: np.ndarray, start: int) -> np.ndarray:
        if block.dtype.kind not in "fiu":
            raise InputError(self.path, f"features of type {block.dtype}", expected="numeric features")
        with np.errstate(over="ignore"):  # float64 beyond float32's range: reported below, not warned
            x = np.asarray(block, dtype=np.float32)
        # A sum is finite only if every value is (NaN and inf propagate); only a non-finite sum
        # (a bad value, or an overflow of large ones) pays for the element-wise test.
        if not np.isfinite(x.sum(dtype=np.float64)):
            bad = ~np.isfinite(x)
            if bad.any():
                x = self._nonfinite(x, bad, block, start)
        if self.dtype == "float16":
            return self._to_float16(x, start)
        if self.dtype == "bfloat16":
            return _to_bfloat16_bits(x)
        return x

    def _nonfinite(self, x: np.ndarray, bad: np.ndarray, block: np.ndarray, start: int) -> np.ndarray:
        if self.nan_policy == "error":
            r, c = (int(i[0]) for i in np.nonzero(bad))
            if np.isfinite(block[r, c]):
                raise InputError(self.path, f"feature column {c} = {float(block[r, c])} overflows float32",
                                 expected="|values| <= 3.4e38", row=start + r)
            raise InputError(
                self.path, f"feature column {c} is {float(block[r, c])}",
                expected="finite features (or --nan-policy zero)", row=start + r,
            )
        self.zeroed += int(bad.sum())
        x = x if x is not block else x.copy()
        x[bad] = 0.0
        return x

    def _to_float16(self, x: np.ndarray, start: int) -> np.ndarray:
        h = x.astype(np.float16)
        if not np.isfinite(h).all():
            r, c = (int(i[0]) for i in np.nonzero(~np.isfinite(h)))
            raise InputError(self.path, f"feature column {c} = {float(x[r, c])} overflows float16", expected="|values| <= 65504 for --feature-dtype float16", row=start + r)
        return h


def _feature_block_rows(budget: int, dim: int | None) -> int:
    # 16 MiB blocks stream at disk speed; a small budget gets smaller blocks (a 32nd each:
    # a block read ahead, one converted, one being written, and their float32 copies).
    row_bytes = 4 * max(1, dim or 1)
    return max(1, min(16 << 20, budget // 32) // row_bytes)


def _to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    # Round to nearest even on the upper 16 bits of the float32 pattern.
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def _labels_block(path: Path, block: np.ndarray, start: int, n: int) -> np.ndarray:
    """One block of labels as int64, -1 for unknown; checked on the raw values, before the cast
    could wrap a huge float or uint64 into something that looks valid."""
    if block.ndim == 2 and block.shape[1] == 1:
        block = block[:, 0]
    if block.ndim != 1:
        raise InputError(path, f"labels of shape {block.shape}", expected="one integer label per node, shape [N]")
    nan = None
    if block.dtype.kind == "f":
        nan = np.isnan(block)
        bad = ~nan & (~np.isfinite(block) | (block != np.round(block)))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(path, f"label {float(block[i])} is not an integer", expected="integer class labels (NaN or -1 for unknown)", row=start + i)
    elif block.dtype.kind not in "iu":
        raise InputError(path, f"labels of type {block.dtype}", expected="integer class labels")
    if block.size:
        _check_label_range(path, block, start, n)
    labels = block.astype(np.int64) if nan is None else np.where(nan, -1, block).astype(np.int64)
    return labels


def _check_label_range(path: Path, block: np.ndarray, start: int, n: int) -> None:
    # A class id of at least N would mean more classes than nodes (a label of 1e9 is a typo or
    # another column, not 10**9 classes for the model's output layer).
    high = block >= n
    if high.any():
        i = int(np.argmax(high))
        label = int(block[i])
        raise InputError(path, f"label {label} would make {label + 1} classes for {n} nodes", row=start + i,
                         expected=f"class ids 0..C-1 with C at most the number of nodes ({n}): renumber the "
                                  "classes (-1 or NaN for unknown)")
    low = block < -1
    if low.any():
        i = int(np.argmax(low))
        raise InputError(path, f"label {int(block[i])} is negative", expected="labels >= 0, or -1 for unknown", row=start + i)


_Splits = dict[str, tuple[Path | None, np.ndarray]]


def _check_splits(splits: _Splits, n: int, origin: str) -> None:
    for name, (path, ids) in splits.items():
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            i = int(np.argmax((ids < 0) | (ids >= n)))
            raise IdRangeError(path, f"{name} id {int(ids[i])} is out of range", expected=f"node ids in [0, {n}) ({origin})", row=i)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = int(uniq[np.argmax(counts > 1)])
            raise InputError(path, f"{name} lists node {dup} more than once", expected="each node at most once per split")
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = np.intersect1d(splits[a][1], splits[b][1], assume_unique=True)
            if both.size:
                raise InputError(splits[b][0], f"node {int(both[0])} is in both {a} and {b}", expected="disjoint splits")


def _where(chunk: EdgeChunk, src: np.ndarray, dst: np.ndarray, value: int) -> tuple[Path, int, str] | None:
    """File, row and column of the first occurrence of id ``value`` in a chunk."""
    hit = (src == value) | (dst == value)
    if not hit.any():
        return None
    i = int(np.argmax(hit))
    return chunk.path, chunk.first_row + i, "src" if src[i] == value else "dst"


# --- disk space ------------------------------------------------------------------------------------
def _is_disk_full(e: OSError) -> bool:
    # pyarrow's writers raise OSError without an errno, naming the cause only in the text.
    return e.errno in _DISK_FULL or any(os.strerror(code) in str(e) for code in _DISK_FULL)


def _free_bytes(path: Path) -> int | None:
    """Free bytes (for unprivileged writers) on the filesystem of ``path`` or its nearest existing parent."""
    for p in (path, *path.parents):
        if p.exists():
            try:
                return int(shutil.disk_usage(p)[2])
            except OSError:
                return None
    return None


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return True


def _refuse_if_short(path: Path, need: dict[str, int], shown: str, elsewhere: str) -> None:
    total = sum(need.values())
    free = _free_bytes(path)
    if free is None or total <= free:
        return
    parts = ", ".join(f"{k} {_size(v)}" for k, v in sorted(need.items(), key=lambda kv: -kv[1]))
    raise DiskSpaceError(
        f"{shown}: not enough free disk space: needs about {_size(total)} ({total} B: {parts}) but its "
        f"filesystem has {_size(free)} ({free} B) free (expected at least {total} B free: free some space, {elsewhere})"
    )


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"


def _prefetch(it: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Run ``it`` one step ahead in a thread so reading overlaps with the consumer's work."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(("item", item))
            q.put(("end", None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(("error", e))

    thread = threading.Thread(target=produce, name="gnn-ooc-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
