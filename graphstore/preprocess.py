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

import hashlib
import json
import queue
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

import gnn_ooc
from gnn_ooc.graphstore.arrays import RowSource, find_split_files, open_rows, read_split
from gnn_ooc.graphstore.atomic import LockedDir, Staging, remove_stale
from gnn_ooc.graphstore.base import (
    FEATURE_DTYPES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    NAN_POLICIES,
    SPLIT_NAMES,
    DatasetError,
    FileEntry,
    InputError,
    Manifest,
    PreprocessSpec,
)
from gnn_ooc.graphstore.csc import CscBuilder, CscStats, index_dtype
from gnn_ooc.graphstore.dataset import Dataset
from gnn_ooc.graphstore.npyfile import NpyWriter, write_array, write_bytes_entry
from gnn_ooc.graphstore.remap import IdMap
from gnn_ooc.graphstore.sources import EdgeSource, check_id_range, edge_ids, open_edge_sources

Progress = Callable[[str], None]
_SIDE_MIN_BUDGET = 16 << 20
T = TypeVar("T")


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


def preprocess(spec: PreprocessSpec, progress: Progress | None = None) -> PreprocessResult:
    """Build (or find up to date) the dataset that ``spec`` describes."""
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    _check_spec(spec)
    inputs = _open_inputs(spec)
    fingerprint = input_fingerprint(spec)
    current = _up_to_date(spec.output, fingerprint)
    if current is not None and not spec.force:
        say(f"{spec.output} is up to date (inputs unchanged); nothing to do (use --force to rebuild)")
        return PreprocessResult(spec.output, current, True, time.perf_counter() - t0)
    _set_threads(spec.threads)
    with Staging(spec.output) as staging:
        build = _Build(spec, inputs, staging.path, say)
        manifest = build.run(fingerprint)
        staging.publish()
    say(f"wrote {spec.output}")
    return PreprocessResult(spec.output, manifest, False, time.perf_counter() - t0, build.phases)


# --- checks before any work --------------------------------------------------------------------
def _check_spec(spec: PreprocessSpec) -> None:
    if spec.feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"--feature-dtype {spec.feature_dtype!r}: expected one of {FEATURE_DTYPES}")
    if spec.nan_policy not in NAN_POLICIES:
        raise ValueError(f"--nan-policy {spec.nan_policy!r}: expected one of {NAN_POLICIES}")
    if spec.split is not None:
        if len(spec.split) != 3 or min(spec.split) < 0 or sum(spec.split) > 1 + 1e-9:
            raise ValueError(f"--split {spec.split}: expected three fractions >= 0 summing to at most 1")
        if spec.split_dir is not None:
            raise ValueError("--split and --split-dir exclude each other")
    if spec.num_nodes is not None and spec.num_nodes < 0:
        raise ValueError(f"--num-nodes {spec.num_nodes}: expected a count >= 0")
    if not spec.edges:
        raise ValueError("no edge input given (--edges)")


def _open_inputs(spec: PreprocessSpec) -> _Inputs:
    return _Inputs(
        edges=open_edge_sources(spec.edges, spec.src_col, spec.dst_col),
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
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        f.seek(max(0, st.st_size - (1 << 16)))
        tail = f.read(1 << 16)
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sample_crc": zlib.crc32(tail, zlib.crc32(head)),
    }


def _up_to_date(output: Path, fingerprint: str) -> Manifest | None:
    if not (output / MANIFEST_NAME).is_file():
        return None
    try:
        ds = Dataset.open(output)
    except DatasetError:
        return None
    return ds.manifest if ds.manifest.fingerprint == fingerprint else None


# --- the build -----------------------------------------------------------------------------------
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
        self._cancel = threading.Event()
        self._side: _Side | None = None

    def _phase(self, name: str, t0: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - t0, 4)

    def run(self, fingerprint: str) -> Manifest:
        spec = self.spec
        with _scratch(spec, self.root) as scratch:
            if spec.remap:
                t0 = time.perf_counter()
                self.say("remap: collecting distinct ids")
                self.id_map = IdMap.from_edges(self._raw_chunks(1 << 20), spec.memory_budget)
                self._phase("remap", t0)
            n = self._known_num_nodes()
            splits = self._read_splits(n) if n is not None else None
            self._side = self._start_side(n)
            try:
                csc = self._topology(scratch, n)
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
        self._splits(splits, n)
        if self.id_map is not None:
            key, entry = self.id_map.write(self.root)
            self.files[key] = entry
        return self._manifest(fingerprint, csc, feature_dim, num_classes)

    def _start_side(self, n: int | None) -> _Side | None:
        """Copy features and labels in a thread while the topology builds, when N is known."""
        if n is None or self.spec.memory_budget < _SIDE_MIN_BUDGET:
            return None
        known = n
        return _Side(lambda: (self._features(known), self._labels(known)))

    # num_nodes --------------------------------------------------------------------------------
    def _known_num_nodes(self) -> int | None:
        spec, inp = self.spec, self.inputs
        if self.id_map is not None:
            n = len(self.id_map)
            if spec.num_nodes is not None and spec.num_nodes != n:
                raise InputError(None, f"--num-nodes {spec.num_nodes} but the edges hold {n} distinct ids", expected="--num-nodes to match with --remap (or leave it out)")
            return n
        if spec.num_nodes is not None:
            return spec.num_nodes
        for src in (inp.features, inp.labels):
            if src is not None and src.num_rows is not None:
                return src.num_rows
        return None

    # topology -----------------------------------------------------------------------------------
    def _raw_chunks(self, rows: int) -> Iterator[Any]:
        for source in self.inputs.edges:
            yield from source.chunks(rows)

    def _topology(self, scratch: Path, n: int | None) -> CscStats:
        t0 = time.perf_counter()
        spec = self.spec
        expected = sum(s.estimate_rows() or 0 for s in self.inputs.edges) or None
        # Features copy alongside (I/O-bound) and keep an eighth of the budget for their blocks.
        budget = spec.memory_budget - (spec.memory_budget // 8 if self._side is not None else 0)
        builder = CscBuilder(scratch, num_nodes=n, memory_budget=budget, expected_edges=expected,
                             undirected=spec.undirected, drop_self_loops=spec.drop_self_loops, dedup=spec.dedup,
                             id_bound=None if n is not None else self._id_bound())
        self.say(f"topology: partitioning edges (budget {spec.memory_budget} B)")
        for src, dst, top in _prefetch(self._id_chunks(builder.chunk_edges, n)):
            if self._side is not None:
                self._side.raise_if_failed()  # bad features stop the run now, not after the sort
            builder.add(src, dst, top)
        if builder.edges_in == 0:
            names = ", ".join(str(s.path) for s in self.inputs.edges)
            raise InputError(names, "the edge list is empty", expected="at least one edge")
        self._phase("partition", t0)
        t0 = time.perf_counter()
        final_n = n if n is not None else builder.max_id + 1
        self.say(f"topology: sorting {builder.edges_in} edges into CSC")
        with NpyWriter(self.root / "indptr.npy", np.int64, (final_n + 1,), root=self.root) as indptr, \
                NpyWriter(self.root / "indices.npy", index_dtype(final_n), (None,), root=self.root) as indices:
            csc = builder.finish(indptr, indices)
        self.files["indptr"], self.files["indices"] = indptr.close(), indices.close()
        self._phase("sort", t0)
        return csc

    def _id_bound(self) -> int | None:
        if self.id_map is not None:
            return None
        hints = [s.max_id_hint() for s in self.inputs.edges]
        return None if any(h is None for h in hints) else max(int(h) for h in hints if h is not None) + 1

    def _id_chunks(self, rows: int, n: int | None) -> Iterator[tuple[np.ndarray, np.ndarray, int | None]]:
        for chunk in self._raw_chunks(rows):
            if self.id_map is not None:
                src = self.id_map.lookup(chunk.src, path=chunk.path, first_row=chunk.first_row, what="src id")
                dst = self.id_map.lookup(chunk.dst, path=chunk.path, first_row=chunk.first_row, what="dst id")
                yield src, dst, None
            else:
                src, dst = edge_ids(chunk, "src"), edge_ids(chunk, "dst")
                top = max(check_id_range(chunk, "src", src, n), check_id_range(chunk, "dst", dst, n))
                yield src, dst, top

    # features -----------------------------------------------------------------------------------
    def _features(self, n: int) -> int | None:
        src = self.inputs.features
        if src is None:
            return None
        t0 = time.perf_counter()
        _check_rows(src, n, "feature")
        self.say(f"features: copying {n} rows as {self.spec.feature_dtype}")
        conv = _FeatureConverter(self.spec.feature_dtype, self.spec.nan_policy, src.path)
        storage = np.uint16 if self.spec.feature_dtype == "bfloat16" else np.dtype(self.spec.feature_dtype)
        rows = _feature_block_rows(self.spec.memory_budget, src.dim)
        writer: NpyWriter | None = None
        try:
            for start, block in _prefetch(src.blocks(rows)):
                self._check_cancel()
                if block.ndim != 2:
                    raise InputError(src.path, f"rows of shape {block.shape[1:]}", expected="a 2-D feature array [N, D]")
                if writer is None:
                    writer = NpyWriter(self.root / "features.npy", storage, (n, block.shape[1]), root=self.root,
                                       logical_dtype=self.spec.feature_dtype)
                writer.write(conv(block, start))
            if writer is None:
                writer = NpyWriter(self.root / "features.npy", storage, (n, src.dim or 0), root=self.root,
                                   logical_dtype=self.spec.feature_dtype)
            if writer.rows != n:
                raise _row_count_error(src.path, writer.rows, n, "feature")
            self.files["features"] = writer.close()
        finally:
            if writer is not None:
                writer.abort()
        self.stats["nonfinite_features_zeroed"] = conv.zeroed
        self._phase("features", t0)
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
        _check_rows(src, n, "label")
        top = -1
        with NpyWriter(self.root / "labels.npy", np.int64, (None,), root=self.root) as w:
            for start, block in src.blocks(1 << 21):
                self._check_cancel()
                labels = _labels_block(src.path, block, start)
                top = max(top, int(labels.max()) if labels.size else -1)
                w.write(labels)
            if w.rows != n:
                raise _row_count_error(src.path, w.rows, n, "label")
        self.files["labels"] = w.close()
        self._phase("labels", t0)
        return top + 1

    # splits -------------------------------------------------------------------------------------
    def _read_splits(self, n: int) -> dict[str, tuple[Path | None, np.ndarray]]:
        out: dict[str, tuple[Path | None, np.ndarray]] = {}
        for name, path in self.inputs.split_files.items():
            if self.id_map is not None:
                raw = read_split(path)
                ids = self.id_map.lookup(raw, path=path, first_row=0, what="split id")
            else:
                ids = read_split(path)
            out[name] = (path, ids)
        _check_splits(out, n)
        return out

    def _splits(self, splits: dict[str, tuple[Path | None, np.ndarray]], n: int) -> None:
        if self.spec.split is not None:
            splits = self._random_split(n)
        for name, (_, ids) in splits.items():
            self.files[f"split/{name}"] = self._write_split(name, np.sort(ids))

    def _write_split(self, name: str, ids: np.ndarray) -> FileEntry:
        (self.root / "split").mkdir(exist_ok=True)
        return write_array(self.root / "split" / f"{name}.npy", ids.astype(np.int64), root=self.root)

    def _random_split(self, n: int) -> dict[str, tuple[Path | None, np.ndarray]]:
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


def _labels_block(path: Path, block: np.ndarray, start: int) -> np.ndarray:
    if block.ndim == 2 and block.shape[1] == 1:
        block = block[:, 0]
    if block.ndim != 1:
        raise InputError(path, f"labels of shape {block.shape}", expected="one integer label per node, shape [N]")
    if block.dtype.kind == "f":
        nan = np.isnan(block)
        frac = ~nan & (block != np.round(block))
        if frac.any():
            i = int(np.argmax(frac))
            raise InputError(path, f"label {float(block[i])} is not an integer", expected="integer class labels (NaN or -1 for unknown)", row=start + i)
        block = np.where(nan, -1, block)
    elif block.dtype.kind not in "iu":
        raise InputError(path, f"labels of type {block.dtype}", expected="integer class labels")
    labels = block.astype(np.int64)
    if labels.size and labels.min() < -1:
        i = int(np.argmax(labels < -1))
        raise InputError(path, f"label {int(labels[i])} is negative", expected="labels >= 0, or -1 for unknown", row=start + i)
    return labels


def _check_rows(src: RowSource, n: int, what: str) -> None:
    if src.num_rows is not None and src.num_rows != n:
        raise _row_count_error(src.path, src.num_rows, n, what)


def _row_count_error(path: Path, rows: int, n: int, what: str) -> InputError:
    return InputError(path, f"has {rows} {what} rows", expected=f"{n}, one per node (the number of nodes)")


def _check_splits(splits: dict[str, tuple[Path | None, np.ndarray]], n: int) -> None:
    for name, (path, ids) in splits.items():
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            i = int(np.argmax((ids < 0) | (ids >= n)))
            raise InputError(path, f"{name} id {int(ids[i])} is out of range", expected=f"node ids in [0, {n})", row=i)
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
