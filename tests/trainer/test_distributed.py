"""Several processes: launcher detection (torchrun, srun), and 2-process gloo DDP against a hand-made reference."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.trainer.checkpoint import latest_checkpoint, load_checkpoint
from gnn_ooc.trainer.config import ConfigError, TrainConfig
from gnn_ooc.trainer.distributed import (
    DistEnv,
    backend_for,
    detect_env,
    expand_nodelist,
    gpu_for,
    on_rank0,
)
from gnn_ooc.trainer.loop import iter_batches
from gnn_ooc.trainer.run import _seed_everything, build_model, build_sources
from gnn_ooc.trainer.sources import TrainBatch, rank_batches
from tests.trainer.conftest import make_dataset

# --- launcher detection ------------------------------------------------------------------------------
SRUN = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}


def test_torchrun_variables() -> None:
    env = detect_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.5",
                      "MASTER_PORT": "1234"})
    assert env == DistEnv(rank=3, local_rank=1, world=4, master_addr="10.0.0.5", master_port=1234)
    assert env.init_method == "tcp://10.0.0.5:1234" and not env.main
    assert DistEnv(0, 0, 2, "::1", 5).init_method == "tcp://[::1]:5"


def test_slurm_fallbacks_inside_an_srun_step() -> None:
    env = detect_env(SRUN)
    # the first host of the job's node list; a port every task of the job derives alike
    assert env == DistEnv(rank=3, local_rank=1, world=4, master_addr="gpu07", master_port=20000 + 123456 % 20000)
    assert detect_env({**SRUN, "MASTER_ADDR": "head", "MASTER_PORT": "29400"}).master_addr == "head"
    assert detect_env({**SRUN, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}).world == 2  # srun -n 2


def test_torchrun_wins_over_slurm() -> None:
    env = detect_env({**SRUN, "RANK": "5", "LOCAL_RANK": "0", "WORLD_SIZE": "8"})
    assert (env.rank, env.local_rank, env.world) == (5, 0, 8)


@pytest.mark.parametrize("environ", [
    {},
    {"WORLD_SIZE": "1", "RANK": "0"},
    {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"},  # a batch script's shell, not srun
    {**SRUN, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},
])
def test_one_process_is_none(environ: dict[str, str]) -> None:
    assert detect_env(environ) is None


def test_bad_environments() -> None:
    with pytest.raises(ConfigError, match="no RANK"):
        detect_env({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="outside 0..1"):
        detect_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ConfigError, match="RANK='x'"):
        detect_env({"WORLD_SIZE": "2", "RANK": "x"})
    env = detect_env({"WORLD_SIZE": "2", "RANK": "1"})
    assert (env.local_rank, env.master_addr, env.master_port) == (1, "127.0.0.1", 29500)


@pytest.mark.parametrize("text, hosts", [
    ("node01", ["node01"]),
    ("node[01-04]", ["node01", "node02", "node03", "node04"]),
    ("node[08-10,12]", ["node08", "node09", "node10", "node12"]),
    ("a[1-2],b3,c[5]", ["a1", "a2", "b3", "c5"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("gpu-a100-[001-002].cluster", ["gpu-a100-001.cluster", "gpu-a100-002.cluster"]),
])
def test_expand_nodelist(text: str, hosts: list[str]) -> None:
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize("text", ["", "node[01-04", "node[a-b]"])
def test_expand_nodelist_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        expand_nodelist(text)


def test_backend_and_single_process_helpers() -> None:
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 1)) == "nccl"
    assert on_rank0(lambda: 7, rank=0, world=1) == 7


# --- 2 gloo processes ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ddp"), nodes=800, avg_degree=5, feature_dim=8, classes=3, seed=3)


# 480 training nodes in 8 batches (the last one of 32): rank 0 takes 0, 2, 4, 6 and rank 1 takes 1, 3, 5, 7
FLAGS = ["--fanouts", "3,2", "--batch-size", "64", "--epochs", "2", "--hidden", "16", "--dropout", "0",
         "--lr", "0.01", "--threads", "1", "--no-progress", "--memory-budget", "256M", "--segment-batches", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(dataset: Path, args: list[str], world: int = 2) -> list[subprocess.CompletedProcess[str]]:
    """``gnn-ooc train`` as torchrun would start it: ``world`` processes with RANK, WORLD_SIZE, ..."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        cmd = [sys.executable, "-m", "gnn_ooc.tools.cli", "train", *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def steps(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics" / "steps.jsonl").read_text().splitlines()]


def quiet(_msg: str) -> None:
    pass


Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def reference(cfg: TrainConfig, run: Path, combine: Combine) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One process, by hand: each step takes rank 0's and rank 1's batch, the gradient of each,
    and steps on ``combine(g0, g1)``. Returns the final parameters and rank 0's losses."""
    ds = Dataset.open(cfg.dataset)
    _seed_everything(cfg.seed, 1)
    sources = [build_sources(cfg, ds, "memory", run, 0, quiet, rank, 2) for rank in (0, 1)]
    model, optimizer, _ = build_model(cfg, ds, torch.device("cpu"))
    losses = []
    for epoch in range(cfg.epochs):
        per_rank = [list(iter_batches(train, epoch)) for train, _ in sources]
        assert len(per_rank[0]) == len(per_rank[1])  # equal steps on every rank
        for b0, b1 in zip(*per_rank):
            (l0, g0), (_, g1) = gradient(model, b0), gradient(model, b1)
            for p, a, b in zip(model.parameters(), g0, g1):
                p.grad = combine(a, b)
            optimizer.step()
            losses.append(l0)
    for train, evals in sources:
        train.close()
        for src in evals.values():
            src.close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def gradient(model: torch.nn.Module, batch: TrainBatch) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(list(batch.blocks), batch.x), batch.y)
    loss.backward()
    return float(loss.detach()), [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_gloo_processes_agree_with_averaged_gradients(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ranks = launch(dataset, [str(dataset), "--out", str(run), *FLAGS])
    for r in ranks:
        assert r.returncode == 0, r.stderr[-3000:]
    # logging on rank 0 only; both report the same number of steps
    assert "epoch 1:" in ranks[0].stdout + ranks[0].stderr
    assert "epoch 0:" not in ranks[1].stdout + ranks[1].stderr
    assert "training sage" not in ranks[1].stdout + ranks[1].stderr
    # rank 0 reports for the job; rank 1 finishing at all means it ran the same 8 all-reduced steps
    assert "epochs 2, steps 8" in ranks[0].stdout and ranks[1].stdout == ""
    # only rank 0 wrote metrics: each step once, with rank 0's batches of each epoch
    got = steps(run)
    assert [r["step"] for r in got] == list(range(1, 9))
    assert [r["batch"] for r in got] == rank_batches(8, 0, 2).tolist() * 2
    assert json.loads((run / "summary.json").read_text())["steps"] == 8
    # a plan per rank, each released epoch by epoch, and removed with its packs once the run is done
    assert not list((dataset / "plans").iterdir())

    cfg = TrainConfig.resolve({**TrainConfig.load(run / "config.yaml").to_dict(), "threads": 1})
    trained = load_checkpoint(latest_checkpoint(run))["model"]
    expected, losses = reference(cfg, run, lambda a, b: (a + b) / 2)
    assert distance(trained, expected) < 1e-5
    assert np.allclose([r["loss"] for r in got], losses, atol=1e-5)  # rank 0's local loss, step by step
    # the tolerance tells a wrong split apart: rank 0's gradient alone (no averaging across ranks),
    # or rank 1 stepping on rank 0's batches. (Summing instead of averaging is invisible under Adam,
    # which divides the scale out, so it is not a control here.)
    assert distance(trained, reference(cfg, run, lambda a, b: a)[0]) > 1e-3
    assert distance(trained, reference(cfg, run, lambda a, b: b)[0]) > 1e-3
    # each rank evaluated half of the validation batches; the accuracy reported is over all of them
    ds = Dataset.open(cfg.dataset)
    _, evals = build_sources(cfg, ds, "memory", run, 0, quiet, 0, 1)
    model, _, _ = build_model(cfg, ds, torch.device("cpu"))
    model.load_state_dict(trained)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for b in iter_batches(evals["valid"], 0):
            correct += int((model(list(b.blocks), b.x).argmax(1) == b.y).sum())
            total += b.num_seeds
    assert total == len(ds.split("valid"))
    last = json.loads((run / "summary.json").read_text())["epochs"][-1]
    assert last["valid_acc"] == pytest.approx(correct / total, abs=1e-12)

    # an error on rank 0 (the run exists) fails rank 1 too, instead of leaving it waiting
    again = launch(dataset, [str(dataset), "--out", str(run), *FLAGS])
    assert all(r.returncode != 0 for r in again)
    assert "holds a run already" in again[1].stderr + again[1].stdout


def test_two_gloo_processes_resume_mid_epoch(dataset: Path, tmp_path: Path) -> None:
    """Stopped after 3 of 8 steps (mid-epoch 0, offline), then ``--resume``d by both ranks: the
    steps and losses equal an uninterrupted 2-process run, with dropout on: each rank resumes its
    own random states (rank 1 taking rank 0's would draw other dropout masks)."""
    full, part = tmp_path / "full", tmp_path / "part"
    flags = [*FLAGS, "--dropout", "0.5"]  # the last --dropout wins
    for r in launch(dataset, [str(dataset), "--out", str(full), *flags]):
        assert r.returncode == 0, r.stderr[-3000:]
    for r in launch(dataset, [str(dataset), "--out", str(part), *flags, "--max-steps", "3"]):
        assert r.returncode == 0, r.stderr[-3000:]
    assert len(steps(part)) == 3
    for r in launch(dataset, ["--resume", str(part), "--max-steps", "1000"]):
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = steps(full), steps(part)
    assert [r["step"] for r in b] == list(range(1, 9)) and [r["batch"] for r in b] == [r["batch"] for r in a]
    assert np.allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=0, atol=1e-6)
    ckpt = load_checkpoint(latest_checkpoint(part))
    assert len(ckpt["random_ranks"]) == 2 and ckpt["random_ranks"][0]["torch"].shape == ckpt["random"]["torch"].shape
    # the epoch's loss is the mean over both ranks' batches; valid accuracy is over every batch
    epochs = [json.loads(line) for line in (full / "metrics" / "epochs.jsonl").read_text().splitlines()]
    assert epochs[-1]["loss"] != pytest.approx(np.mean([r["loss"] for r in a[4:]]), abs=1e-9)


def test_gpu_per_local_rank() -> None:
    assert [gpu_for(r, 4) for r in range(4)] == [0, 1, 2, 3] and gpu_for(2, 1) == 0
    with pytest.raises(ConfigError, match="sees 2 GPUs"):
        gpu_for(2, 2)
