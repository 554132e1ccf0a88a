"""The real Cora and CiteSeer folders of ../shared/datasets preprocess with the right counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from gnn_ooc.graphstore import Dataset
from gnn_ooc.tools.cli import main
from tests.conftest import SHARED, reference_csc

CASES = {
    # name: nodes, edge rows, features, classes, (train, valid, test), undirected+dedup edges, isolated
    "cora": (2708, 10858, 1433, 7, (140, 500, 1000), 10556, 0),
    "citeseer": (3327, 9464, 3703, 6, (120, 500, 1000), 9104, 48),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_dataset_counts(tmp_path: Path, name: str) -> None:
    raw = SHARED / name
    if not raw.is_dir():
        pytest.skip(f"{raw} is not present")
    nodes, rows, dim, classes, splits, edges, isolated = CASES[name]
    out = tmp_path / name
    assert main(["preprocess", str(raw), "-o", str(out), "--undirected", "--dedup", "--drop-self-loops"]) == 0
    ds = Dataset.open(out)
    assert (ds.num_nodes, ds.feature_dim, ds.num_classes) == (nodes, dim, classes)
    assert ds.manifest.stats["edges_read"] == rows
    assert ds.num_edges == edges
    assert tuple(len(ds.split(s)) for s in ("train", "valid", "test")) == splits
    assert ds.degree_stats().isolated == isolated
    table = pq.read_table(raw / "edges.parquet")
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    ref_ptr, ref_idx = reference_csc(src, dst, nodes, undirected=True, dedup=True, drop_self_loops=True)
    np.testing.assert_array_equal(ds.indptr, ref_ptr)
    np.testing.assert_array_equal(ds.indices, ref_idx)
    np.testing.assert_array_equal(ds.features, np.load(raw / "node_features.npy"))
    np.testing.assert_array_equal(ds.labels, np.load(raw / "node_labels.npy"))
