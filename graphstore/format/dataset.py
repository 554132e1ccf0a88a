"""Read a preprocessed dataset: memory-mapped arrays and metadata, without reading the data.

Example:
    >>> ds = Dataset.open("data/cora")                     # doctest: +SKIP
    >>> ds.num_nodes, ds.num_edges, ds.features.shape      # doctest: +SKIP
    (2708, 10556, (2708, 1433))
    >>> ds.in_neighbors(0)                                 # doctest: +SKIP
    memmap([ 633, 1862, 2582], dtype=int32)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gnn_ooc.errors import ChecksumError, DatasetError
from gnn_ooc.graphstore.format.base import (
    DATA_ALIGNMENT,
    MANIFEST_NAME,
    SPLIT_NAMES,
    FileEntry,
    Manifest,
)
from gnn_ooc.graphstore.format.npyfile import file_checksum


@dataclass(frozen=True)
class DegreeStats:
    """In-degree statistics of the CSC topology."""

    min: int
    max: int
    mean: float
    median: float
    p99: float
    isolated: int


class Dataset:
    """A preprocessed dataset folder; arrays are opened lazily as read-only memory maps."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Dataset:
        """Open ``path`` after checking the manifest and that every file has its recorded size."""
        root = Path(path)
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise DatasetError(f"{root}: no {MANIFEST_NAME}; not a gnn-ooc dataset (run gnn-ooc preprocess)")
        manifest = Manifest.from_json(mpath.read_text(), path=mpath)
        for entry in manifest.files.values():
            _check_size(root, entry)
        return cls(root, manifest)

    # --- metadata -------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.manifest.num_nodes

    @property
    def num_edges(self) -> int:
        return self.manifest.num_edges

    @property
    def feature_dim(self) -> int | None:
        return self.manifest.feature_dim

    @property
    def feature_dtype(self) -> str | None:
        return self.manifest.feature_dtype

    @property
    def num_classes(self) -> int | None:
        return self.manifest.num_classes

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    def has(self, key: str) -> bool:
        return key in self.manifest.files

    def identity(self) -> str:
        """A digest of every file's name, size and checksum: two datasets with the same identity
        hold the same bytes (a run records it and refuses to resume on another)."""
        import hashlib

        items = sorted(f"{k}:{e.name}:{e.size}:{e.checksum}" for k, e in self.manifest.files.items())
        return hashlib.sha256("\n".join([str(self.num_nodes), *items]).encode()).hexdigest()[:32]

    # --- arrays ---------------------------------------------------------------------------
    @functools.cached_property
    def indptr(self) -> np.ndarray:
        return self._load("indptr")

    @functools.cached_property
    def indices(self) -> np.ndarray:
        return self._load("indices")

    @functools.cached_property
    def features(self) -> np.ndarray:
        """Row-major [N, D]; bfloat16 features come as their uint16 bit patterns (see ``features_torch``)."""
        return self._load("features")

    @property
    def feature_row_bytes(self) -> int:
        """Bytes of one stored feature row (0 without features); bfloat16 counts as its 2-byte storage."""
        if not self.has("features"):
            return 0
        return int(self.features.dtype.itemsize * self.features.shape[1])

    def features_torch(self) -> Any:
        """The features as a (memory-mapped, read-only) torch tensor of the stored dtype."""
        import torch

        arr = self.features
        tensor = torch.from_numpy(arr) if arr.flags.writeable else _readonly_tensor(arr)
        return tensor.view(torch.bfloat16) if self.feature_dtype == "bfloat16" else tensor

    @functools.cached_property
    def labels(self) -> np.ndarray | None:
        return self._load("labels") if self.has("labels") else None

    @functools.cached_property
    def splits(self) -> dict[str, np.ndarray]:
        keys = [k for k in self.manifest.files if k.startswith("split/")]
        order = {name: i for i, name in enumerate(SPLIT_NAMES)}
        keys.sort(key=lambda k: (order.get(k[6:], len(order)), k))
        return {k[6:]: self._load(k) for k in keys}

    def split(self, name: str) -> np.ndarray:
        try:
            return self.splits[name]
        except KeyError:
            have = ", ".join(sorted(self.splits)) or "none"
            raise DatasetError(f"{self.path}: no split {name!r} (the dataset has: {have}); choose one of them "
                               "or preprocess with that split") from None

    @functools.cached_property
    def original_ids(self) -> Any:
        """Original id of each node (numpy for integer ids, a pyarrow array for strings), or None."""
        key = self.manifest.id_map
        if key is None:
            return None
        if key.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(self.path / self.manifest.files[key].name).column("id").combine_chunks()
        return self._load(key)

    def in_neighbors(self, node: int) -> np.ndarray:
        return self.indices[self.indptr[node] : self.indptr[node + 1]]

    def degree_stats(self, chunk: int = 1 << 22) -> DegreeStats:
        """In-degree statistics, reading ``indptr`` in chunks (a histogram, not a sort of N)."""
        return _degree_stats(self.indptr, chunk)

    # --- integrity ------------------------------------------------------------------------
    def verify(self, progress: Callable[[str], None] | None = None) -> list[str]:
        """Recompute every checksum; raises ``ChecksumError`` naming the first corrupt file."""
        checked = []
        for entry in self.manifest.files.values():
            _check_size(self.path, entry)
            actual = file_checksum(self.path / entry.name)
            if actual != entry.checksum:
                raise ChecksumError(
                    self.path / entry.name, f"checksum {actual} differs from the manifest's {entry.checksum}"
                )
            checked.append(entry.name)
            if progress:
                progress(entry.name)
        return checked

    def _load(self, key: str) -> np.ndarray:
        try:
            entry = self.manifest.files[key]
        except KeyError:
            raise DatasetError(f"{self.path}: the dataset has no {key}") from None
        path = self.path / entry.name
        arr = np.load(path, mmap_mode="r")
        if entry.shape is not None and tuple(arr.shape) != entry.shape:
            raise DatasetError(f"{path}: shape {arr.shape} differs from the manifest's {entry.shape}")
        if isinstance(arr, np.memmap) and arr.offset % DATA_ALIGNMENT:
            raise DatasetError(f"{path}: data does not start on a {DATA_ALIGNMENT}-byte boundary")
        if arr.ndim >= 1 and arr.shape[0] > 0 and hasattr(os, "posix_fadvise") and key == "features":
            _advise_random(arr)
        return arr

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, nodes={self.num_nodes}, edges={self.num_edges})"


def _check_size(root: Path, entry: FileEntry) -> None:
    check_file_size(root / entry.name, entry.size, "the manifest")


def check_file_size(path: Path, size: int, recorded_in: str) -> None:
    """Raise ``ChecksumError`` naming ``path`` when it is missing or not ``size`` bytes long."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise ChecksumError(path, "file is missing") from None
    if actual != size:
        raise ChecksumError(path, f"size {actual} B differs from {recorded_in}'s {size} B (truncated?)")


def _advise_random(arr: np.ndarray) -> None:
    # Feature rows are gathered at random; read-ahead would only pollute the page cache.
    import mmap

    base = getattr(arr, "_mmap", None)
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_RANDOM"):
        try:
            base.madvise(mmap.MADV_RANDOM)
        except OSError:
            pass


def _readonly_tensor(arr: np.ndarray) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch warns that the tensor is backed by read-only memory; callers must not write it.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _degree_stats(indptr: np.ndarray, chunk: int) -> DegreeStats:
    n = indptr.shape[0] - 1
    if n <= 0:
        return DegreeStats(0, 0, 0.0, 0.0, 0.0, 0)
    hist: dict[int, int] = {}
    lo, hi, isolated = np.iinfo(np.int64).max, 0, 0
    for start in range(0, n, chunk):
        deg = np.diff(np.asarray(indptr[start : min(n, start + chunk) + 1]))
        values, counts = np.unique(deg, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            hist[v] = hist.get(v, 0) + c
        lo, hi = min(lo, int(deg.min())), max(hi, int(deg.max()))
        isolated += int(np.count_nonzero(deg == 0))
    values = np.array(sorted(hist), dtype=np.int64)
    cum = np.cumsum([hist[v] for v in values.tolist()])
    total = int(indptr[-1] - indptr[0])

    def quantile(q: float) -> float:
        return float(values[int(np.searchsorted(cum, q * n, side="left"))])

    return DegreeStats(lo, hi, total / n, quantile(0.5), quantile(0.99), isolated)
