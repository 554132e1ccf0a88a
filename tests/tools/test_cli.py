"""The gnn-ooc command line: exit codes and what it prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gnn_ooc.tools.cli import main
from gnn_ooc.units import format_size, parse_size
from tests.conftest import write_raw


def test_sizes() -> None:
    assert parse_size("512M") == 512 << 20 and parse_size("8G") == 8 << 30 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("4096") == 4096 and parse_size("2kb") == 2048
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
    assert format_size(1536) == "1.5 KiB"


def test_preprocess_info_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0, 1, 2]), np.array([1, 2, 0]),
                    features=np.ones((3, 2), np.float32), labels=np.array([0, 1, 1]))
    out = tmp_path / "ds"
    assert main(["preprocess", str(raw), "-o", str(out), "--memory-budget", "64M", "--split", "0.34,0.33,0.33"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nodes"] == 3 and info["edges"] == 3 and info["classes"] == 2
    assert info["degree"]["max"] == 1 and sum(info["splits"].values()) == 3
    assert main(["info", str(out)]) == 0
    assert "in-degree" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    (out / "labels.npy").write_bytes(b"x" * (out / "labels.npy").stat().st_size)
    assert main(["verify", str(out)]) == 1
    assert "labels.npy: checksum" in capsys.readouterr().err


def test_split_flag_replaces_the_layouts_split_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_raw(tmp_path / "raw", np.arange(8), (np.arange(8) + 1) % 8, labels=np.zeros(8, np.int64),
                    splits={"train": np.array([0]), "valid": np.array([1]), "test": np.array([2])})
    out = tmp_path / "ds"
    assert main(["preprocess", str(raw), "-o", str(out), "--split", "0.5,0.25,0.25"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {"train": 4, "valid": 2, "test": 2}
    assert main(["preprocess", str(raw), "-o", str(out), "--force", "--split", "0.5,0.25,0.25",
                 "--split-dir", str(raw / "split")]) == 2  # a usage error
    assert "exclude each other" in capsys.readouterr().err


def test_bad_input_exit_code_and_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0, -5]), np.array([1, 1]))
    assert main(["preprocess", str(raw), "-o", str(tmp_path / "ds")]) == 1
    err = capsys.readouterr().err
    assert "edges.parquet: row 1: src id -5 is negative (expected ids >= 0)" in err
    assert not (tmp_path / "ds").exists()


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preprocess", "-o", str(tmp_path / "ds")]) == 2
    assert "no edges" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["preprocess", "--edges", "x", "-o", "y", "--memory-budget", "lots"])


def small_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """200 nodes, 2,000 random edges, 150 training nodes, preprocessed into TMP/ds (its output read)."""
    rng = np.random.default_rng(0)
    raw = write_raw(tmp_path / "raw", rng.integers(0, 200, 2000), rng.integers(0, 200, 2000),
                    splits={"train": np.arange(150)})
    ds = tmp_path / "ds"
    assert main(["preprocess", str(raw), "-o", str(ds), "--num-nodes", "200"]) == 0
    capsys.readouterr()
    return ds


def test_sample_plans_grows_keeps_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = small_dataset(tmp_path, capsys)
    args = ["sample", str(ds), "--fanouts", "5,3", "--batch-size", "32", "--seed", "1", "--name", "p"]
    assert main([*args, "--epochs", "3", "--keep-epochs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batches_per_epoch"] == 5 and out["on_disk"] == [1, 2]
    assert all(e["edges"] > 0 and not e["skipped"] for e in out["epochs"])
    assert main([*args, "--start-epoch", "3", "--epochs", "1", "--keep-epochs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["on_disk"] == [2, 3]
    assert main(["sample", str(ds), "--fanouts", "4", "--name", "p"]) == 1  # other settings: refused
    assert "exists with other sampler" in capsys.readouterr().err
    assert main(["sample", str(ds), "--fanouts", "0", "--name", "q"]) == 2  # bad flag value
    assert main(["sample", str(ds), "--fanouts", "20,20", "--sampler", "layerwise", "--name", "lw"]) == 0


def test_benchmarks_remove_only_their_own_folders(tmp_path: Path) -> None:
    """A benchmark's ``--work`` pointed at a folder of the user's: its cleanup removes a run it made,
    never a folder of the same name that gnn-ooc did not write."""
    from gnn_ooc.graphstore.io.owned import RUN, SYNTH_RAW
    from gnn_ooc.tools.bench.preprocess import remove_own

    mine = tmp_path / "runs" / "capped"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's")
    assert not remove_own(mine, RUN) and (mine / "notes.txt").read_text() == "the user's"
    assert not remove_own(tmp_path / "raw", SYNTH_RAW)  # absent: nothing to do
    ours = tmp_path / "runs" / "uncapped"
    ours.mkdir()
    (ours / "run.json").write_text(json.dumps({"format": "gnn-ooc-run"}))
    assert remove_own(ours, RUN) and not ours.exists()


def test_log_level_chooses_what_stderr_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = small_dataset(tmp_path, capsys)
    args = ["sample", str(ds), "--fanouts", "5,3", "--batch-size", "32", "--no-progress"]
    assert main([*args, "--name", "a"]) == 0
    shown = capsys.readouterr().err.splitlines()
    assert shown and all(line.startswith("[") and "] " in line for line in shown), shown  # [HH:MM:SS] lines
    assert any("planning reads the topology" in line for line in shown)
    assert main([*args, "--name", "b", "--log-level", "warning"]) == 0
    assert capsys.readouterr().err == ""  # info lines hidden; the result still goes to stdout
    with pytest.raises(SystemExit) as bad:  # a bad flag value: argparse's usage error
        main([*args, "--name", "c", "--log-level", "loud"])
    assert bad.value.code == 2 and "--log-level" in capsys.readouterr().err
