from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_ooc.graphstore.format.base import DATA_ALIGNMENT
from gnn_ooc.graphstore.format.npyfile import (
    NpyWriter,
    crc32_combine,
    file_checksum,
    format_checksum,
    npy_header,
)


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32_combine_equals_crc_of_concatenation(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_header_is_one_aligned_block() -> None:
    for dtype, shape in [(np.float32, (10, 3)), (np.int64, (0,)), (np.uint16, (2**40, 1024))]:
        assert len(npy_header(np.dtype(dtype), shape)) == DATA_ALIGNMENT


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=6), st.sampled_from(["<f4", "<i8", "<i4", "<u2"]), st.integers(1, 4))
def test_streamed_file_loads_with_numpy_and_checksums_match(sizes: list[int], dtype: str, dim: int) -> None:
    path = Path(tempfile.mkdtemp()) / "a.npy"
    blocks = [np.arange(k * dim).reshape(k, dim).astype(dtype) for k in sizes]
    with NpyWriter(path, dtype, (None, dim)) as w:
        for b in blocks:
            w.write(b)
    expected = np.concatenate(blocks) if blocks else np.empty((0, dim), dtype)
    loaded = np.load(path, mmap_mode="r")
    assert loaded.shape == expected.shape and np.array_equal(loaded, expected)
    assert loaded.offset == DATA_ALIGNMENT
    assert w.entry is not None and w.entry.size == path.stat().st_size
    assert w.entry.checksum == file_checksum(path) == format_checksum(zlib.crc32(path.read_bytes()))


def test_declared_row_count_is_enforced(tmp_path: Path) -> None:
    w = NpyWriter(tmp_path / "a.npy", np.int64, (3,))
    w.write(np.arange(2))
    try:
        w.close()
    except ValueError as e:
        assert "wrote 2 rows, expected 3" in str(e)
    else:
        raise AssertionError("short write accepted")
