"""Deterministic gather and per-destination sum: equal to index ops, and the same bits every run."""

from __future__ import annotations

import pytest
import torch

from gnn_ooc.trainer.aggregate import gather_rows, sorted_gather_rows, sorted_sum_into, sum_into

PATHS = {"cpu": (gather_rows, sum_into), "sorted": (sorted_gather_rows, sorted_sum_into)}  # sorted: CUDA's


def _problem(seed: int, rows: int = 3000, edges: int = 60000, width: int = 64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g)
    src = torch.randint(0, rows, (edges,), generator=g)
    dst = torch.randint(0, rows // 3, (edges,), generator=g)
    return x, src, dst


def _run(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    gather, add = PATHS[path]
    leaf = x.clone().requires_grad_(True)
    out = add(gather(leaf, src) * 1.5, dst, x.shape[0] // 3 + 5)  # trailing rows have no edge
    # random gradients: sums of small integers would come out exact in any order
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(7)))
    assert leaf.grad is not None
    return out.detach(), leaf.grad


@pytest.mark.parametrize("path", sorted(PATHS))
def test_equals_index_add(path: str) -> None:
    x, src, dst = _problem(0)
    out, grad = _run(x, src, dst, path)
    ref_leaf = x.clone().requires_grad_(True)
    ref = torch.zeros(out.shape).index_add_(0, dst, ref_leaf[src] * 1.5)
    ref.backward(torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)))
    assert torch.allclose(out, ref, atol=1e-4) and torch.allclose(grad, ref_leaf.grad, atol=1e-4)
    assert bool((out[-5:] == 0).all())


@pytest.mark.parametrize("path", sorted(PATHS))
def test_bit_identical_across_runs_and_thread_counts(path: str) -> None:
    x, src, dst = _problem(1)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (2, 2, 1, 2):
            torch.set_num_threads(threads)
            results.append(_run(x, src, dst, path))
    finally:
        torch.set_num_threads(before)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_and_shapes(dtype: torch.dtype, path: str) -> None:
    values = torch.arange(24, dtype=dtype).reshape(6, 2, 2)  # [E, heads, D]
    index = torch.tensor([2, 0, 2, 1, 0, 2])
    out = PATHS[path][1](values, index, 4)
    assert out.dtype == dtype and out.shape == (4, 2, 2)
    assert torch.equal(out.double(), torch.zeros(4, 2, 2, dtype=torch.float64).index_add_(0, index, values.double()))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_no_edges(path: str) -> None:
    out = PATHS[path][1](torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 4)
    assert torch.equal(out, torch.zeros(4, 3))
