"""Every bad input: a clear error naming the file, the row or id and the expectation; nothing written."""

from __future__ import annotations

import errno
import gzip
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnn_ooc.graphstore import InputError, PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.tools.cli import main
from tests.conftest import listing, write_raw


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
    fails(tmp_path, r"e\.csv: row 0: src id 'a' is not an integer \(expected integer node ids; pass --remap",
          edges=(tmp_path / "raw" / "e.csv",))


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
    fails(tmp_path, r"node_labels\.npy: has 5 label rows but \S*node_features\.npy has 6 feature rows \(expected one row per node in both\)",
          features=tmp_path / "raw" / "node_features.npy",
          labels=tmp_path / "raw" / "node_labels.npy")


def test_split_id_out_of_range(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", np.array([0]), np.array([1]), splits={"train": np.array([0, 1, 12])})
    fails(tmp_path, r"train\.npy: row 2: train id 12 is out of range \(expected node ids in \[0, 4\) \(--num-nodes 4\)\)", num_nodes=4,
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
    fails(tmp_path, r"e\.csv: row 1: has 1 field\(s\): '3' \(expected 2 fields like the first row\)",
          edges=(tmp_path / "raw" / "e.csv",))


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


# --- through the command line: exit code, one error line naming the file and row, no traceback ------
def cli_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: Sequence[object], code: int = 1) -> str:
    """Run ``gnn-ooc preprocess ARGS -o tmp/out/ds``; assert the exit code, a single error line (the
    progress lines aside), no traceback and nothing left in tmp/out; return the error line."""
    out = tmp_path / "out" / "ds"
    rc = main(["preprocess", *[str(a) for a in args], "-o", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == code and len(errors) == 1 and "Traceback" not in err, err
    assert err.rstrip().splitlines()[-1] == errors[0]
    assert listing(tmp_path / "out") == [], listing(tmp_path / "out")
    return errors[0]


def edge_file(tmp_path: Path, kind: str, src: Sequence[int], dst: Sequence[int]) -> Path:
    (tmp_path / "raw").mkdir(exist_ok=True)
    if kind == "parquet":
        write_raw(tmp_path / "raw", np.array(src), np.array(dst))
        return tmp_path / "raw" / "edges.parquet"
    if kind == "npy":
        np.save(tmp_path / "raw" / "e.npy", np.array([src, dst], dtype=np.int64))
        return tmp_path / "raw" / "e.npy"
    path = tmp_path / "raw" / ("e.csv.gz" if kind == "csv.gz" else "e.csv")
    text = "src,dst\n" + "".join(f"{s},{d}\n" for s, d in zip(src, dst))
    if kind == "csv.gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("kind, big", [("parquet", 2**62), ("parquet", 2**63 - 1), ("csv", 2**62), ("npy", 2**40),
                                       ("csv", 10**9), ("csv.gz", 300_000)])
def test_sparse_ids_without_remap_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str,
                                              big: int) -> None:
    path = edge_file(tmp_path, kind, [0, 1, 2], [1, big, 0])
    line = cli_error(capsys, tmp_path, ["--edges", path])
    assert f"{path.name}: row 1: dst id {big} would make {big + 1} nodes" in line
    assert "ids look sparse" in line and "--remap" in line and f"--num-nodes {big + 1}" in line


def test_sparse_rule_leaves_ids_a_per_node_file_backs(tmp_path: Path) -> None:
    n = 70_000  # above the 65536-node floor, with 2 edges: only the features' rows back it
    raw = write_raw(tmp_path / "raw", np.array([0, n - 1]), np.array([1, 0]))
    (raw / "f.csv").write_text("1\n" * n)
    r = preprocess(PreprocessSpec(output=tmp_path / "ds", edges=(raw / "edges.parquet",), features=raw / "f.csv"))
    assert r.manifest.num_nodes == n and r.manifest.feature_dim == 1


def fake_free(monkeypatch: pytest.MonkeyPatch, free: int, only: Path | None = None) -> None:
    """Make ``shutil.disk_usage`` report ``free`` bytes (under ``only``, else everywhere)."""
    real = shutil.disk_usage

    def usage(path: Any) -> Any:
        total, used, actual = real(path)
        if only is None or Path(path).resolve().is_relative_to(only.resolve()):
            return type(real(path))(total, used, free)
        return type(real(path))(total, used, actual)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def test_num_nodes_confirms_sparse_ids_but_the_disk_is_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = edge_file(tmp_path, "parquet", [0, 2**40], [1, 2])
    fake_free(monkeypatch, 10 << 30)
    line = cli_error(capsys, tmp_path, ["--edges", path, "--num-nodes", 2**40 + 1])
    assert "not enough free disk space" in line and "indptr.npy 8.0 TiB" in line and "10.0 GiB" in line
    assert str(8 * (2**40 + 2) + 4096) in line or "8796093" in line


def test_disk_space_is_checked_before_writing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_raw(tmp_path / "raw", np.arange(100), np.arange(100)[::-1], features=np.ones((100, 64), np.float32))
    writes: list[str] = []
    from gnn_ooc.graphstore.io import directio

    real_init = directio.SequentialWriter.__init__

    def spy(self: Any, path: Any, **kw: Any) -> None:
        writes.append(str(path))
        real_init(self, path, **kw)

    monkeypatch.setattr(directio.SequentialWriter, "__init__", spy)
    fake_free(monkeypatch, 1000)
    line = cli_error(capsys, tmp_path, [raw])
    assert "ds: not enough free disk space" in line and "features.npy 29.0 KiB" in line and "(1000 B) free" in line
    assert writes == []


def test_scratch_space_in_tmp_dir_is_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    raw = write_raw(tmp_path / "raw", rng.integers(0, 1000, 200_000), rng.integers(0, 1000, 200_000))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    from gnn_ooc.graphstore.ingest import preprocess as module

    monkeypatch.setattr(module, "_same_filesystem", lambda a, b: False)  # as if --tmp-dir were another disk
    fake_free(monkeypatch, 4096, only=scratch)
    line = cli_error(capsys, tmp_path, [raw, "--tmp-dir", scratch, "--memory-budget", "1M"])
    assert f"--tmp-dir {scratch}: not enough free disk space" in line and "scratch bucket files" in line
    assert listing(scratch) == []


def full_disk(*names: str) -> Any:
    def write(self: Any, data: Any) -> None:
        if Path(self.path).name in names:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    from gnn_ooc.graphstore.io import directio

    real_write = directio.SequentialWriter.write
    return write


@pytest.mark.parametrize("name", ["features.npy", "indptr.npy", "labels.npy"])
def test_full_disk_while_writing_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from gnn_ooc.graphstore.io import directio

    raw = write_raw(tmp_path / "raw", np.arange(50), np.arange(50)[::-1], features=np.ones((50, 4), np.float32),
                    labels=np.zeros(50, np.int64))
    monkeypatch.setattr(directio.SequentialWriter, "write", full_disk(name))
    fake_free(monkeypatch, 1 << 40)  # the check before writing passes; the disk fills up later
    scratch = tmp_path / "scratch"
    line = cli_error(capsys, tmp_path, [raw, "--tmp-dir", scratch])
    assert f"ds/{name}: no space left on the device while writing it" in line and "free on its filesystem" in line
    assert listing(scratch) == []


def test_full_disk_while_spilling_names_the_scratch_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from gnn_ooc.graphstore.ingest import csc

    def write_all(write: Any, data: Any) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    rng = np.random.default_rng(0)
    raw = write_raw(tmp_path / "raw", rng.integers(0, 1000, 200_000), rng.integers(0, 1000, 200_000))
    monkeypatch.setattr(csc, "write_all", write_all)
    line = cli_error(capsys, tmp_path, [raw, "--memory-budget", "1M"])
    assert "bucket-" in line and "no space left on the device while writing it" in line


@pytest.mark.parametrize("labels_kind", ["npy", "csv"])
def test_feature_rows_fewer_than_label_rows_names_both(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       labels_kind: str) -> None:
    raw = write_raw(tmp_path / "raw", np.arange(10), (np.arange(10) + 1) % 10, features=np.ones((8, 2), np.float32),
                    labels=np.zeros(10, np.int64), splits={"train": np.array([0, 9])})
    labels = raw / "node_labels.npy"
    if labels_kind == "csv":
        labels = raw / "labels.csv"
        labels.write_text("0\n" * 10)
    line = cli_error(capsys, tmp_path, ["--edges", raw / "edges.parquet", "--features", raw / "node_features.npy",
                                        "--labels", labels, "--split-dir", raw / "split"])
    assert f"{labels.name}: has 10 label rows but" in line and "node_features.npy has 8 feature rows" in line
    assert "train.npy" not in line and "edges.parquet" not in line


@pytest.mark.parametrize("what", ["features", "labels"])
def test_zero_row_per_node_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0, 1]), np.array([1, 0]), features=np.ones((0, 3), np.float32),
                    labels=np.zeros(0, np.int64))
    path = raw / ("node_features.npy" if what == "features" else "node_labels.npy")
    line = cli_error(capsys, tmp_path, ["--edges", raw / "edges.parquet", f"--{what}", path])
    assert f"{path.name}: has no {what[:-1]} rows" in line and "edges.parquet" not in line


def test_zero_row_csv_features_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0, 1]), np.array([1, 0]))
    (raw / "f.csv").write_text("a,b\n")
    line = cli_error(capsys, tmp_path, ["--edges", raw / "edges.parquet", "--features", raw / "f.csv"])
    assert "f.csv: has 0 feature rows (expected 2" in line


@pytest.mark.parametrize("bad", [1e9, 10**9, 2**64 - 1, 1e30, 5])
def test_absurd_class_ids_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, bad: float) -> None:
    dtype = np.float64 if isinstance(bad, float) else np.uint64
    labels = np.zeros(5, dtype)
    labels[3] = bad
    raw = write_raw(tmp_path / "raw", np.arange(5), (np.arange(5) + 1) % 5, labels=labels)
    line = cli_error(capsys, tmp_path, [raw])
    assert f"node_labels.npy: row 3: label {int(bad)} would make {int(bad) + 1} classes for 5 nodes" in line


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_label_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, bad: float) -> None:
    labels = np.zeros(5)
    labels[2] = bad
    raw = write_raw(tmp_path / "raw", np.arange(5), (np.arange(5) + 1) % 5, labels=labels)
    assert "node_labels.npy: row 2: label" in cli_error(capsys, tmp_path, [raw])


@pytest.mark.parametrize("split", ["train", "test"])
def test_split_with_an_unlabelled_node_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  split: str) -> None:
    labels = np.zeros(10, np.int64)
    labels[7] = -1
    splits = {"train": np.array([0, 1, 2]), "test": np.array([3, 4, 5])}
    splits[split] = np.concatenate([splits[split], [7]])
    raw = write_raw(tmp_path / "raw", np.arange(10), (np.arange(10) + 1) % 10, labels=labels, splits=splits)
    line = cli_error(capsys, tmp_path, [raw])
    assert f"{split}.npy: row 3: {split} node 7 has no label" in line and "node_labels.npy" in line


def test_split_with_an_unlabelled_node_names_the_original_id(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    ids = 1000 + 10 * np.arange(5)
    labels = np.array([0, 1, -1, 1, 0])
    raw = write_raw(tmp_path / "raw", ids, np.roll(ids, 1), labels=labels, splits={"valid": np.array([1040, 1020])})
    line = cli_error(capsys, tmp_path, [raw, "--remap"])
    assert "valid.npy: row 1: valid node 1020 has no label" in line


def csv_lines(n: int, bad_row: int, bad: str, width: int = 2) -> str:
    rows = [",".join(str((i * (k + 3)) % 997) for k in range(width)) for i in range(n)]
    rows[bad_row] = bad
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("bad_row", [2, 150_000])  # in the first block, and after many good blocks
def test_corrupt_edge_csv_token_names_row_and_token(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    bad_row: int) -> None:
    (tmp_path / "raw").mkdir()
    path = tmp_path / "raw" / "e.csv"
    path.write_text("src,dst\n" + csv_lines(200_000, bad_row, "12,abc"))
    line = cli_error(capsys, tmp_path, ["--edges", path, "--memory-budget", "1M"])
    assert f"e.csv: row {bad_row}: dst id 'abc' is not an integer" in line


@pytest.mark.parametrize("bad_row", [3, 150_000])
@pytest.mark.parametrize("what", ["features", "labels"])
def test_corrupt_per_node_csv_value_names_row_and_token(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        what: str, bad_row: int) -> None:
    n = 200_000
    raw = write_raw(tmp_path / "raw", np.array([0, n - 1]), np.array([1, 0]))
    path = raw / f"{what}.csv"
    path.write_text(csv_lines(n, bad_row, "1,2x" if what == "features" else "3x", width=2 if what == "features" else 1))
    line = cli_error(capsys, tmp_path, ["--edges", raw / "edges.parquet", f"--{what}", path, "--num-nodes", n])
    token = "2x" if what == "features" else "3x"
    assert f"{what}.csv: row {bad_row}: column {1 if what == 'features' else 0} value '{token}' is not a number" in line


def test_rerun_over_a_corrupted_dataset_rebuilds_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from gnn_ooc.graphstore import Dataset

    raw = write_raw(tmp_path / "raw", np.arange(20), np.arange(20)[::-1], features=np.ones((20, 8), np.float32))
    out = tmp_path / "ds"
    assert main(["preprocess", str(raw), "-o", str(out)]) == 0
    data = bytearray((out / "features.npy").read_bytes())
    data[-5] ^= 0x10
    (out / "features.npy").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["preprocess", str(raw), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "up to date" not in err and "features.npy: checksum" in err and "rebuilding" in err
    assert Dataset.open(out).verify() and main(["preprocess", str(raw), "-o", str(out)]) == 0
    assert "up to date" in capsys.readouterr().err


# --- found by trying to break it (item 9 of issue 13) -----------------------------------------------
def test_edge_folder_mixing_parquet_and_csv_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "edges"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"src": [0], "dst": [1]}), folder / "a.parquet")
    (folder / "b.csv").write_text("src,dst\n5,6\n")  # silently dropped before
    (folder / "README.txt").write_text("not an edge file")
    line = cli_error(capsys, tmp_path, ["--edges", folder])
    assert "edges: folder holds both .parquet (a.parquet) and CSV/TSV (b.csv) files" in line


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_duplicate_id_columns_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    (tmp_path / "raw").mkdir()
    path = tmp_path / "raw" / f"e.{kind}"
    if kind == "parquet":
        pq.write_table(pa.Table.from_arrays([pa.array([0, 1]), pa.array([1, 2]), pa.array([3, 4])],
                                            names=["src", "dst", "src"]), path)
    else:
        path.write_text("src,dst,src\n0,1,2\n")
    assert f"e.{kind}: has 2 columns named 'src'" in cli_error(capsys, tmp_path, ["--edges", path])


@pytest.mark.parametrize("where", ["features", "split"])
def test_folder_where_a_file_belongs(capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0, 1]), np.array([1, 0]))
    args: list[object] = ["--edges", raw / "edges.parquet"]
    if where == "features":
        (raw / "feats").mkdir()
        args += ["--features", raw / "feats"]
        expected = "feats: is a folder"
    else:
        (raw / "split" / "train.npy").mkdir(parents=True)
        args += ["--split-dir", raw / "split"]
        expected = "train.npy: is a folder"
    assert expected in cli_error(capsys, tmp_path, args)


@pytest.mark.parametrize("rows", [7, 12])
def test_boolean_split_mask_of_the_wrong_length(capsys: pytest.CaptureFixture[str], tmp_path: Path, rows: int) -> None:
    raw = write_raw(tmp_path / "raw", np.arange(10), (np.arange(10) + 1) % 10, splits={"train": np.ones(rows, bool)})
    line = cli_error(capsys, tmp_path, [raw])
    assert f"train.npy: is a boolean mask of {rows} rows (expected 10 rows, one per node" in line


def test_unlabelled_node_in_a_mask_split_names_its_row(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mask = np.zeros(6, bool)
    mask[[1, 4]] = True
    raw = write_raw(tmp_path / "raw", np.arange(6), np.arange(6)[::-1], labels=np.array([0, 1, 0, 1, -1, 0]),
                    splits={"valid": mask})
    assert "valid.npy: row 4: valid node 4 has no label" in cli_error(capsys, tmp_path, [raw])


def test_features_beyond_float32_are_named_as_such(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    feats = np.ones((4, 3))
    feats[2, 1] = 1e300
    raw = write_raw(tmp_path / "raw", np.arange(4), np.arange(4)[::-1], features=feats)
    line = cli_error(capsys, tmp_path, [raw])
    assert "node_features.npy: row 2: feature column 1 = 1e+300 overflows float32" in line


def test_huge_float_split_id_is_not_wrapped(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", np.arange(4), np.arange(4)[::-1], splits={"test": np.array([1.0, 1e30])})
    assert "test.npy: row 1: value 1e+30 is not a node id" in cli_error(capsys, tmp_path, [raw])


@pytest.mark.parametrize("flags, text", [(["--split", "nan,0.1,0.1"], "--split (nan, 0.1, 0.1)"),
                                         (["--tmp-dir", "FILE"], "is not a folder"),
                                         (["--num-nodes", "0"], "--num-nodes 0")])
def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], text: str) -> None:
    raw = write_raw(tmp_path / "raw", np.arange(4), np.arange(4)[::-1], labels=np.zeros(4, np.int64))
    (tmp_path / "FILE").write_text("x")
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    assert text in cli_error(capsys, tmp_path, [raw, *flags], code=2)


def test_unreadable_file_in_an_input_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gnn_ooc.graphstore.ingest import preprocess as module

    raw = write_raw(tmp_path / "raw", np.arange(4), np.arange(4)[::-1], splits={"train": np.array([0])})
    (raw / "split" / "notes.bin").write_bytes(b"x")
    real_open = open

    def guarded(path: Any, *args: Any, **kw: Any) -> Any:
        if str(path).endswith("notes.bin"):  # as chmod 000 would (tests may run as root)
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(module, "open", guarded, raising=False)
    assert "notes.bin: cannot be read (Permission denied)" in cli_error(capsys, tmp_path, [raw])
