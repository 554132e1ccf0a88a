"""Contracts of the on-disk dataset: format constants, errors, the manifest and the preprocess spec.

The dataset is a folder::

    DATASET/manifest.json          format name and version, counts, dtypes, shapes, files, fingerprint
    DATASET/indptr.npy             int64 [N+1]   CSC: in-edges of node v are indices[indptr[v]:indptr[v+1]]
    DATASET/indices.npy            int32 [E] (int64 when N >= 2**31), sorted within each node
    DATASET/features.npy           float32 | float16 | bfloat16 (stored as uint16 bits) [N, D]
    DATASET/labels.npy             int64 [N], -1 where unknown                      (optional)
    DATASET/split/<name>.npy       int64 node ids, sorted                           (optional)
    DATASET/node_ids.npy|.parquet  original id of each node when ids were remapped (optional)

Every ``.npy`` has its data on a 4 KiB boundary so O_DIRECT readers can read rows in place.

Example:
    >>> m = Manifest.from_json(Manifest(num_nodes=3, num_edges=2).to_json())
    >>> m.num_nodes
    3
"""

from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FORMAT_NAME = "gnn-ooc-dataset"
FORMAT_VERSION = 1
DATA_ALIGNMENT = 4096
MANIFEST_NAME = "manifest.json"
CHECKSUM_ALGORITHM = "crc32"
FEATURE_DTYPES = ("float32", "float16", "bfloat16")
SPLIT_NAMES = ("train", "valid", "test")
NAN_POLICIES = ("error", "zero")


class GnnOocError(Exception):
    """Base class of every error gnn-ooc raises on purpose; ``exit_code`` is the command line's:
    1 for bad or damaged data, 2 for bad flags or settings (the subclasses that are say so)."""

    exit_code = 1


class InputError(GnnOocError, ValueError):
    """A raw input is unusable; the message names the file, the row or id, and what was expected.

    Example:
        >>> str(InputError("edges.csv", "src id -3 is negative", expected="ids >= 0", row=17))
        'edges.csv: row 17: src id -3 is negative (expected ids >= 0)'
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        problem: str,
        *,
        expected: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.expected = expected
        self.row = row
        parts = [p for p in (self.path, None if row is None else f"row {row}", problem) if p]
        text = ": ".join(parts)
        super().__init__(text if expected is None else f"{text} (expected {expected})")


class DatasetError(GnnOocError):
    """A dataset folder is missing, of an unsupported version, or corrupt."""


class ChecksumError(DatasetError):
    """A dataset file's size or checksum differs from its manifest entry."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


class MemoryBudgetError(GnnOocError):
    """The work cannot be done within the memory budget it was given."""

    exit_code = 2


class OutputError(GnnOocError):
    """An output path gnn-ooc refuses to write: a folder it did not create, or one inside or
    above an input (the message names the path and what to do)."""

    exit_code = 2


class DiskSpaceError(GnnOocError):
    """The output's filesystem has less free space than the work needs (checked before writing,
    or hit while writing)."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset, relative to the dataset folder."""

    name: str
    size: int
    checksum: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> FileEntry:
        shape = d.get("shape")
        return FileEntry(
            name=str(d["name"]),
            size=int(d["size"]),
            checksum=str(d["checksum"]),
            dtype=d.get("dtype"),
            shape=None if shape is None else tuple(int(s) for s in shape),
        )


@dataclass(frozen=True)
class Manifest:
    """The versioned description of a dataset folder (``manifest.json``)."""

    num_nodes: int
    num_edges: int
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    feature_dim: int | None = None
    feature_dtype: str | None = None
    num_classes: int | None = None
    index_dtype: str = "int32"
    id_map: str | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)
    checksum_algorithm: str = CHECKSUM_ALGORITHM
    fingerprint: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["files"] = {k: dataclasses.asdict(v) for k, v in self.files.items()}
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str, *, path: str | os.PathLike[str] = MANIFEST_NAME) -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise DatasetError(f"{path}: not a {FORMAT_NAME} manifest")
        if d.get("version") != FORMAT_VERSION:
            raise DatasetError(
                f"{path}: format version {d.get('version')} is not supported "
                f"(this gnn-ooc reads version {FORMAT_VERSION}); re-run gnn-ooc preprocess"
            )
        names = {f.name for f in dataclasses.fields(Manifest)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["files"] = {k: FileEntry.from_dict(v) for k, v in d.get("files", {}).items()}
        return Manifest(**kwargs)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything ``gnn-ooc preprocess`` needs; the defaults here are the only defaults.

    Example:
        >>> spec = PreprocessSpec(output=Path("out"), edges=(Path("edges.parquet"),))
        >>> spec.memory_budget > 0
        True
    """

    output: Path
    edges: tuple[Path, ...]
    src_col: str = "src"
    dst_col: str = "dst"
    features: Path | None = None
    feature_col: str | None = None
    labels: Path | None = None
    split_dir: Path | None = None
    split: tuple[float, float, float] | None = None
    split_seed: int = 0
    undirected: bool = False
    drop_self_loops: bool = False
    dedup: bool = False
    remap: bool = False
    feature_dtype: str = "float32"
    num_nodes: int | None = None
    nan_policy: str = "error"
    memory_budget: int = 1 << 30
    tmp_dir: Path | None = None
    force: bool = False
    threads: int | None = None
    #: the raw-layout (or OGB) folder the inputs were found in: an output may not lie inside it
    source_dir: Path | None = None

    def options(self) -> dict[str, Any]:
        """The settings that shape the output (part of the fingerprint)."""
        keys = (
            "src_col dst_col feature_col split split_seed undirected drop_self_loops dedup "
            "remap feature_dtype num_nodes nan_policy"
        ).split()
        return {k: getattr(self, k) for k in keys}

    def input_paths(self) -> dict[str, list[Path]]:
        """Input files by role, for fingerprints and error messages."""
        out: dict[str, list[Path]] = {"edges": list(self.edges)}
        for role in ("features", "labels", "split_dir"):
            p = getattr(self, role)
            if p is not None:
                out[role] = [p]
        return out


# --- feature stores --------------------------------------------------------------------------------
@dataclass
class StoreStats:
    """What a store served: rows and bytes per tier, bytes read from disk, read amplification.

    Example:
        >>> s = StoreStats(row_bytes=512)
        >>> s.add_hits("disk", 10); s.disk_bytes_read = 40960
        >>> s.read_amplification
        8.0
    """

    row_bytes: int = 0
    rows: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    disk_rows: int = 0
    disk_bytes_read: int = 0
    disk_reads: int = 0

    def add_hits(self, tier: str, rows: int, *, from_disk: bool | None = None) -> None:
        self.hits[tier] = self.hits.get(tier, 0) + int(rows)
        self.rows += int(rows)
        if from_disk if from_disk is not None else tier == "disk":
            self.disk_rows += int(rows)

    @property
    def bytes_served(self) -> int:
        return self.rows * self.row_bytes

    @property
    def read_amplification(self) -> float:
        """Bytes read from disk / bytes of the rows served from disk (1.0 is ideal; 0 when none)."""
        served = self.disk_rows * self.row_bytes
        return self.disk_bytes_read / served if served else 0.0

    def hit_rates(self) -> dict[str, float]:
        return {k: v / self.rows for k, v in self.hits.items()} if self.rows else {}

    def disk_counters(self) -> tuple[int, int, int]:
        """(disk rows, disk bytes, disk reads) now: pass it to ``add_disk_since`` after a delegation."""
        return self.disk_rows, self.disk_bytes_read, self.disk_reads

    def add_disk_since(self, backing: StoreStats, before: tuple[int, int, int]) -> None:
        """Count the disk rows, bytes and reads ``backing`` made since ``before`` as this store's
        (a cache's misses go to its backing store; the reads are the cache's to report)."""
        rows, nbytes, reads = backing.disk_counters()
        self.disk_rows += rows - before[0]
        self.disk_bytes_read += nbytes - before[1]
        self.disk_reads += reads - before[2]

    def merge(self, other: StoreStats) -> None:
        self.rows += other.rows
        self.disk_rows += other.disk_rows
        self.disk_bytes_read += other.disk_bytes_read
        self.disk_reads += other.disk_reads
        for k, v in other.hits.items():
            self.hits[k] = self.hits.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "bytes_served": self.bytes_served, "hits": dict(self.hits),
                "hit_rates": self.hit_rates(), "disk_rows": self.disk_rows,
                "disk_bytes_read": self.disk_bytes_read, "disk_reads": self.disk_reads,
                "read_amplification": self.read_amplification}


class FeatureStore(ABC):
    """Rows of an [N, D] feature matrix gathered by global id into a (preallocated) output tensor.

    ``gather`` checks the ids and the output, then calls the one hook ``_gather(ids, out)`` with
    a CPU int64 tensor of ids in range and an output of the right shape, dtype and device.
    Subclasses set ``tier`` (the name hits are counted under) and may override ``close``.

    Example:
        >>> import torch
        >>> from gnn_ooc.graphstore.stores import MemoryStore
        >>> store = MemoryStore(torch.arange(12.0).reshape(6, 2))
        >>> store.gather(torch.tensor([4, 1])).tolist()
        [[8.0, 9.0], [2.0, 3.0]]
    """

    tier: str = "store"
    #: Stores made of tiers count their hits per tier themselves; ``gather`` then counts none.
    counts_own_hits: bool = False

    def __init__(self, num_rows: int, dim: int, dtype: Any, device: Any = "cpu") -> None:
        import torch

        self.num_rows, self.dim, self.dtype = int(num_rows), int(dim), dtype
        self.device = torch.device(device)
        self.row_bytes = self.dim * torch.empty(0, dtype=dtype).element_size()
        self.stats = StoreStats(row_bytes=self.row_bytes)

    def gather(self, ids: Any, out: Any = None, *, device: Any = None) -> Any:
        """Rows ``ids`` (any 1-D integer sequence) into ``out`` ([len(ids), D], this dtype) or a new tensor."""
        idx = self._ids(ids)
        out = self._out(idx.shape[0], out, device)
        if idx.shape[0]:
            self._gather(idx, out)
        if not self.counts_own_hits:
            self.stats.add_hits(self.tier, idx.shape[0])
        return out

    def gather_at(self, ids: Any, out: Any, at: Any) -> Any:
        """Rows ``ids`` into rows ``at`` of ``out`` (``out[at[i]] = row ids[i]``): a batch's rows from
        this store placed among rows that came from elsewhere, without a second copy."""
        import torch

        idx = self._ids(ids)
        pos = torch.as_tensor(at, dtype=torch.int64).reshape(-1)
        if pos.shape[0] != idx.shape[0]:
            raise InputError(None, f"{idx.shape[0]} ids for {pos.shape[0]} output rows", expected="as many of each")
        if out.dim() != 2 or out.shape[1] != self.dim or out.dtype != self.dtype:
            raise InputError(None, f"output is {out.dtype}{tuple(out.shape)}", expected=f"{self.dtype}[*, {self.dim}]")
        if idx.shape[0]:
            self._gather_at(idx, out, pos)
        if not self.counts_own_hits:
            self.stats.add_hits(self.tier, idx.shape[0])
        return out

    @abstractmethod
    def _gather(self, ids: Any, out: Any) -> None:
        """Fill ``out`` ([len(ids), D], this store's dtype and device) with rows ``ids`` (CPU int64, in range)."""

    def _gather_at(self, ids: Any, out: Any, at: Any) -> None:
        """``gather_at``'s hook; by default a gather then a scatter (stores that can place rows
        directly override it)."""
        from gnn_ooc.graphstore.rowops import put_rows

        rows = self._out(ids.shape[0], None, out.device)
        self._gather(ids, rows)
        put_rows(out, at, rows)

    def _ids(self, ids: Any) -> Any:
        import torch

        idx = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        if idx.dim() != 1 or (idx.numel() and (idx.dtype.is_floating_point or idx.dtype == torch.bool)):
            raise InputError(None, f"ids must be a 1-D integer sequence, got {idx.dtype}{tuple(idx.shape)}")
        idx = idx.to("cpu", torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_rows):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise InputError(None, f"row id {bad} is out of range", expected=f"0 <= id < {self.num_rows}")
        return idx

    def _out(self, n: int, out: Any, device: Any) -> Any:
        import torch

        if out is None:
            return torch.empty((n, self.dim), dtype=self.dtype, device=device or self.device)
        if tuple(out.shape) != (n, self.dim) or out.dtype != self.dtype:
            raise InputError(None, f"output is {out.dtype}{tuple(out.shape)}",
                             expected=f"{self.dtype}{(n, self.dim)}")
        return out

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release files and buffers (a no-op for stores that hold none)."""

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
