"""Dataset.open, verify and degree statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gnn_ooc.graphstore import ChecksumError, Dataset, DatasetError, PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from tests.conftest import write_raw


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    raw = write_raw(tmp_path / "raw", rng.integers(0, 50, 400), rng.integers(0, 50, 400),
                    features=rng.standard_normal((50, 4)).astype(np.float32), labels=rng.integers(0, 3, 50),
                    splits={"train": np.arange(10), "valid": np.arange(10, 20), "test": np.arange(20, 30)})
    preprocess(PreprocessSpec(output=tmp_path / "ds", edges=(raw / "edges.parquet",),
                              features=raw / "node_features.npy", labels=raw / "node_labels.npy",
                              split_dir=raw / "split"))
    return tmp_path / "ds"


def test_open_maps_without_reading(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    assert isinstance(ds.features, np.memmap) and isinstance(ds.indices, np.memmap)
    assert not ds.features.flags.writeable
    assert list(ds.splits) == ["train", "valid", "test"]
    assert ds.in_neighbors(3).tolist() == sorted(ds.in_neighbors(3).tolist())
    stats = ds.degree_stats(chunk=7)
    deg = np.diff(ds.indptr)
    assert (stats.min, stats.max, stats.isolated) == (deg.min(), deg.max(), int((deg == 0).sum()))
    assert stats.mean == pytest.approx(deg.mean())
    assert stats.median == np.sort(deg)[(len(deg) - 1) // 2]
    assert stats.p99 == np.sort(deg)[int(np.ceil(0.99 * len(deg))) - 1]


def test_verify_names_the_corrupt_file(dataset: Path) -> None:
    assert len(Dataset.open(dataset).verify()) == 7
    path = dataset / "indices.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"indices\.npy: checksum crc32:\w+ differs from the manifest's"):
        Dataset.open(dataset).verify()


def test_truncated_file_is_caught_at_open(dataset: Path) -> None:
    path = dataset / "features.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ChecksumError, match=r"features\.npy: size \d+ B differs from the manifest's \d+ B \(truncated\?\)"):
        Dataset.open(dataset)


def test_unsupported_version_and_missing_manifest(dataset: Path, tmp_path: Path) -> None:
    m = json.loads((dataset / "manifest.json").read_text())
    m["version"] = 99
    (dataset / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="format version 99 is not supported"):
        Dataset.open(dataset)
    with pytest.raises(DatasetError, match="no manifest.json"):
        Dataset.open(tmp_path)
