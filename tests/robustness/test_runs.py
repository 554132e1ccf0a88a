"""Runs that can be trusted: kills, resumes, races, leftovers (promises 4 and 5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from gnn_ooc.tools.synth import SynthConfig, synth
from gnn_ooc.trainer.runfolder import RunFolder
from tests.robustness.conftest import TRAIN, gnn_ooc


def _wait_for(cond, timeout: float = 120.0, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def _epochs(run: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (run / "metrics" / "epochs.jsonl").read_text().splitlines()]


def _position(meta: Path) -> tuple[int, int]:
    """(epoch, position) a checkpoint's JSON records; (-1, -1) when pruned meanwhile."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return (-1, -1)
    return int(info.get("epoch", -1)), int(info.get("position", -1))


def _planner_children(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if "gnn_ooc.sampler.background" in " ".join(k.cmdline())]


def test_sigterm_leaves_no_partial_folders(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    synth(raw, SynthConfig(nodes=150_000, avg_degree=12, feature_dim=32, classes=4, seed=1))
    proc = gnn_ooc("preprocess", raw, "-o", tmp_path / "ds", "--undirected", "--dedup")
    assert _wait_for(lambda: any(".ds.partial-" in p.name for p in tmp_path.iterdir()))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")] and not (tmp_path / "ds").exists()


def test_sigterm_of_offline_training_stops_the_planner_and_cleans_up(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = gnn_ooc("train", dataset, "--epochs", "200", *TRAIN, "--out", run, "--eval-every", "0")
    assert _wait_for(lambda: len(_planner_children(proc.pid)) > 0 and (run / "checkpoints").is_dir())
    children = _planner_children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert _wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 10)
    assert not list((dataset / "plans").rglob("*.partial-*"))


def test_sigkill_resume_reports_the_whole_epochs_loss(dataset: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    argv = ["--mode", "memory", "--epochs", "3", *TRAIN, "--checkpoint-every", "2", "--lr", "0.01"]
    reference = tmp_path / "reference"
    assert cli("train", dataset, *argv, "--out", reference).code == 0
    run = tmp_path / "killed"
    proc = gnn_ooc("train", dataset, *argv[:2], "--epochs", "400", *argv[4:], "--out", run)
    # killed mid-epoch 1, after a checkpoint inside it
    assert _wait_for(lambda: any(_position(p) > (1, 1) for p in (run / "checkpoints").glob("step-*.json")))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = cli("train", "--resume", run, "--epochs", "3")
    assert r.code == 0, r.err
    assert [e["loss"] for e in _epochs(run)] == [e["loss"] for e in _epochs(reference)]
    summary = json.loads((run / "summary.json").read_text())
    assert [e["loss"] for e in summary["epochs"]] == [e["loss"] for e in _epochs(reference)]


class _Killed(BaseException):
    """Stands for SIGKILL in-process: no handler of ours catches a BaseException."""


def test_a_kill_between_an_epochs_record_and_its_checkpoint_records_the_epoch_once(  # type: ignore[no-untyped-def]
        dataset: Path, tmp_path: Path, cli, monkeypatch) -> None:
    # 7 batches per epoch: step 14 checkpoints epoch 1's last batch, then the epoch's record is
    # written, then the end checkpoint, which is where this run dies
    argv = ["--mode", "memory", *TRAIN, "--checkpoint-every", "7", "--lr", "0.01"]
    reference = tmp_path / "reference"
    assert cli("train", dataset, "--epochs", "3", *argv, "--out", reference).code == 0
    from gnn_ooc.trainer import loop

    real = loop.save_checkpoint

    def dies_at_epoch_2(run, step, state, *, best=False, info=None):  # type: ignore[no-untyped-def]
        if info and (info["epoch"], info["position"]) == (2, 0):
            raise _Killed
        return real(run, step, state, best=best, info=info)

    run = tmp_path / "killed"
    monkeypatch.setattr(loop, "save_checkpoint", dies_at_epoch_2)
    with pytest.raises(_Killed):
        cli("train", dataset, "--epochs", "3", *argv, "--out", run)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert [e["epoch"] for e in _epochs(run)] == [0, 1]
    assert cli("train", "--resume", run, "--epochs", "3").code == 0
    assert [e["loss"] for e in _epochs(run)] == [e["loss"] for e in _epochs(reference)]


def test_the_planner_dies_with_its_parent_and_resume_works_at_once(dataset: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    proc = gnn_ooc("train", dataset, "--epochs", "200", *TRAIN, "--out", run, "--eval-every", "0")
    assert _wait_for(lambda: len(_planner_children(proc.pid)) > 0 and any((run / "checkpoints").glob("step-*.pt")))
    children = _planner_children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 5)
    r = cli("train", "--resume", run, "--epochs", "3")
    assert r.code == 0, r.err


def test_resume_refuses_another_dataset_and_accepts_the_same_one_moved(cli, dataset: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                       raw: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", dataset, "--epochs", "1", *TRAIN, "--out", run).code == 0
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)
    assert cli("train", "--resume", run, moved, "--epochs", "2").code == 0  # the same bytes elsewhere
    other = tmp_path / "other"
    assert cli("preprocess", raw, "-o", other, "--drop-self-loops").code == 0
    r = cli("train", "--resume", run, other, "--epochs", "3")
    assert r.code == 1 and r.one_line and "identity" in r.err, r.err
    # rebuilt at the run's own path with other settings
    assert cli("preprocess", raw, "-o", dataset, "--force").code == 0
    r = cli("train", "--resume", run, "--epochs", "3")
    assert r.code == 1 and r.one_line and "identity" in r.err, r.err


def test_resume_and_embed_work_from_another_folder(cli, dataset: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.move(str(dataset), work / "ds")
    monkeypatch.chdir(work)
    assert cli("train", "ds", "--epochs", "1", *TRAIN, "--out", "run").code == 0  # relative paths
    monkeypatch.chdir(tmp_path)
    assert cli("train", "--resume", work / "run", "--epochs", "2").code == 0
    assert cli("embed", work / "run", "-o", "emb", "--no-progress").code == 0


def _hold(run: Path) -> RunFolder:
    """Hold ``run``'s lock as a live training process would (flock is per open file: this process's
    own second open sees it held)."""
    return RunFolder.open(run)


def test_two_runs_cannot_share_a_run_folder(cli, dataset: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    assert cli("train", dataset, "--mode", "memory", "--epochs", "1", *TRAIN, "--out", run,
               "--max-steps", "2").code == 0
    with _hold(run):
        r = cli("train", "--resume", run, "--epochs", "1")
        assert r.code == 2 and r.one_line and "another gnn-ooc train" in r.err, r.err
    empty = tmp_path / "empty"
    empty.mkdir()
    with _hold(empty):  # a run being created
        r = cli("train", dataset, "--mode", "memory", "--epochs", "1", *TRAIN, "--out", empty)
        assert r.code == 2 and r.one_line and "another gnn-ooc train" in r.err, r.err


def test_info_lists_and_clean_removes_what_no_live_run_needs(cli, dataset: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("sample", dataset, "--fanouts", "3", "--batch-size", "64", "--name", "mine", "--no-progress").code == 0
    # two runs stopped mid-way (their plans stay for a resume); one of them is "live" below
    stopped, live = tmp_path / "stopped", tmp_path / "live"
    for run in (stopped, live):
        assert cli("train", dataset, "--epochs", "5", *TRAIN, "--out", run, "--max-steps", "3").code == 0
    (dataset / "plans" / "mine" / ".epoch-000005.partial-1-dead").mkdir()  # a killed sample's leftover
    info = json.loads(cli("info", dataset, "--json").out)
    plans = {p["name"]: p for p in info["plans"]}
    mine = [p["name"] for p in plans.values() if p["run"] == str(stopped)]
    assert "mine" in plans and mine and plans[mine[0]]["bytes"] > 0 and not plans[mine[0]]["live"]
    assert info["leftovers"]
    text = cli("info", dataset).out
    assert "plan        mine" in text and "not running" in text
    with _hold(live):
        r = cli("clean", dataset, "--dry-run")
        assert r.code == 0 and "would free" in r.out and (dataset / "plans" / mine[0]).is_dir()
        r = cli("clean", dataset)
        assert r.code == 0, r.err
        left = {p["name"]: p for p in json.loads(cli("info", dataset, "--json").out)["plans"]}
        assert mine[0] not in left and "mine" in left  # the stopped run's plan went, the user's stayed
        assert any(p["run"] == str(live) and p["live"] for p in left.values())  # the live run's stayed
        assert not json.loads(cli("info", dataset, "--json").out)["leftovers"]
    assert stopped.is_dir() and any((stopped / "checkpoints").glob("step-*.pt"))  # runs are never removed
    assert cli("clean", dataset, "--all-plans").code == 0
    assert not json.loads(cli("info", dataset, "--json").out)["plans"]
    assert cli("train", "--resume", stopped, "--epochs", "2").code == 0  # plans again


def test_memory_mode_refuses_features_over_the_budget(cli, dataset: Path, tmp_path: Path) -> None:
    r = cli("train", dataset, "--mode", "memory", *TRAIN[:-2], "--memory-budget", "4K", "--out", tmp_path / "r")
    assert r.code == 2 and r.one_line and "memory-budget" in r.err, r.err


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_a_failed_run_can_be_resumed_or_restarted_cleanly(cli, dataset: Path, tmp_path: Path, mode: str) -> None:
    """A run stopped by an error (a damaged file) leaves its folder usable: fixing the data and
    resuming or starting over works, and nothing half-written stays behind."""
    run = tmp_path / "run"
    good = (dataset / "features.npy").read_bytes()
    from tests.robustness.conftest import flip_byte

    flip_byte(dataset / "features.npy")
    assert cli("train", dataset, "--mode", mode, "--epochs", "1", *TRAIN, "--out", run).code == 1
    (dataset / "features.npy").write_bytes(good)
    assert cli("train", dataset, "--mode", mode, "--epochs", "1", *TRAIN, "--out", run).code == 0
    assert not list(dataset.rglob("*.partial-*"))
