"""The on-disk dataset's contract: format constants, the manifest and its file entries.

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
from dataclasses import dataclass, field
from typing import Any, Mapping

from gnn_ooc.errors import DatasetError

FORMAT_NAME = "gnn-ooc-dataset"
FORMAT_VERSION = 1
DATA_ALIGNMENT = 4096
MANIFEST_NAME = "manifest.json"
CHECKSUM_ALGORITHM = "crc32"
FEATURE_DTYPES = ("float32", "float16", "bfloat16")
SPLIT_NAMES = ("train", "valid", "test")
NAN_POLICIES = ("error", "zero")



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


