"""Fixtures of the failure-kind suite: a small raw graph, its dataset, a CLI runner.

Every test here plays a user's mistake, a damaged byte, a kill or a race, and checks what
gnn-ooc promises: nothing of the user's is deleted, nothing damaged is trained on, the error is
one line naming the file and what to do, with exit 1 (bad data) or 2 (bad flags).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.tools.cli import main
from gnn_ooc.tools.synth import SynthConfig, synth


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def one_line(self) -> bool:
        """The error is one line and no traceback."""
        lines = [line for line in self.err.splitlines() if line.strip() and not line.startswith("[")]
        return len(lines) == 1 and "Traceback" not in self.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """``cli("preprocess", ...)`` runs the command line in this process: (exit code, stdout, stderr)."""

    def run(*argv: object) -> Outcome:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        got = capsys.readouterr()
        return Outcome(code, got.out, got.err)

    return run


@pytest.fixture(scope="session")
def raw_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated raw graph (700 nodes, 16-dim features, 4 classes), written once per session."""
    root = tmp_path_factory.mktemp("raw")
    synth(root / "raw", SynthConfig(nodes=700, avg_degree=6, feature_dim=16, classes=4, seed=3))
    return root / "raw"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, raw_graph: Path) -> Path:
    """The raw graph preprocessed (undirected), once per session: copy it before damaging it."""
    out = tmp_path_factory.mktemp("built") / "ds"
    preprocess(PreprocessSpec(output=out, edges=(raw_graph / "edges.parquet",), undirected=True,
                              features=raw_graph / "node_features.npy", labels=raw_graph / "node_labels.npy",
                              split_dir=raw_graph / "split"))
    return out


@pytest.fixture
def dataset(built: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset, free to damage."""
    shutil.copytree(built, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.fixture
def raw(raw_graph: Path, tmp_path: Path) -> Path:
    """A private copy of the raw graph (the user's files)."""
    shutil.copytree(raw_graph, tmp_path / "raw")
    return tmp_path / "raw"


TRAIN = ["--fanouts", "4,3", "--batch-size", "64", "--hidden", "16", "--threads", "1", "--no-progress",
         "--memory-budget", "64M"]


def flip_byte(path: Path, at: int | None = None) -> None:
    """Flip every bit of one byte of ``path`` (by default in the middle of its data)."""
    size = path.stat().st_size
    at = at if at is not None else 4096 + (size - 4096) // 2
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def gnn_ooc(*argv: object, cwd: Path | None = None, **kw: object) -> subprocess.Popen[str]:
    """``gnn-ooc ARGV`` in a child process (for kills and races)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gnn_ooc.tools.cli", *map(str, argv)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def edit_consistently(dataset: Path, key: str, position: int, value: int) -> None:
    """Change one value of a dataset array and record the file's new checksum in the manifest, as
    a crafted (or confused) manifest would: only the structural checks can catch it."""
    import json

    import numpy as np

    from gnn_ooc.graphstore.format.npyfile import file_checksum

    manifest = json.loads((dataset / "manifest.json").read_text())
    path = dataset / manifest["files"][key]["name"]
    arr = np.load(path, mmap_mode="r+")
    arr[position] = value
    arr.flush()
    del arr
    manifest["files"][key]["checksum"] = file_checksum(path)
    (dataset / "manifest.json").write_text(json.dumps(manifest))
