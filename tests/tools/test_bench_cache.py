"""bench.cache deletes only what it made: a plan folder already under its name is never touched."""

from __future__ import annotations

from pathlib import Path

from gnn_ooc.tools.bench import cache

SMALL = ["--graphs", "weak", "--nodes", "20000", "--sizes", "5", "--belady-batches", "4", "--batch-size", "256"]


def test_a_run_leaves_no_plan_and_a_users_folder_under_its_name_survives(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert cache.main([*SMALL, "--work", str(work)]) == 0
    plans = work / "dataset" / "plans"
    assert not (plans / cache.PLAN).exists()  # its own plan (and packs) removed
    mine = plans / cache.PLAN
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    assert cache.main([*SMALL, "--work", str(work)]) == 2  # refused, in one line
    assert (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
