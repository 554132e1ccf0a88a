"""RunStreams: many append streams at fixed byte ranges of a few files, O_DIRECT or not."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from gnn_ooc.graphstore.io import directio
from gnn_ooc.graphstore.io.runstreams import RunStreams

HEADER = 4096


def _layout(rng: np.random.Generator, files: int, runs: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's run, each run's file, and each run's first row within its file."""
    run_of_row = rng.integers(0, runs, rows).astype(np.int32)
    run_of_row[run_of_row < runs // 4] = runs - 1  # some runs empty, one long
    run_of_row[rng.random(rows) < 0.3] = -1  # rows no run stores
    run_file = np.sort(rng.integers(0, files, runs))
    counts = np.bincount(run_of_row[run_of_row >= 0], minlength=runs)
    first = np.zeros(runs, np.int64)
    for k in range(files):
        mine = np.flatnonzero(run_file == k)
        first[mine] = np.concatenate([[0], np.cumsum(counts[mine])[:-1]])
    return run_of_row, run_file, first


def _write(tmp_path: Path, row_bytes: int, seed: int, stage_budget: int) -> None:
    rng = np.random.default_rng(seed)
    files, runs, rows = 3, 40, 3000
    run_of_row, run_file, first = _layout(rng, files, runs, rows)
    counts = np.bincount(run_of_row[run_of_row >= 0], minlength=runs)
    data = rng.integers(0, 256, (rows, row_bytes), dtype=np.uint8)
    sizes = [HEADER + int(counts[run_file == k].sum()) * row_bytes for k in range(files)]
    headers = [bytes([k + 1]) * HEADER for k in range(files)]
    paths = [tmp_path / f"f{k}.bin" for k in range(files)]
    streams = RunStreams(paths, headers, sizes, run_file=run_file, run_start=HEADER + first * row_bytes,
                         run_end=HEADER + (first + counts) * row_bytes, row_bytes=row_bytes,
                         stage_budget=stage_budget)
    for lo in range(0, rows, 700):  # chunks, as a pass over a feature file feeds them
        hi = min(rows, lo + 700)
        keep = np.flatnonzero(run_of_row[lo:hi] >= 0)  # local ids ascending
        streams.stage(data[lo:hi], keep, run_of_row[lo:hi][keep])
    crcs = streams.close()
    for k, path in enumerate(paths):
        expected = headers[k] + b"".join(
            data[run_of_row == g].tobytes() for g in np.flatnonzero(run_file == k))
        got = path.read_bytes()
        assert got == expected
        assert crcs[k] == zlib.crc32(got[HEADER:])


@pytest.mark.parametrize("row_bytes", [1024, 12, 3, 4100])
def test_runs_land_at_their_offsets_with_their_crc(tmp_path: Path, row_bytes: int) -> None:
    _write(tmp_path, row_bytes, seed=row_bytes, stage_budget=1 << 20)  # small slots: many flushes


def test_plain_writes_where_o_direct_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directio, "o_direct_flag", lambda: 0)
    _write(tmp_path, 1024, seed=1, stage_budget=1 << 20)


def test_a_run_left_short_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    streams = RunStreams([path], [b"h" * HEADER], [HEADER + 64], run_file=np.array([0]),
                         run_start=np.array([HEADER]), run_end=np.array([HEADER + 64]), row_bytes=32)
    streams.stage(np.zeros((1, 32), np.uint8), np.array([0]), np.array([0], np.int32))
    with pytest.raises(AssertionError, match="short.bin"):
        streams.close()
