"""Never delete or overwrite what gnn-ooc did not create (promise 1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.robustness.conftest import TRAIN, listing


def _user_folder(path: Path) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir(exist_ok=True)
    (path / "data" / "edges.csv").write_text("0,1\n")
    return listing(path)


@pytest.mark.parametrize("force", [False, True])
def test_preprocess_never_replaces_its_input_or_a_user_folder(cli, raw: Path, tmp_path: Path, force: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    before = listing(raw)
    flags = ["--force"] if force else []
    for out in (raw, raw.parent, raw / "ds"):  # the input, above it, inside it
        r = cli("preprocess", raw, "-o", out, *flags)
        assert r.code == 2 and r.one_line and "input" in r.err, r.err
    monkeypatch.chdir(raw.parent)
    r = cli("preprocess", raw, "-o", ".", *flags)
    assert r.code == 2 and r.one_line
    mine = tmp_path / "mine"
    kept = _user_folder(mine)
    r = cli("preprocess", raw, "-o", mine, *flags)
    assert r.code == 2 and r.one_line and "not a gnn-ooc dataset" in r.err and str(mine) in r.err
    assert listing(raw) == before and listing(mine) == kept  # nothing touched
    assert not [p for p in raw.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_force_rebuild_keeps_runs_plans_and_user_files(cli, raw: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    assert cli("preprocess", raw, "-o", ds).code == 0
    assert cli("train", ds, "--epochs", "1", *TRAIN, "--out", ds / "runs" / "r1").code == 0
    assert cli("sample", ds, "--fanouts", "3", "--name", "mine", "--batch-size", "64", "--no-progress").code == 0
    (ds / "notes.txt").write_text("mine")
    (ds / "split" / "extra.npy").write_bytes(b"mine")
    r = cli("preprocess", raw, "-o", ds, "--force")
    assert r.code == 0, r.err
    assert (ds / "runs" / "r1" / "config.yaml").is_file() and (ds / "plans" / "mine" / "plan.json").is_file()
    assert (ds / "notes.txt").read_text() == "mine" and (ds / "split" / "extra.npy").read_bytes() == b"mine"
    assert "kept" in r.err and "runs" in r.err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]


def test_synth_overwrite_replaces_only_a_generated_graph(cli, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    kept = _user_folder(mine)
    r = cli("synth", mine, "--nodes", "100", "--overwrite")
    assert r.code == 2 and r.one_line and listing(mine) == kept
    gen = tmp_path / "gen"
    assert cli("synth", gen, "--nodes", "100").code == 0
    (gen / "notes.txt").write_text("mine")
    assert cli("synth", gen, "--nodes", "120", "--overwrite").code == 0
    assert (gen / "notes.txt").read_text() == "mine" and (gen / "synth.json").is_file()


def test_embed_never_replaces_the_run_the_dataset_or_a_user_folder(cli, dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", dataset, "--epochs", "1", *TRAIN, "--out", run).code == 0
    run_files, ds_files = listing(run), listing(dataset)
    mine = tmp_path / "mine"
    kept = _user_folder(mine)
    for out in (run, dataset, tmp_path, mine):
        r = cli("embed", run, "-o", out, "--no-progress")
        assert r.code == 2 and r.one_line, (out, r.err)
    assert listing(run) == run_files and listing(dataset) == ds_files and listing(mine) == kept
    emb = tmp_path / "emb"
    assert cli("embed", run, "-o", emb, "--no-progress").code == 0
    assert cli("embed", run, "-o", emb, "--no-progress").code == 0  # an embedding folder: replaced


def test_names_cannot_leave_the_dataset(cli, dataset: Path, tmp_path: Path) -> None:
    assert cli("sample", dataset, "--fanouts", "3", "--batch-size", "64", "--no-progress").code == 0
    for name in ("../../../../x", "a/b", "..", ".hidden", "-x"):
        r = cli("pack", dataset, f"--name={name}", "--no-progress")
        assert r.code == 2 and r.one_line and "pack name" in r.err, r.err
        r = cli("sample", dataset, "--fanouts", "3", f"--name={name}", "--no-progress")
        assert r.code == 2 and r.one_line and "plan name" in r.err, r.err
    assert not (tmp_path / "x").exists() and not (dataset.parent.parent / "x").exists()


def test_sample_never_replaces_a_user_folder_under_plans(cli, dataset: Path) -> None:
    mine = dataset / "plans" / "mine"
    kept = _user_folder(mine)
    r = cli("sample", dataset, "--fanouts", "3", "--name", "mine", "--force", "--no-progress")
    assert r.code == 2 and r.one_line and listing(mine) == kept


def test_train_out_must_be_new_empty_or_a_run(cli, dataset: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    kept = _user_folder(mine)
    r = cli("train", dataset, "--epochs", "1", *TRAIN, "--out", mine)
    assert r.code == 2 and r.one_line and listing(mine) == kept
    r = cli("train", dataset, "--epochs", "1", *TRAIN, "--out", dataset)
    assert r.code == 2 and r.one_line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("train", dataset, "--epochs", "1", *TRAIN, "--out", empty).code == 0


def test_a_symlinked_output_is_refused(cli, raw: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    kept = _user_folder(target)
    link = tmp_path / "link"
    os.symlink(target, link)
    r = cli("preprocess", raw, "-o", link)
    assert r.code == 2 and r.one_line and listing(target) == kept
