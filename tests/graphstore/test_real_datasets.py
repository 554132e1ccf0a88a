"""The real Cora and CiteSeer graphs (vendored in tests/data) preprocess with the right counts,
and the vendored copies rebuild the raw folders of ../shared/datasets exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnn_ooc.graphstore import Dataset
from gnn_ooc.tools.cli import main
from tests.conftest import SHARED, reference_csc
from tests.data.vendored import (
    ARRAY_FILES,
    FILES,
    NAMES,
    array_digest,
    file_sha256,
    manifest,
    read_arrays,
)

CASES = {
    # name: nodes, edge rows, features, classes, (train, valid, test), undirected+dedup edges, isolated
    "cora": (2708, 10858, 1433, 7, (140, 500, 1000), 10556, 0),
    "citeseer": (3327, 9464, 3703, 6, (120, 500, 1000), 9104, 48),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_dataset_counts(tmp_path: Path, real_raw: Callable[[str], Path], name: str) -> None:
    raw = real_raw(name)
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


@pytest.mark.parametrize("name", NAMES)
def test_vendored_rebuild_matches_recorded_hashes(real_raw: Callable[[str], Path], name: str) -> None:
    """Without ../shared: every rebuilt array has the dtype, shape and sha256 recorded from the
    original by tests/data/make_vendored.py, and every .npy file its bytes."""
    raw, want = real_raw(name), manifest()["datasets"][name]
    assert sorted(str(p.relative_to(raw)) for p in raw.rglob("*.*")) == sorted(FILES)
    assert {k: array_digest(a) for k, a in read_arrays(raw).items()} == want["arrays"]
    for f in ARRAY_FILES:
        assert file_sha256(raw / f) == want["files"][f]["sha256"], f
    meta = pq.ParquetFile(raw / "edges.parquet").metadata
    assert pq.read_schema(raw / "edges.parquet").equals(pa.schema([("src", pa.int64()), ("dst", pa.int64())]))
    assert (meta.num_rows, meta.num_row_groups) == (want["parquet"]["num_rows"], want["parquet"]["num_row_groups"])
    if meta.created_by == want["parquet"]["created_by"]:  # another pyarrow may lay the bytes out otherwise
        assert file_sha256(raw / "edges.parquet") == want["files"]["edges.parquet"]["sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_vendored_rebuild_equals_shared(real_raw: Callable[[str], Path], name: str) -> None:
    """Where ../shared/datasets is at hand: the rebuilt folder equals the original, file by file."""
    orig = SHARED / name
    if not orig.is_dir():
        pytest.skip(f"{orig} is not present (a fresh clone): the vendored copy is checked against "
                    "tests/data/vendored.json only")
    raw = real_raw(name)
    for f in ARRAY_FILES:
        assert (raw / f).read_bytes() == (orig / f).read_bytes(), f
    assert pq.read_table(raw / "edges.parquet").equals(pq.read_table(orig / "edges.parquet"), check_metadata=True)
    if pq.ParquetFile(raw / "edges.parquet").metadata.created_by == pq.ParquetFile(orig / "edges.parquet").metadata.created_by:
        assert (raw / "edges.parquet").read_bytes() == (orig / "edges.parquet").read_bytes()
    # and the record the always-run test relies on is the original's
    want = manifest()["datasets"][name]
    assert {k: array_digest(a) for k, a in read_arrays(orig).items()} == want["arrays"]
    assert {f: file_sha256(orig / f) for f in FILES} == {f: want["files"][f]["sha256"] for f in FILES}
