"""The contract of ``gnn-ooc preprocess``: the spec of one ingest, whose defaults are the only defaults.

Example:
    >>> PreprocessSpec(output=Path("out"), edges=(Path("edges.parquet"),)).undirected
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


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

