from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnn_ooc.graphstore.io.directio import SequentialWriter


@pytest.mark.parametrize("direct", [True, False])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.sampled_from([0, 1, 4095, 4096, 5000, (8 << 20) - 3, 8 << 20, 9 << 20]), min_size=1, max_size=4))
def test_bytes_round_trip(tmp_path: Path, direct: bool, sizes: list[int]) -> None:
    rng = np.random.default_rng(len(sizes))
    parts = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    path = tmp_path / "f.bin"
    w = SequentialWriter(path, direct=direct)
    for p in parts:
        w.write(p)
    total = sum(sizes)
    if total >= 4096:
        w.write_at_start(b"H" * 4096)
    w.close()
    expected = np.concatenate(parts).tobytes()
    if total >= 4096:
        expected = b"H" * 4096 + expected[4096:]
    assert path.read_bytes() == expected and os.path.getsize(path) == total


def test_no_write_after_header(tmp_path: Path) -> None:
    w = SequentialWriter(tmp_path / "f.bin")
    w.write(b"x" * 5000)
    w.write_at_start(b"h" * 4096)
    with pytest.raises(ValueError, match="write after write_at_start"):
        w.write(b"y")
    w.close()
