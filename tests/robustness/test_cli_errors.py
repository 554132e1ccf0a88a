"""Every error a user can cause is one line with the right exit code (promise 3), and what new
users hit first works."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gnn_ooc.tools.cli import build_parser, describe_failure
from tests.robustness.conftest import TRAIN, edit_consistently


def test_negative_fanout_lists_are_accepted(cli, dataset: Path, tmp_path: Path) -> None:
    r = cli("train", dataset, "--mode", "memory", "--epochs", "1", "--fanouts", "-1,-1", *TRAIN[2:],
            "--out", tmp_path / "r")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] > 0
    r = cli("sample", dataset, "--fanouts", "-1,3", "--batch-size", "64", "--no-progress")
    assert r.code == 0, r.err


def test_help_shows_real_defaults_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for command in ("preprocess", "info", "verify", "clean", "synth", "sample", "pack", "train", "embed"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "default: None" not in text, command
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert capsys.readouterr().out.startswith("gnn-ooc ")


def test_a_closed_pipe_is_not_a_traceback(dataset: Path) -> None:
    # the reader exits at once: every write of `info` hits a closed pipe
    proc = subprocess.run(f"{sys.executable} -m gnn_ooc.tools.cli info {dataset} | true", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_bad_flags_exit_2_and_missing_splits_exit_1(cli, dataset: Path, tmp_path: Path) -> None:
    for argv in (["train", dataset, "--epochs", "0"], ["train", dataset, "--segment-batches", "-1"],
                 ["train", dataset, "--fanouts", "0"], ["pack", dataset, "--segment-batches", "-1"],
                 ["train", dataset, "--memory-budget", "lots"]):
        r = cli(*argv, *(["--out", tmp_path / "r"] if argv[0] == "train" else []))
        assert r.code == 2 and r.one_line, (argv, r.err)
    r = cli("sample", dataset, "--fanouts", "3", "--split", "nope", "--no-progress")
    assert r.code == 1 and r.one_line and "no split 'nope'" in r.err, r.err


def test_the_best_checkpoint_is_kept_and_embed_chooses(cli, dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", dataset, "--epochs", "4", *TRAIN, "--out", run, "--lr", "0.05").code == 0
    summary = json.loads((run / "summary.json").read_text())
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["best_epoch"] == summary["best_epoch"] and (run / "checkpoints" / "best.pt").is_file()
    assert len(list((run / "checkpoints").glob("step-*.pt"))) == 2  # the two newest, and the best beside them
    for which in ("best", "last"):
        assert cli("embed", run, "-o", tmp_path / which, "--checkpoint", which, "--no-progress").code == 0
    used = {w: json.loads((tmp_path / w / "embed.json").read_text())["checkpoint"] for w in ("best", "last")}
    assert used["best"].endswith("best.pt") and "step-" in used["last"]
    r = cli("embed", run, "-o", tmp_path / "x", "--checkpoint", tmp_path / "nope.pt", "--no-progress")
    assert r.code == 1 and r.one_line and "nope.pt" in r.err


def test_train_uses_an_existing_plan(cli, dataset: Path, tmp_path: Path) -> None:
    assert cli("sample", dataset, "--fanouts", "4,2", "--batch-size", "128", "--epochs", "2", "--seed", "5",
               "--name", "mine", "--no-progress").code == 0
    plan = dataset / "plans" / "mine"
    stamps = {e: (plan / e / "nodes.npy").stat().st_mtime_ns for e in ("epoch-000000", "epoch-000001")}
    run = tmp_path / "run"
    r = cli("train", dataset, "--plan", "mine", "--epochs", "3", "--hidden", "16", "--no-progress", "--out", run)
    assert r.code == 0, r.err
    cfg = (run / "config.yaml").read_text()
    assert "- 4\n- 2" in cfg and "batch_size: 128" in cfg and "seed: 5" in cfg  # the plan's settings
    # the user's epochs were used as they were and kept; the run's own leftovers are gone
    assert {e: (plan / e / "nodes.npy").stat().st_mtime_ns for e in stamps} == stamps
    assert sorted(p.name for p in plan.glob("epoch-*")) == list(stamps)
    assert not list((plan / "packs").iterdir())
    r = cli("train", dataset, "--plan", "mine", "--fanouts", "9", "--epochs", "1", "--no-progress", "--out", tmp_path / "b")
    assert r.code == 2 and r.one_line and "plan 'mine'" in r.err, r.err


def test_a_checkpoint_of_another_shape_is_one_line(cli, dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", dataset, "--epochs", "1", *TRAIN, "--out", run, "--mode", "memory").code == 0
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 16", "hidden: 24"))
    r = cli("train", "--resume", run, "--epochs", "2")
    assert r.code == 1 and r.one_line and "does not fit" in r.err, r.err


def test_unlabelled_training_nodes_are_named(cli, dataset: Path, tmp_path: Path) -> None:
    """A dataset whose train split holds an unlabelled node (made elsewhere, or by an older gnn-ooc):
    refused before training, naming the split file, the row and the node."""
    train = np.load(dataset / "split" / "train.npy")
    edit_consistently(dataset, "labels", int(train[2]), -1)
    r = cli("train", dataset, "--epochs", "1", *TRAIN, "--out", tmp_path / "r")
    assert r.code == 1 and r.one_line and "train.npy" in r.err and f"node {train[2]}" in r.err, r.err


def test_os_errors_are_one_line_naming_the_file() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/ds/features.npy")
    text, code = describe_failure(full)
    assert code == 1 and "/data/ds/features.npy" in text and "no space" in text and "\n" not in text
    text, code = describe_failure(PermissionError(errno.EACCES, "Permission denied", "/root/x"))
    assert code == 1 and "/root/x" in text and "permission" in text.lower()
