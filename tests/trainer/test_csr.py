"""Compressed-row message passing against a dense reference: values and gradients, on blocks with
empty rows, duplicate edges, self loops and destinations without in-edges; the same bits whatever
the thread count."""

from __future__ import annotations

import numba
import pytest
import torch

from gnn_ooc.trainer.csr import BlockCSR, segment_max, spmm


def random_block(seed: int, num_src: int = 40, num_dst: int = 12, edges: int = 90) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_src, (edges,), generator=g)
    dst = torch.randint(0, num_dst - 3, (edges,), generator=g)  # the last 3 destinations get no edge
    src = torch.cat([src, src[:5], torch.arange(4)])  # duplicate edges and self loops
    dst = torch.cat([dst, dst[:5], torch.arange(4)])
    return src, dst, torch.tensor(num_src), torch.tensor(num_dst)


def dense(src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int, weight: torch.Tensor | None,
          x: torch.Tensor, heads: int) -> torch.Tensor:
    """The product with a dense ``[heads, num_dst, num_src]`` matrix, in float64."""
    w = torch.ones(src.numel(), heads, dtype=torch.float64) if weight is None else weight.double().view(-1, heads)
    a = torch.zeros(heads, num_dst, num_src, dtype=torch.float64)
    a.index_put_((torch.arange(heads).repeat(src.numel()), dst.repeat_interleave(heads),
                  src.repeat_interleave(heads)), w.flatten(), accumulate=True)
    xh = x.double().view(num_src, heads, -1).transpose(0, 1)
    return torch.bmm(a, xh).transpose(0, 1).reshape(num_dst, -1)


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_values_and_gradients_match_the_dense_product(heads: int, weighted: bool, seed: int) -> None:
    src, dst, ns, nd = random_block(seed)
    num_src, num_dst = int(ns), int(nd)
    g = torch.Generator().manual_seed(seed + 10)
    x = torch.randn(num_src, heads * 5, generator=g, dtype=torch.float64, requires_grad=True)
    shape = (src.numel(),) if heads == 1 else (src.numel(), heads)
    w = torch.rand(*shape, generator=g, dtype=torch.float64, requires_grad=True) if weighted else None
    out = spmm(BlockCSR.of(src, dst, num_src, num_dst), w, x)
    ref = dense(src, dst, num_src, num_dst, w, x, heads)
    torch.testing.assert_close(out, ref)
    assert out[-3:].abs().sum() == 0  # destinations without edges
    up = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, [x] + ([w] if w is not None else []), up)
    want = torch.autograd.grad(ref, [x] + ([w] if w is not None else []), up)
    for got, exp in zip(grads, want):
        torch.testing.assert_close(got, exp)


def test_float32_and_bfloat16_follow_the_reference() -> None:
    src, dst, ns, nd = random_block(3, num_src=300, num_dst=80, edges=2000)
    csr = BlockCSR.of(src, dst, int(ns), int(nd))
    x = torch.randn(int(ns), 16)
    ref = dense(src, dst, int(ns), int(nd), None, x, 1)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        out = spmm(csr, None, x.to(dtype))
        assert out.dtype == dtype
        assert ((out.double() - ref).norm() / ref.norm()).item() < tol


def test_the_same_bits_with_one_and_two_threads() -> None:
    src, dst, ns, nd = random_block(4, num_src=5000, num_dst=1000, edges=40000)
    csr = BlockCSR.of(src, dst, int(ns), int(nd))
    x = torch.randn(int(ns), 64, requires_grad=True)
    w = torch.rand(src.numel(), 2, requires_grad=True)
    runs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2, 1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            out = spmm(csr, w, x)
            gx, gw = torch.autograd.grad((out * out).sum(), [x, w])
            runs.append((out, gx, gw))
    finally:
        numba.set_num_threads(before)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


def test_a_block_without_edges_and_bad_shapes() -> None:
    empty = torch.zeros(0, dtype=torch.int64)
    csr = BlockCSR.of(empty, empty, 4, 2)
    x = torch.randn(4, 3, requires_grad=True)
    out = spmm(csr, None, x)
    assert out.shape == (2, 3) and not out.any()
    (grad,) = torch.autograd.grad(out.sum(), [x])
    assert not grad.any()
    with pytest.raises(ValueError, match="does not fit"):
        spmm(csr, None, torch.randn(5, 3))


@pytest.mark.parametrize("seed", [0, 1])
def test_segment_max_matches_amax_and_its_gradient(seed: int) -> None:
    src, dst, ns, nd = random_block(seed)
    x = torch.randn(int(ns), 7, dtype=torch.float64, requires_grad=True)
    out = segment_max(BlockCSR.of(src, dst, int(ns), int(nd)), x)
    index = dst.view(-1, 1).expand(-1, 7)
    ref = x.new_zeros(int(nd), 7).scatter_reduce(0, index, x[src], "amax", include_self=False)
    torch.testing.assert_close(out, ref)
    assert out[-3:].abs().sum() == 0
    up = torch.randn(out.shape, dtype=torch.float64)
    # random values have no ties (duplicate edges repeat one source: its gradient counts once either way)
    got = torch.autograd.grad(out, x, up)[0]
    want = torch.autograd.grad(ref, x, up)[0]
    torch.testing.assert_close(got, want)
