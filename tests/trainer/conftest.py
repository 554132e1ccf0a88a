"""Shared by the trainer tests: a small generated graph, preprocessed into a dataset."""

from __future__ import annotations

from pathlib import Path

from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.tools.synth import SynthConfig, synth


def make_dataset(root: Path, **synth_args: int) -> Path:
    """``synth`` (nodes, avg_degree, feature_dim, classes, seed) then ``preprocess --undirected`` into ROOT/ds."""
    raw = root / "raw"
    synth(raw, SynthConfig(**synth_args))  # type: ignore[arg-type]
    preprocess(PreprocessSpec(output=root / "ds", edges=(raw / "edges.parquet",), undirected=True,
                              features=raw / "node_features.npy", labels=raw / "node_labels.npy",
                              split_dir=raw / "split"))
    return root / "ds"
