"""Never train on bytes we have not checked (promise 2): each damage is found and named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gnn_ooc.errors import ChecksumError
from tests.robustness.conftest import TRAIN, edit_consistently, flip_byte


@pytest.mark.parametrize("mode", ["offline", "online", "memory", "mmap"])
def test_a_flipped_feature_byte_stops_training_in_every_mode(cli, dataset: Path, tmp_path: Path, mode: str) -> None:
    flip_byte(dataset / "features.npy")
    r = cli("train", dataset, "--mode", mode, "--epochs", "1", *TRAIN, "--out", tmp_path / "run")
    assert r.code == 1 and r.one_line and "features.npy" in r.err and "checksum" in r.err, r.err
    assert not (tmp_path / "run" / "checkpoints").exists()  # not one step trained


def test_a_flipped_topology_byte_is_named_by_train_sample_and_embed(cli, dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", dataset, "--epochs", "1", *TRAIN, "--out", run).code == 0
    flip_byte(dataset / "indices.npy")
    for argv in (["train", dataset, "--epochs", "1", *TRAIN, "--out", tmp_path / "r2"],
                 ["sample", dataset, "--fanouts", "3", "--no-progress"],
                 ["embed", run, "-o", tmp_path / "emb", "--no-progress"]):
        r = cli(*argv)
        assert r.code == 1 and r.one_line and "indices.npy" in r.err, (argv[0], r.err)


def test_structure_is_checked_even_when_the_manifest_agrees(cli, dataset: Path, tmp_path: Path) -> None:
    """A damaged file whose manifest was rewritten to match (a crafted or confused manifest): the
    structural checks catch an id out of range before the sampler reads past the node count."""
    edit_consistently(dataset, "indices", 5, 10**6)
    r = cli("train", dataset, "--epochs", "1", *TRAIN, "--out", tmp_path / "run")
    assert r.code == 1 and r.one_line and "indices.npy" in r.err and "position 5" in r.err, r.err


def test_a_segment_damaged_after_packing_stops_training(dataset: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from gnn_ooc.trainer import run as run_module
    from gnn_ooc.trainer.config import TrainConfig

    real = run_module.pack_epoch

    def pack_then_damage(plan, epoch, *args, **kw):  # type: ignore[no-untyped-def]
        stats = real(plan, epoch, *args, **kw)
        for seg in (plan.path / "packs").glob(f"*/epoch-{epoch:06d}/segment-*.npy"):
            flip_byte(seg)
        return stats

    monkeypatch.setattr(run_module, "pack_epoch", pack_then_damage)
    cfg = TrainConfig.resolve({"dataset": str(dataset), "out": str(tmp_path / "run"), "epochs": 1,
                               "fanouts": "4,3", "batch_size": 64, "hidden": 16, "progress": False,
                               "memory_budget": "64M", "gpu_cache": "4K", "cpu_cache": "4K", "eval_every": 0})
    with pytest.raises(ChecksumError, match=r"segment-\d+\.npy: checksum"):
        run_module.train(cfg, say=lambda _m: None)


def test_verify_covers_plans_packs_and_checkpoints(cli, dataset: Path, tmp_path: Path) -> None:
    assert cli("sample", dataset, "--fanouts", "3", "--batch-size", "64", "--no-progress").code == 0
    assert cli("pack", dataset, "--segment-batches", "2", "--gpu-cache", "4K", "--cpu-cache", "4K",
               "--no-progress").code == 0
    run = dataset / "runs" / "r"
    assert cli("train", dataset, "--epochs", "1", *TRAIN, "--out", run).code == 0
    assert cli("verify", dataset).code == 0
    targets = [dataset / "plans" / "default" / "epoch-000000" / "rows.npy",
               next((dataset / "plans" / "default" / "packs" / "default" / "epoch-000000").glob("segment-*.npy")),
               next((run / "checkpoints").glob("step-*.pt"))]
    for path in targets:
        flip_byte(path, at=path.stat().st_size // 2)
        r = cli("verify", dataset)
        assert r.code == 1 and str(path.name) in r.err, (path, r.err)
        flip_byte(path, at=path.stat().st_size // 2)  # undo
    assert cli("verify", dataset).code == 0


def test_sample_replans_a_damaged_epoch_and_pack_refuses_one(cli, dataset: Path) -> None:
    assert cli("sample", dataset, "--fanouts", "3", "--batch-size", "64", "--no-progress").code == 0
    rows = dataset / "plans" / "default" / "epoch-000000" / "rows.npy"
    good = rows.read_bytes()
    flip_byte(rows)
    r = cli("pack", dataset, "--no-progress")
    assert r.code == 1 and r.one_line and "rows.npy" in r.err, r.err
    r = cli("sample", dataset, "--fanouts", "3", "--batch-size", "64", "--no-progress")
    assert r.code == 0 and "damaged" in r.err
    assert rows.read_bytes() == good  # planned again: the same batches, byte for byte


def test_a_damaged_checkpoint_is_not_resumed(cli, dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", dataset, "--epochs", "2", *TRAIN, "--out", run).code == 0
    newest = max((run / "checkpoints").glob("step-*.pt"))
    flip_byte(newest, at=newest.stat().st_size // 2)
    r = cli("train", "--resume", run, "--epochs", "3")
    assert r.code == 1 and r.one_line and newest.name in r.err and "damaged" in r.err, r.err
    r = cli("embed", run, "-o", tmp_path / "emb", "--checkpoint", "last", "--no-progress")
    assert r.code == 1 and r.one_line and newest.name in r.err


def test_a_non_finite_loss_stops_the_run_naming_the_batch_and_rows(dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that rot in memory after the checks: the loss turns NaN and the run stops, naming the
    batch and the nodes whose rows are not finite, instead of training on."""
    from gnn_ooc.graphstore.features import stores
    from gnn_ooc.trainer.base import TrainerError
    from gnn_ooc.trainer.config import TrainConfig
    from gnn_ooc.trainer.run import train

    real = stores.MemoryStore.of

    def rotten(ds):  # type: ignore[no-untyped-def]
        store = real(ds)
        store.rows[:, 3] = float("nan")
        return store

    monkeypatch.setattr(stores.MemoryStore, "of", rotten)
    cfg = TrainConfig.resolve({"dataset": str(dataset), "out": str(tmp_path / "run"), "epochs": 1, "mode": "memory",
                               "fanouts": "4,3", "batch_size": 64, "hidden": 16, "progress": False})
    with pytest.raises(TrainerError, match=r"epoch 0, batch 0 \(step 1\): the loss is nan.*nodes \["):
        train(cfg, say=lambda _m: None)


def test_a_damaged_manifest_or_truncated_file_is_one_line(cli, dataset: Path, tmp_path: Path) -> None:
    with open(dataset / "features.npy", "r+b") as f:
        f.truncate(dataset.joinpath("features.npy").stat().st_size - 100)
    r = cli("info", dataset)
    assert r.code == 1 and r.one_line and "features.npy" in r.err and "truncated" in r.err
    (dataset / "manifest.json").write_text("{ not json")
    for argv in (["info", dataset], ["verify", dataset], ["train", dataset, *TRAIN, "--out", tmp_path / "r"]):
        r = cli(*argv)
        assert r.code == 1 and r.one_line and "manifest.json" in r.err, (argv[0], r.err)
