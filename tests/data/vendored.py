"""Compact, lossless copies of the real Cora and CiteSeer raw folders, and their way back.

``<name>.npz`` holds every array of ``../shared/datasets/<name>`` in a few kilobytes (see
README.md here); :func:`materialise` writes the raw layout back, array for array and, with the
numpy and pyarrow that made ``vendored.json``, byte for byte. ``vendored.json`` records the
originals' hashes so that a copy can be checked without the originals.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
NAMES = ("cora", "citeseer")
SPLITS = ("train", "valid", "test")
MANIFEST = HERE / "vendored.json"
#: the raw layout, relative to a dataset folder
ARRAY_FILES = ("node_features.npy", "node_labels.npy", *(f"split/{s}.npy" for s in SPLITS))
FILES = ("edges.parquet", *ARRAY_FILES)


def array_digest(a: np.ndarray) -> dict[str, Any]:
    """What makes two arrays the same: dtype, shape and the sha256 of the C-order bytes."""
    a = np.asarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape),
            "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every array of a raw folder, keyed by its file (``edges.parquet:src`` for a column)."""
    table = pq.read_table(root / "edges.parquet")
    out = {f"edges.parquet:{c}": table.column(c).to_numpy() for c in table.column_names}
    out.update({f: np.load(root / f, allow_pickle=False) for f in ARRAY_FILES})
    return out


def smallest_uint(a: np.ndarray) -> np.ndarray:
    top = int(a.max()) if a.size else 0
    for t in (np.uint8, np.uint16, np.uint32, np.uint64):
        if top <= np.iinfo(t).max:
            return a.astype(t)
    raise ValueError("negative or too large")


def smallest_int(a: np.ndarray) -> np.ndarray:
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for t in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    raise ValueError("out of int64")


def encode(root: Path) -> dict[str, np.ndarray]:
    """The arrays of ``<name>.npz`` for the raw folder ROOT (see README.md for the fields)."""
    table = pq.read_table(root / "edges.parquet")
    assert table.column_names == ["src", "dst"], table.schema
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    x = np.load(root / "node_features.npy", allow_pickle=False)
    labels = np.load(root / "node_labels.npy", allow_pickle=False)
    n = len(labels)
    enc: dict[str, np.ndarray] = {}
    # edges: src is sorted in the originals, so per-node counts say it; dst row by row, as listed
    if src.size and np.all(np.diff(src) >= 0) and src[0] >= 0 and src[-1] < n:
        enc["edge_src_counts"] = smallest_uint(np.bincount(src, minlength=n))
    else:
        enc["edge_src"] = smallest_int(src)
    enc["edge_dst"] = smallest_int(dst)
    # features: the positions of the non-zeros as gaps between row-major flat indices
    assert x.ndim == 2
    flat = np.flatnonzero(x)
    enc["feature_shape"] = np.array(x.shape, np.int64)
    enc["feature_dtype"] = np.array(x.dtype.str)
    enc["feature_gaps"] = smallest_uint(np.diff(flat, prepend=0))
    values = x.reshape(-1)[flat]
    rows = flat // x.shape[1]
    per_row = np.bincount(rows, minlength=x.shape[0])
    one = x.dtype.type(1)
    if np.array_equal(values, np.full_like(values, one)):
        enc["feature_values"] = np.array("ones")
    elif np.array_equal(values.view(np.uint8), (one / per_row[rows].astype(x.dtype)).view(np.uint8)):
        enc["feature_values"] = np.array("row_normalised")  # 1 / (non-zeros of the row), in x.dtype
    else:
        enc["feature_values"] = values  # not a bag of words after all: keep them as they are
    enc["labels"] = smallest_int(labels)
    enc["labels_dtype"] = np.array(labels.dtype.str)
    for s in SPLITS:
        ids = np.load(root / "split" / f"{s}.npy", allow_pickle=False)
        enc[f"split_{s}"] = smallest_int(ids)
        enc[f"split_{s}_dtype"] = np.array(ids.dtype.str)
    enc["edge_dtype"] = np.array(src.dtype.str)
    return enc


def decode(enc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of the raw folder, keyed like :func:`read_arrays`, from :func:`encode`'s."""
    edge_dtype = np.dtype(str(enc["edge_dtype"]))
    labels = enc["labels"].astype(np.dtype(str(enc["labels_dtype"])))
    n = len(labels)
    if "edge_src_counts" in enc:
        src = np.repeat(np.arange(n, dtype=edge_dtype), enc["edge_src_counts"].astype(np.int64))
    else:
        src = enc["edge_src"].astype(edge_dtype)
    shape = tuple(int(v) for v in enc["feature_shape"])
    dtype = np.dtype(str(enc["feature_dtype"]))
    flat = np.cumsum(enc["feature_gaps"], dtype=np.int64)
    x = np.zeros(shape, dtype)
    values = enc["feature_values"]
    if values.dtype.kind == "U":
        if str(values) == "ones":
            values = np.ones(flat.size, dtype)
        elif str(values) == "row_normalised":
            rows = flat // shape[1]
            values = dtype.type(1) / np.bincount(rows, minlength=shape[0]).astype(dtype)[rows]
        else:
            raise ValueError(f"unknown feature_values {values}")
    x.reshape(-1)[flat] = values
    out = {"edges.parquet:src": src, "edges.parquet:dst": enc["edge_dst"].astype(edge_dtype),
           "node_features.npy": x, "node_labels.npy": labels}
    for s in SPLITS:
        out[f"split/{s}.npy"] = enc[f"split_{s}"].astype(np.dtype(str(enc[f"split_{s}_dtype"])))
    return out


def npz_bytes(enc: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz that ``np.load`` reads, written the same way every time (fixed dates)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key in sorted(enc):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(enc[key]), allow_pickle=False)
            z.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def load(name: str) -> dict[str, np.ndarray]:
    """The vendored arrays of NAME; a missing file is an error, never a skip."""
    path = HERE / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"vendored dataset {path} is missing (tests/data/make_vendored.py "
                                "regenerates it from ../shared/datasets)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def write_raw_arrays(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    """The raw layout as the originals have it: one row group, pyarrow's default writer settings."""
    (root / "split").mkdir(parents=True, exist_ok=True)
    table = pa.table({"src": arrays["edges.parquet:src"], "dst": arrays["edges.parquet:dst"]})
    pq.write_table(table, root / "edges.parquet")
    for f in ARRAY_FILES:
        np.save(root / f, arrays[f])
    return root


def materialise(name: str, root: Path) -> Path:
    """Write the raw folder of NAME (edges.parquet, node_features.npy, ...) under ROOT."""
    return write_raw_arrays(root, decode(load(name)))
