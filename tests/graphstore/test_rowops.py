"""put_rows / move_rows: the numba one-copy path and the torch fallback agree with indexing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnn_ooc.graphstore.io.rowops import move_rows, put_rows


def _source(rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.arange(rows * width, dtype=torch.float64).reshape(rows, width) % 251).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.uint8, torch.int64])
@pytest.mark.parametrize("width", [1, 3, 5, 8, 13])
def test_move_rows_matches_indexing(dtype: torch.dtype, width: int) -> None:
    src = _source(40, width, dtype)
    gen = torch.Generator().manual_seed(width)
    src_idx = torch.randint(0, 40, (25,), generator=gen)
    dst_idx = torch.randperm(30, generator=gen)[:25]
    out = torch.zeros(30, width, dtype=dtype)
    move_rows(src, src_idx, out, dst_idx)
    want = torch.zeros(30, width, dtype=dtype)
    want[dst_idx] = src[src_idx]
    assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_put_rows_matches_indexing(dtype: torch.dtype) -> None:
    rows = _source(6, 7, dtype)
    out = torch.zeros(10, 7, dtype=dtype)
    put_rows(out, np.array([9, 0, 4, 2, 7, 1]), rows)
    want = torch.zeros(10, 7, dtype=dtype)
    want[[9, 0, 4, 2, 7, 1]] = rows
    assert torch.equal(out, want)


def test_put_rows_converts_dtype_and_handles_non_contiguous_rows() -> None:
    rows = _source(8, 6, torch.float32)[:, ::2]  # not contiguous: the torch path
    out = torch.zeros(5, 3, dtype=torch.float16)
    put_rows(out, torch.tensor([4, 3, 2, 1, 0, 0, 1, 2])[:8], rows)
    # duplicate destinations: the last row written wins on both paths
    assert out.shape == (5, 3) and out.dtype == torch.float16
    assert torch.equal(out[4], rows[0].half())


@pytest.mark.parametrize("src_idx, dst_idx", [([0, 40], [0, 1]), ([0, 1], [0, 30]), ([-1], [0]), ([0], [-1])])
def test_out_of_range_rows_raise_index_error_naming_the_row(src_idx: list[int], dst_idx: list[int]) -> None:
    src, out = _source(40, 4, torch.float32), torch.zeros(30, 4)
    with pytest.raises(IndexError, match="out of range"):
        move_rows(src, torch.tensor(src_idx), out, torch.tensor(dst_idx))


def test_mismatched_counts_raise() -> None:
    with pytest.raises(IndexError, match="destination rows"):
        put_rows(torch.zeros(5, 4), torch.tensor([0, 1]), torch.ones(3, 4))


def test_empty_index_is_a_no_op() -> None:
    out = torch.ones(3, 4)
    move_rows(torch.zeros(5, 4), torch.empty(0, dtype=torch.int64), out, torch.empty(0, dtype=torch.int64))
    assert torch.equal(out, torch.ones(3, 4))


def test_rows_moved_within_one_tensor_match_indexing() -> None:
    y = torch.arange(8.0).reshape(4, 2)
    want = y.clone()
    want[torch.tensor([1, 2, 3])] = want[torch.tensor([0, 1, 2])].clone()
    move_rows(y, torch.tensor([0, 1, 2]), y, torch.tensor([1, 2, 3]))
    assert torch.equal(y, want)
