"""Bipartite graph convolutions in plain torch: ``conv(block, x_src)`` -> one row per destination.

Each layer reads ``x_src`` (one row per source of the ``TorchBlock``) and uses its first
``num_dst`` rows as the destinations' own features. Neighbours are summed on compressed rows
(``csr.spmm``: no per-edge message tensor), with the same bits on every run whatever the thread
count. Aggregation and projection commute (both are linear), so each layer does them in the
cheaper order for its block (``project_first``): a sampled block has several times more sources
than destinations, so aggregating the wide input rows first and projecting only the
destinations' sums usually wins, and the input features need no gradient at all.

* ``SAGEConv``: GraphSAGE, ``W_l aggr(x_u) + W_r x_v + b`` with ``aggr`` mean (default), sum or max.
* ``GCNConv``: ``D_dst^-1/2 (A + I) D_src^-1/2 X W + b`` with degrees counted on the block (DGL's
  ``GraphConv(norm="both")`` after adding self loops), or ``degree_norm="right"``: the mean.
* ``GATConv``: multi-head graph attention, heads concatenated or averaged.

GCN and GAT give every destination one self loop (edges ``v -> v`` already in the block are
dropped first, so none counts twice).

Example:
    >>> import torch
    >>> from gnn_ooc.trainer.base import TorchBlock
    >>> block = TorchBlock(torch.tensor([[1, 2], [0, 0]]), num_src=3, num_dst=1)
    >>> x = torch.randn(3, 8)
    >>> [tuple(conv(block, x).shape) for conv in (SAGEConv(8, 4), GCNConv(8, 4), GATConv(8, 4, heads=2))]
    [(1, 4), (1, 4), (1, 8)]
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gnn_ooc.trainer.aggregate import gather_rows, sum_into
from gnn_ooc.trainer.base import TorchBlock, TrainerError
from gnn_ooc.trainer.csr import BlockCSR, segment_max, spmm

__all__ = ["Dropout", "GATConv", "GCNConv", "SAGEConv", "edge_softmax", "project_first", "with_self_loops"]


class Dropout(nn.Module):
    """Inverted dropout (``nn.Dropout``'s contract) whose mask costs a quarter of the random draws.

    ``torch.bernoulli_`` draws one random number per element (21 ms for a 10 k x 128 batch of
    hidden rows here, a quarter of a GraphSAGE step); this mask reads four 16-bit uniforms out of
    each 64-bit draw of torch's generator (7 ms), so a run's seed, checkpoints and resume work as
    before. An element is kept when its uniform is at least ``round(p * 65536)`` of 65536: the
    drop probability is ``p`` to within 2**-17.

    Example:
        >>> _ = torch.manual_seed(0); drop = Dropout(0.5)
        >>> out = drop(torch.ones(10_000))
        >>> sorted(set(out.tolist())), round(float((out == 0).float().mean()), 1)
        ([0.0, 2.0], 0.5)
        >>> drop.eval()(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise TrainerError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)
        self._threshold = round(self.p * 65536) - 32768  # on the signed 16-bit uniforms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.numel() == 0:
            return x
        words = torch.randint(-(1 << 63), (1 << 63) - 1, (-(-x.numel() // 4),), dtype=torch.int64, device=x.device)
        keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= self._threshold
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))  # 3x faster than torch.where, backward included

    def extra_repr(self) -> str:
        return f"p={self.p}"


def with_self_loops(block: TorchBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """``(src, dst)`` of the block's edges without its self loops, plus one ``v -> v`` per destination.

    Example:
        >>> b = TorchBlock(torch.tensor([[0, 2], [0, 0]]), num_src=3, num_dst=1)
        >>> [t.tolist() for t in with_self_loops(b)]
        [[2, 0], [0, 0]]
    """
    src, dst = block.edge_index
    keep = src != dst
    loops = torch.arange(block.num_dst, device=src.device)
    return torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])


def edge_softmax(scores: torch.Tensor, dst: torch.Tensor, num_dst: int) -> torch.Tensor:
    """Softmax of ``scores`` (``[E]`` or ``[E, H]``) over the edges into each destination.

    The maximum per destination is subtracted first (no overflow); it is a constant shift, so
    it carries no gradient. A destination without edges simply has no weights.

    Example:
        >>> edge_softmax(torch.tensor([0.0, 0.0, 5.0]), torch.tensor([0, 0, 1]), 2).tolist()
        [0.5, 0.5, 1.0]
    """
    index = dst.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    shape = (num_dst, *scores.shape[1:])
    top = scores.new_full(shape, float("-inf")).scatter_reduce(0, index, scores.detach(), "amax")
    exp = (scores - top[dst]).exp()
    return exp / gather_rows(sum_into(exp, dst, num_dst), dst)


# One multiply-add of a compressed-row sum, and of an edge weight's gradient, in multiply-adds of a
# dense matrix product (measured here: 1.4 and 0.7 G/s against 33 G/s; rows gathered at random
# are memory-bound, the product is not)
SPARSE_COST = 24
DOT_COST = 48


def project_first(csr: BlockCSR, in_dim: int, out_dim: int, heads: int = 1, *, input_grad: bool = False,
                  weight_grad: bool = False) -> bool:
    """Whether projecting every source to ``out_dim`` and then aggregating costs less than
    aggregating ``in_dim``-wide rows (once per head) and projecting the destinations' sums, counting
    the backward (gradients of the input rows and of the edge weights, when wanted) when autograd is on.

    Example:
        >>> csr = BlockCSR.of(torch.arange(8), torch.zeros(8, dtype=torch.int64), 8, 1)
        >>> project_first(csr, 256, 128), project_first(csr, 8, 256)
        (False, False)
    """
    edges, ns, nd = csr.num_edges, csr.num_src, csr.num_dst
    grad = torch.is_grad_enabled()
    input_grad, weight_grad = grad and input_grad, grad and weight_grad
    dense_passes = 1 + grad  # the product, and its weights' gradient
    # projected first, the product's output needs its gradient whenever autograd is on
    first = ns * in_dim * out_dim * (dense_passes + input_grad) + edges * out_dim * (
        SPARSE_COST * (1 + grad) + DOT_COST * weight_grad)
    later = nd * in_dim * out_dim * (dense_passes + (input_grad or weight_grad)) + edges * in_dim * heads * (
        SPARSE_COST * (1 + input_grad) + DOT_COST * weight_grad)
    return first < later


def _mean(csr: BlockCSR, x: torch.Tensor) -> torch.Tensor:
    """Mean of the in-neighbours' rows per destination; zero where a destination has no edge."""
    count = csr.in_degree().clamp(min=1).to(x.dtype)
    return spmm(csr, None, x) / count[:, None]


class SAGEConv(nn.Module):
    """GraphSAGE: ``W_l aggr_{u -> v} x_u + W_r x_v + b``, ``aggr`` ``"mean"`` (default), ``"sum"`` or ``"max"``.

    A destination without in-edges gets a zero aggregate (so ``W_r x_v + b``). Mean and sum are
    linear, so they may project first (``project_first``); max aggregates the input rows.

    Example:
        >>> block = TorchBlock(torch.tensor([[1, 2], [0, 0]]), num_src=3, num_dst=2)
        >>> [tuple(SAGEConv(5, 3, aggr=a)(block, torch.randn(3, 5)).shape) for a in ("mean", "sum", "max")]
        [(2, 3), (2, 3), (2, 3)]
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True,
                 aggr: Literal["mean", "sum", "max"] = "mean") -> None:
        super().__init__()
        if aggr not in ("mean", "sum", "max"):
            raise TrainerError(f"aggr must be 'mean', 'sum' or 'max', got {aggr!r}")
        self.in_dim, self.out_dim, self.aggr = in_dim, out_dim, aggr
        self.lin_neighbours = nn.Linear(in_dim, out_dim, bias=bias)
        self.lin_root = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, block: TorchBlock, x_src: torch.Tensor) -> torch.Tensor:
        src, dst = block.edge_index
        csr = BlockCSR.of(src, dst, block.num_src, block.num_dst)
        w = self.lin_neighbours
        if self.aggr != "max" and project_first(csr, self.in_dim, self.out_dim, input_grad=x_src.requires_grad):
            agg = self._aggregate(csr, F.linear(x_src, w.weight))
            neighbours = agg if w.bias is None else agg + w.bias
        else:
            neighbours = w(self._aggregate(csr, x_src))
        return neighbours + self.lin_root(x_src[: block.num_dst])

    def _aggregate(self, csr: BlockCSR, x: torch.Tensor) -> torch.Tensor:
        if self.aggr == "max":
            return segment_max(csr, x)
        return _mean(csr, x) if self.aggr == "mean" else spmm(csr, None, x)

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, aggr={self.aggr}"


class GCNConv(nn.Module):
    """Graph convolution on a block, self loops added, degrees counted on the block.

    ``degree_norm="both"`` (the default) scales edge ``u -> v`` by
    ``1 / sqrt(deg_out(u) deg_in(v))`` (DGL's ``GraphConv(norm="both")``; on a whole symmetric
    graph, Kipf and Welling's ``D^-1/2 (A + I) D^-1/2 X W``). A sampled block sees only part of
    a source's out-edges, so "both" on blocks differs from "both" on the whole graph;
    ``degree_norm="right"`` (``1 / deg_in(v)``, the mean over ``v`` and its in-neighbours)
    depends on destinations alone, so a block with all in-neighbours gives the whole-graph value.
    A block carrying ``src_out_degree`` (whole-graph out-degrees) uses those for "both" instead,
    which is how layer-wise inference (``gnn-ooc embed``) reproduces the whole-graph layer.

    Example:
        >>> block = TorchBlock(torch.tensor([[1, 2], [0, 0]]), num_src=3, num_dst=2)
        >>> GCNConv(5, 3)(block, torch.randn(3, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True,
                 degree_norm: Literal["both", "right"] = "both") -> None:
        super().__init__()
        if degree_norm not in ("both", "right"):
            raise TrainerError(f"degree_norm must be 'both' or 'right', got {degree_norm!r}")
        self.in_dim, self.out_dim, self.degree_norm = in_dim, out_dim, degree_norm
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def forward(self, block: TorchBlock, x_src: torch.Tensor) -> torch.Tensor:
        src, dst = with_self_loops(block)
        csr = BlockCSR.of(src, dst, block.num_src, block.num_dst)
        weight = self._edge_weights(src, dst, block)
        if project_first(csr, self.in_dim, self.out_dim, input_grad=x_src.requires_grad):
            out = spmm(csr, weight, self.lin(x_src))
        else:
            out = self.lin(spmm(csr, weight, x_src))
        return out if self.bias is None else out + self.bias

    def _edge_weights(self, src: torch.Tensor, dst: torch.Tensor, block: TorchBlock) -> torch.Tensor:
        deg_in = torch.bincount(dst, minlength=block.num_dst).float()
        if self.degree_norm == "right":
            return deg_in.reciprocal()[dst]
        if block.src_out_degree is not None:  # whole-graph degrees: a chunk of full-neighbour inference
            deg_out = block.src_out_degree.to(deg_in.dtype)
        else:
            deg_out = torch.bincount(src, minlength=block.num_src).float()
        return (deg_out[src] * deg_in[dst]).rsqrt()

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, degree_norm={self.degree_norm}"


class GATConv(nn.Module):
    """Multi-head graph attention (Velickovic et al.) on a block, with a self loop per destination.

    Head ``k`` scores edge ``u -> v`` as ``LeakyReLU_0.2(a_k . [W_k x_u || W_k x_v])``, takes a
    softmax over ``v``'s in-edges (``attention`` returns the weights) and sums ``W_k x_u`` with
    those weights; heads are concatenated (``heads * out_dim`` wide) or, with ``concat=False``,
    averaged. ``attn_dropout`` drops attention weights while training.

    Example:
        >>> block = TorchBlock(torch.tensor([[1, 2], [0, 0]]), num_src=3, num_dst=2)
        >>> GATConv(5, 3, heads=4)(block, torch.randn(3, 5)).shape
        torch.Size([2, 12])
        >>> GATConv(5, 3, heads=4, concat=False)(block, torch.randn(3, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, concat: bool = True,
                 attn_dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if heads < 1:
            raise TrainerError(f"heads must be >= 1, got {heads}")
        self.in_dim, self.out_dim, self.heads, self.concat = in_dim, out_dim, heads, concat
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))
        self.attn_dropout = Dropout(attn_dropout)
        self.bias = nn.Parameter(torch.zeros(heads * out_dim if concat else out_dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, block: TorchBlock, x_src: torch.Tensor) -> torch.Tensor:
        csr, alpha = self._attend(block, x_src)
        alpha = self.attn_dropout(alpha)
        heads, width = self.heads, self.out_dim
        if project_first(csr, self.in_dim, heads * width, heads, input_grad=x_src.requires_grad,
                         weight_grad=alpha.requires_grad):
            out = spmm(csr, alpha, self.lin(x_src)).view(-1, heads, width)
        else:
            # each head's weighted sum of the input rows, then each head's projection of its sum
            w = self.lin.weight.view(heads, width, self.in_dim)
            out = torch.stack([F.linear(spmm(csr, alpha[:, k], x_src), w[k]) for k in range(heads)], 1)
        out = out.flatten(1) if self.concat else out.mean(dim=1)
        return out if self.bias is None else out + self.bias

    def attention(self, block: TorchBlock, x_src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edge_index, alpha)``: the edges attended over (self loops included) and their
        ``[E, heads]`` weights, which sum to 1 over each destination's in-edges."""
        csr, alpha = self._attend(block, x_src)
        return torch.stack([csr.src, csr.dst]), alpha

    def _attend(self, block: TorchBlock, x_src: torch.Tensor) -> tuple[BlockCSR, torch.Tensor]:
        src, dst = with_self_loops(block)
        csr = BlockCSR.of(src, dst, block.num_src, block.num_dst)
        # a_k . (W_k x) = (W_k^T a_k) . x: the scores from the input rows, no projection of every source
        w = self.lin.weight.view(self.heads, self.out_dim, self.in_dim)
        score_src = x_src @ (w * self.att_src[..., None]).sum(1).t()
        score_dst = x_src[: block.num_dst] @ (w * self.att_dst[..., None]).sum(1).t()
        # scores in float32: a bf16 softmax over a high-degree node loses the small weights
        scores = F.leaky_relu(gather_rows(score_src, src).float() + gather_rows(score_dst, dst).float(), 0.2)
        return csr, edge_softmax(scores, dst, block.num_dst)

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, heads={self.heads}, concat={self.concat}"
