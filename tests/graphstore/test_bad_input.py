"""Every bad input: a clear error naming the file, the row or id and the expectation; nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnn_ooc.graphstore import InputError, PreprocessSpec
from gnn_ooc.graphstore.preprocess import preprocess
from tests.conftest import write_raw


def fails(tmp_path: Path, match: str, **kw: Any) -> InputError:
    kw.setdefault("edges", (tmp_path / "raw" / "edges.parquet",))
    out = tmp_path / "out" / "ds"
    with pytest.raises(InputError, match=match) as info:
        preprocess(PreprocessSpec(output=out, **kw))
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == [], f"something was written: {leftovers}"
    return info.value


def test_negative_id_names_file_and_row(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0, 1, -3, 2]), np.array([1, 2, 0, 0]))
    err = fails(tmp_path, r"edges\.parquet: row 2: src id -3 is negative \(expected ids >= 0\)")
    assert err.row == 2 and err.path and err.path.endswith("edges.parquet")


def test_id_not_below_num_nodes(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0, 1]), np.array([1, 9]))
    fails(tmp_path, r"row 1: dst id 9 is out of range \(expected ids < 5", num_nodes=5)


def test_id_beyond_feature_rows(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0, 7]), np.array([1, 1]), features=np.ones((4, 2), np.float32))
    fails(tmp_path, r"row 1: src id 7 is out of range", features=tmp_path / "raw" / "node_features.npy")


def test_string_ids_without_remap(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "e.csv").write_text("src,dst\na,b\n")
    fails(tmp_path, r"e\.csv: src column has type string \(expected integer node ids; pass --remap", edges=(tmp_path / "raw" / "e.csv",))


def test_float_ids_without_remap(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"src": [0.5], "dst": [1.0]}), tmp_path / "raw" / "edges.parquet")
    fails(tmp_path, r"src column has type double \(expected integer node ids")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_features(tmp_path: Path, bad: float) -> None:
    feats = np.ones((6, 3), np.float32)
    feats[4, 2] = bad
    write_raw(tmp_path / "raw", np.array([0]), np.array([1]), features=feats)
    fails(tmp_path, r"node_features\.npy: row 4: feature column 2 is (nan|inf) \(expected finite features \(or --nan-policy zero\)\)",
          features=tmp_path / "raw" / "node_features.npy")


def test_feature_rows_differ_from_node_count(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0]), np.array([1]), features=np.ones((6, 3), np.float32))
    fails(tmp_path, r"node_features\.npy: has 6 feature rows \(expected 10, one per node", num_nodes=10,
          features=tmp_path / "raw" / "node_features.npy")


def test_label_rows_differ_from_node_count(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0]), np.array([1]), features=np.ones((6, 3), np.float32), labels=np.zeros(5, np.int64))
    fails(tmp_path, r"node_labels\.npy: has 5 label rows \(expected 6", features=tmp_path / "raw" / "node_features.npy",
          labels=tmp_path / "raw" / "node_labels.npy")


def test_split_id_out_of_range(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0]), np.array([1]), splits={"train": np.array([0, 1, 12])})
    fails(tmp_path, r"train\.npy: row 2: train id 12 is out of range \(expected node ids in \[0, 4\)\)", num_nodes=4,
          split_dir=tmp_path / "raw" / "split")


def test_node_in_two_splits(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0]), np.array([1]), splits={"train": np.array([0, 1]), "test": np.array([1, 2])})
    fails(tmp_path, r"test\.npy: node 1 is in both train and test \(expected disjoint splits\)", num_nodes=4,
          split_dir=tmp_path / "raw" / "split")


def test_truncated_parquet(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", np.arange(1000), np.arange(1000))
    data = (raw / "edges.parquet").read_bytes()
    (raw / "edges.parquet").write_bytes(data[: len(data) // 2])
    fails(tmp_path, r"edges\.parquet: not a readable Parquet file")


def test_truncated_npy_features(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0]), np.array([1]), features=np.ones((100, 8), np.float32))
    data = (raw / "node_features.npy").read_bytes()
    (raw / "node_features.npy").write_bytes(data[:-100])
    fails(tmp_path, r"node_features\.npy: not a readable \.npy", features=raw / "node_features.npy")


def test_unreadable_csv(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "e.csv").write_text("src,dst\n1,2\n3\n")
    fails(tmp_path, r"e\.csv: cannot be read \(.*\) \(expected a complete, readable file\)", edges=(tmp_path / "raw" / "e.csv",))


def test_empty_edge_list(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([], np.int64), np.array([], np.int64))
    fails(tmp_path, r"edges\.parquet: the edge list is empty \(expected at least one edge\)", num_nodes=3)


def test_missing_column(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"from": [0], "to": [1]}), tmp_path / "raw" / "edges.parquet")
    fails(tmp_path, r"edges\.parquet: missing column 'src', 'dst' \(expected columns 'src' and 'dst' \(have \['from', 'to'\]")


def test_missing_file(tmp_path: Path) -> None:
    fails(tmp_path, r"nope\.parquet: does not exist", edges=(tmp_path / "nope.parquet",))


def test_null_ids(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"src": pa.array([0, None, 2], pa.int64()), "dst": [1, 1, 1]}), tmp_path / "raw" / "edges.parquet")
    fails(tmp_path, r"row 1: src id is missing \(null\)")


def test_failed_rebuild_keeps_the_old_dataset(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0]), np.array([1]))
    out = tmp_path / "ds"
    preprocess(PreprocessSpec(output=out, edges=(raw / "edges.parquet",)))
    before = sorted(p.name for p in out.iterdir())
    write_raw(tmp_path / "raw", np.array([0, -1]), np.array([1, 1]))
    with pytest.raises(InputError):
        preprocess(PreprocessSpec(output=out, edges=(raw / "edges.parquet",)))
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "raw"]


def test_bad_features_stop_a_long_topology_build_early(tmp_path: Path) -> None:
    feats = np.ones((1000, 4), np.float32)
    feats[0, 0] = np.nan
    rng = np.random.default_rng(0)
    write_raw(tmp_path / "raw", rng.integers(0, 1000, 400_000), rng.integers(0, 1000, 400_000), features=feats,
              row_group_size=10_000)
    fails(tmp_path, r"row 0: feature column 0 is nan", features=tmp_path / "raw" / "node_features.npy",
          memory_budget=32 << 20)
