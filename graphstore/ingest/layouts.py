"""Known raw-folder layouts resolved to explicit input paths.

* the gnn-ooc raw layout (what ``gnn-ooc synth`` writes, and ../shared/datasets):
  ``edges.parquet``, ``node_features.npy``, ``node_labels.npy``, ``split/{train,valid,test}.npy``;
* an OGB node-property folder: ``raw/edge.csv.gz``, ``raw/node-feat.csv.gz``,
  ``raw/node-label.csv.gz``, ``raw/num-node-list.csv.gz``, ``split/<name>/{train,valid,test}.csv.gz``.

Example:
    >>> raw_layout("../shared/datasets/cora")["edges"]        # doctest: +SKIP
    [PosixPath('../shared/datasets/cora/edges.parquet')]
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

from gnn_ooc.errors import InputError

_EDGE_NAMES = ("edges.parquet", "edges", "edges.csv", "edges.tsv", "edges.csv.gz", "edges.npy")
_FEATURE_NAMES = ("node_features.npy", "node_features.parquet", "features.npy", "node_features.csv.gz")
_LABEL_NAMES = ("node_labels.npy", "node_labels.parquet", "labels.npy", "node_labels.csv.gz")


def raw_layout(raw_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Paths found in a raw folder: ``edges`` (list), ``features``, ``labels``, ``split_dir``."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise InputError(root, "is not a folder", expected="a raw graph folder with edges.parquet")
    edges = _first(root, _EDGE_NAMES)
    if edges is None:
        raise InputError(root, "holds no edge list", expected=f"one of {', '.join(_EDGE_NAMES)}")
    split = root / "split"
    return {
        "edges": [edges],
        "features": _first(root, _FEATURE_NAMES),
        "labels": _first(root, _LABEL_NAMES),
        "split_dir": split if split.is_dir() else None,
    }


def ogb_layout(ogb_dir: str | os.PathLike[str], split_name: str | None = None) -> dict[str, Any]:
    """Paths of an OGB node-property folder, plus ``num_nodes`` from ``num-node-list.csv.gz``."""
    root = Path(ogb_dir)
    raw = root / "raw"
    edge = raw / "edge.csv.gz"
    if not edge.is_file():
        raise InputError(root, "is not an OGB node-property folder", expected="raw/edge.csv.gz")
    out: dict[str, Any] = {
        "edges": [edge],
        "features": _existing(raw / "node-feat.csv.gz"),
        "labels": _existing(raw / "node-label.csv.gz"),
        "split_dir": _ogb_split(root, split_name),
        "num_nodes": _ogb_num_nodes(raw / "num-node-list.csv.gz"),
    }
    return out


def _first(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).exists():
            return root / name
    return None


def _existing(p: Path) -> Path | None:
    return p if p.is_file() else None


def _ogb_split(root: Path, name: str | None) -> Path | None:
    base = root / "split"
    if not base.is_dir():
        return None
    if name is not None:
        if not (base / name).is_dir():
            raise InputError(base, f"has no split {name!r}", expected=f"one of {sorted(p.name for p in base.iterdir())}")
        return base / name
    choices = sorted(p for p in base.iterdir() if p.is_dir())
    return choices[0] if choices else None


def _ogb_num_nodes(path: Path) -> int | None:
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as f:
        text = f.read().split()
    try:
        return sum(int(t) for t in text)
    except ValueError:
        raise InputError(path, f"holds {text[:3]}", expected="the number of nodes") from None
