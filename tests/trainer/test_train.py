"""End to end: ``train`` in every mode, exact resume (mid-epoch too), SIGKILL resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gnn_ooc.errors import MemoryBudgetError, OutputError
from gnn_ooc.trainer.config import ConfigError, TrainConfig
from gnn_ooc.trainer.pipeline import PipelineError
from gnn_ooc.trainer.run import resume, train
from tests.trainer.conftest import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train"), nodes=3000, avg_degree=6, feature_dim=16, classes=4, seed=3)


def config(ds: Path, out: Path, **kw: Any) -> TrainConfig:
    base = {"dataset": str(ds), "out": str(out), "fanouts": "5,3", "batch_size": 128, "epochs": 2, "hidden": 32,
            "lr": 0.01, "progress": False, "memory_budget": "256M", "segment_batches": 2, "threads": 1}
    return TrainConfig.resolve({**base, **kw})


def steps(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics" / "steps.jsonl").read_text().splitlines()]


def quiet(_msg: str) -> None:
    pass


def test_loss_decreases_and_summary(dataset: Path, tmp_path: Path) -> None:
    summary = train(config(dataset, tmp_path / "run", mode="memory", epochs=4), say=quiet)
    losses = [r["loss"] for r in steps(tmp_path / "run")]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["best_valid_acc"] == summary["best_valid_acc"] > 0.5
    assert {"plan", "sample", "gather", "compute"} <= set(saved["stage_seconds"])
    assert len(saved["epoch_seconds"]) == 4 and (tmp_path / "run" / "metrics" / "epochs.csv").is_file()
    # each epoch against its busiest stage: the stage named, the ratio what the times say
    for e, (bound, busiest) in enumerate(zip(saved["bound"], saved["busiest_stage"])):
        record = saved["epochs"][e]
        assert busiest in saved["stage_seconds"] and bound == record["seconds"] / record[f"{busiest}_s"]


def test_offline_online_and_mmap_train_on_the_same_batches_as_memory(dataset: Path, tmp_path: Path) -> None:
    runs = {m: tmp_path / m for m in ("memory", "offline", "online", "mmap", "external")}
    small = {"gpu_cache": "4K", "cpu_cache": "4K"}  # most rows from packed segments and disk
    said: list[str] = []
    summaries = {m: train(config(dataset, run, mode=m, **small), say=quiet) for m, run in runs.items() if m != "external"}
    # the plan (training and evaluation batches) sampled in sweeps over the topology
    summaries["external"] = train(config(dataset, runs["external"], mode="offline", topology="external", **small),
                                  say=said.append)
    assert sum("reads the topology in sweeps" in m for m in said) >= 2, said
    ref = steps(runs["memory"])
    for m in ("offline", "online", "mmap", "external"):
        got = steps(runs[m])
        assert [r["batch"] for r in got] == [r["batch"] for r in ref]
        assert np.allclose([r["loss"] for r in got], [r["loss"] for r in ref], atol=1e-5)
        assert abs(summaries[m]["best_valid_acc"] - summaries["memory"]["best_valid_acc"]) <= 0.01
    off = summaries["offline"]
    assert off["hit_rates"].get("packed", 0) > 0 and off["store"]["segment_reads"] > 0
    assert 0 < off["read_amplification"] < 1.1  # eval's random reads are counted apart
    assert off["eval_store"]["rows"] > 0
    # evaluation batches planned and packed once: read sequentially like training's
    assert off["eval_store"]["hits"].get("packed", 0) > 0 and off["eval_store"]["read_amplification"] < 1.1
    assert [e["valid_acc"] for e in off["epochs"]] == pytest.approx(
        [e["valid_acc"] for e in summaries["memory"]["epochs"]], abs=0.01)
    assert not list((dataset / "plans").glob("run-*/epoch-*"))  # every epoch released at the end
    on = summaries["online"]
    assert on["store"]["disk_rows"] > 0 and on["read_amplification"] >= 1.0  # misses through SIEVE counted
    assert summaries["memory"]["setup_seconds"] > 0 and summaries["mmap"]["hit_rates"] == {"mmap": 1.0}


def test_segments_fitted_to_the_budget_and_no_evaluation(dataset: Path, tmp_path: Path) -> None:
    """``segment_batches: 0`` packs as many batches per segment as a buffer (an eighth of the budget)
    holds; ``eval_every: 0`` never evaluates."""
    said: list[str] = []
    budget = 24 << 20
    summary = train(config(dataset, tmp_path / "run", mode="offline", segment_batches=0, memory_budget=budget,
                           eval_every=0, epochs=1), say=said.append)
    fitted = [m for m in said if "batches per segment" in m]
    assert fitted and summary["best_epoch"] == -1 and "valid_acc" not in summary["epochs"][0]
    per_segment = int(fitted[0].split()[1])
    assert 1 < per_segment < 64  # 3 MiB buffers: several batches of this graph, not all of them
    with pytest.raises(MemoryBudgetError, match="segment buffer"):
        train(config(dataset, tmp_path / "tiny", mode="offline", segment_batches=0, memory_budget=16 << 10,
                     epochs=1), say=quiet)


@pytest.mark.parametrize("mode, threads", [("memory", 1), ("offline", 1), ("memory", 2)])
def test_exact_resume_mid_epoch(dataset: Path, tmp_path: Path, mode: str, threads: int) -> None:
    """Bit for bit, with two threads too (the backward of ``x[src]`` once summed in a varying order)."""
    kw: dict[str, Any] = {"mode": mode, "epochs": 3, "threads": threads}
    if threads > 1:
        kw.update(model="gcn", batch_size=512, hidden=128, fanouts="10,10")  # gathers with gradients, in parallel
    full = tmp_path / "full"
    train(config(dataset, full, **kw), say=quiet)
    part = tmp_path / "part"
    train(config(dataset, part, max_steps=5 if threads > 1 else 11, checkpoint_every=2 if threads > 1 else 4, **kw),
          say=quiet)
    assert len(steps(part)) == (5 if threads > 1 else 11)
    resume(part, {"max_steps": 10**9}, say=quiet)
    a, b = steps(full), steps(part)
    assert [r["step"] for r in b] == list(range(1, len(a) + 1))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit for bit


def test_the_future_aware_cache_trains_on_the_memory_bits_and_resumes_exactly(
        dataset: Path, tmp_path: Path) -> None:
    """``--cache future``: the same losses as ``--mode memory`` bit for bit (only where rows come
    from changes; the cache serves some; its rows carry over from epoch to epoch), and a run
    stopped mid-epoch rebuilds the cache's contents from the start its pack records and a replay
    (a pack's fills would not match a cache in another state: the run would fail) and repeats the
    same losses. Whether it packs less than static placement is the ablation benchmark's question."""
    same_memory = {"mode": "offline", "gpu_cache": "48K", "cpu_cache": "16K", "epochs": 2}
    memory = train(config(dataset, tmp_path / "memory", mode="memory", epochs=2), say=quiet)
    future = train(config(dataset, tmp_path / "future", cache="future", cache_window=8, **same_memory), say=quiet)
    losses = [r["loss"] for r in steps(tmp_path / "memory")]
    assert [r["loss"] for r in steps(tmp_path / "future")] == losses
    assert future["best_valid_acc"] == memory["best_valid_acc"]
    assert future["store"]["hits"]["device"] > 0
    stop = len(losses) // 2 + 3  # mid-epoch 1: its cache carried over from epoch 0, then replayed
    part = tmp_path / "part"
    train(config(dataset, part, cache="future", cache_window=8, max_steps=stop, checkpoint_every=4, **same_memory),
          say=quiet)
    resume(part, {"max_steps": 10**9}, say=quiet)
    assert [r["loss"] for r in steps(part)] == losses
    with pytest.raises(ConfigError, match="cache: future follows a plan"):
        config(dataset, tmp_path / "x", mode="online", cache="future")


def test_sigkill_resumes_from_last_checkpoint(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gnn_ooc.tools.cli", "train", str(dataset), "--out", str(run), "--mode", "memory",
           "--fanouts", "5,3", "--batch-size", "64", "--epochs", "50", "--hidden", "32", "--threads", "1",
           "--checkpoint-every", "3", "--no-progress", "--lr", "0.01", "--memory-budget", "256M"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((run / "checkpoints").glob("step-*.pt"))) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(steps(run))
    ckpt = max(int(p.stem[5:]) for p in (run / "checkpoints").glob("step-*.pt"))
    assert ckpt <= done_before
    resume(run, {"epochs": 3}, say=quiet)
    got = steps(run)
    assert [r["step"] for r in got] == list(range(1, len(got) + 1))  # no step twice, none missing
    reference = tmp_path / "reference"
    train(config(dataset, reference, mode="memory", epochs=3, batch_size=64), say=quiet)
    assert [r["loss"] for r in got] == [r["loss"] for r in steps(reference)]


def test_failing_stage_surfaces_without_hanging(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gnn_ooc.trainer.assemble import BatchAssembler

    def broken(self: Any, *args: Any) -> Any:
        raise OSError("feature file vanished")

    monkeypatch.setattr(BatchAssembler, "assemble", broken)
    t0 = time.perf_counter()
    with pytest.raises(PipelineError, match="gather.*feature file vanished"):
        train(config(dataset, tmp_path / "run", mode="memory"), say=quiet)
    assert time.perf_counter() - t0 < 60
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("gnn-ooc-")]


def test_config_errors(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fanouts"):
        config(dataset, tmp_path, fanouts="0")
    with pytest.raises(ConfigError, match="unknown setting 'lr_rate'"):
        TrainConfig.resolve({"dataset": "x", "lr_rate": 1})
    with pytest.raises(ConfigError, match="mode: 'disk'"):
        TrainConfig.resolve({"dataset": "x"}, {"mode": "disk"})
    train(config(dataset, tmp_path / "r", mode="memory", epochs=1), say=quiet)
    with pytest.raises(OutputError, match="--resume"):
        train(config(dataset, tmp_path / "r", mode="memory", epochs=1), say=quiet)
    with pytest.raises(ConfigError, match="cannot change: lr"):
        resume(tmp_path / "r", {"lr": 0.1}, say=quiet)


def test_failing_assembly_while_reads_wait_for_buffers(dataset: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The read stage blocks on the two segment buffers that a failed assembly never returns: closing
    the pipeline must still stop it (the buffer pool watches the pipeline's stop flag)."""
    import threading

    from gnn_ooc.trainer.assemble import BatchAssembler

    def broken(self: Any, *args: Any) -> Any:
        time.sleep(0.5)  # long enough for the read stage to take both buffers and wait
        raise OSError("assembly failed")

    monkeypatch.setattr(BatchAssembler, "assemble", broken)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            train(config(dataset, tmp_path / "run", mode="offline", segment_batches=1, gpu_cache="4K",
                         cpu_cache="4K"), say=quiet)
        except BaseException as e:  # noqa: B902 - the test inspects whatever ends the run
            failure.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=90)
    assert not worker.is_alive(), "the run hung after a stage failed"
    assert failure and isinstance(failure[0], PipelineError) and "assembly failed" in str(failure[0])


def test_half_precision_features_train_in_fp32(tmp_path: Path) -> None:
    """float16 features (``synth --feature-dtype float16``, kept by ``preprocess --feature-dtype float16``)
    train an fp32 model in every mode, on the same batches and losses as each other."""
    from gnn_ooc.graphstore.format.dataset import Dataset
    from gnn_ooc.graphstore.ingest.base import PreprocessSpec
    from gnn_ooc.graphstore.ingest.preprocess import preprocess
    from gnn_ooc.tools.synth import SynthConfig, synth

    raw = tmp_path / "raw"
    synth(raw, SynthConfig(nodes=1500, avg_degree=5, feature_dim=8, classes=3, seed=1, feature_dtype="float16"))
    assert np.load(raw / "node_features.npy").dtype == np.float16
    preprocess(PreprocessSpec(output=tmp_path / "ds", edges=(raw / "edges.parquet",), undirected=True,
                              features=raw / "node_features.npy", labels=raw / "node_labels.npy",
                              split_dir=raw / "split", feature_dtype="float16"))
    assert Dataset.open(tmp_path / "ds").feature_dtype == "float16"
    losses = {}
    for mode in ("memory", "offline", "online"):
        train(config(tmp_path / "ds", tmp_path / mode, mode=mode, epochs=1), say=quiet)
        losses[mode] = [r["loss"] for r in steps(tmp_path / mode)]
    assert all(np.isfinite(v).all() for v in losses.values())
    assert np.allclose(losses["offline"], losses["memory"], atol=1e-5)
    assert np.allclose(losses["online"], losses["memory"], atol=1e-5)
