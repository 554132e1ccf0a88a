"""Bipartite graph convolutions in plain torch: ``conv(block, x_src)`` -> one row per destination.

Each layer reads ``x_src`` (one row per source of the ``TorchBlock``) and uses its first
``num_dst`` rows as the destinations' own features. Messages are gathered and summed with
``gather_rows`` / ``sum_into`` (``aggregate``): vectorised torch ops that run wherever torch runs
(CPU, CUDA, autocast) and give the same bits on every run, whatever the thread count.

* ``SAGEConv``: GraphSAGE with mean aggregation, ``W_l mean(x_u) + W_r x_v + b``.
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

__all__ = ["GATConv", "GCNConv", "SAGEConv", "edge_softmax", "with_self_loops"]


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


def _mean_into(values: torch.Tensor, dst: torch.Tensor, num_dst: int) -> torch.Tensor:
    """Mean of ``values`` per destination; zero where a destination has no edge."""
    total = sum_into(values, dst, num_dst)
    count = torch.bincount(dst, minlength=num_dst).clamp(min=1).to(values.dtype)
    return total / count[:, None]


class SAGEConv(nn.Module):
    """GraphSAGE with mean aggregation: ``W_l mean_{u -> v} x_u + W_r x_v + b``.

    A destination without in-edges gets a zero aggregate (so ``W_r x_v + b``).

    Example:
        >>> block = TorchBlock(torch.tensor([[1, 2], [0, 0]]), num_src=3, num_dst=2)
        >>> SAGEConv(5, 3)(block, torch.randn(3, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.lin_neighbours = nn.Linear(in_dim, out_dim, bias=bias)
        self.lin_root = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, block: TorchBlock, x_src: torch.Tensor) -> torch.Tensor:
        src, dst = block.edge_index
        if self.out_dim < self.in_dim:
            # the mean is linear: project first, and average the narrower rows
            w = self.lin_neighbours
            agg = _mean_into(gather_rows(F.linear(x_src, w.weight), src), dst, block.num_dst)
            neighbours = agg if w.bias is None else agg + w.bias
        else:
            neighbours = self.lin_neighbours(_mean_into(gather_rows(x_src, src), dst, block.num_dst))
        return neighbours + self.lin_root(x_src[: block.num_dst])

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, aggr=mean"


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
        h = self.lin(x_src)
        weight = self._edge_weights(src, dst, block).to(h.dtype)
        out = sum_into(gather_rows(h, src) * weight[:, None], dst, block.num_dst)
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
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.bias = nn.Parameter(torch.zeros(heads * out_dim if concat else out_dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, block: TorchBlock, x_src: torch.Tensor) -> torch.Tensor:
        h = self.lin(x_src).view(-1, self.heads, self.out_dim)
        src, dst, alpha = self._attend(block, h)
        alpha = self.attn_dropout(alpha).to(h.dtype)
        # 2-D rows: index_add_ (the gather's backward) measured slower on [N, heads, D] (a GAT step +20 %)
        messages = gather_rows(h.flatten(1), src).view(-1, self.heads, self.out_dim) * alpha[..., None]
        out = sum_into(messages.flatten(1), dst, block.num_dst).view(-1, self.heads, self.out_dim)
        out = out.flatten(1) if self.concat else out.mean(dim=1)
        return out if self.bias is None else out + self.bias

    def attention(self, block: TorchBlock, x_src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edge_index, alpha)``: the edges attended over (self loops included) and their
        ``[E, heads]`` weights, which sum to 1 over each destination's in-edges."""
        src, dst, alpha = self._attend(block, self.lin(x_src).view(-1, self.heads, self.out_dim))
        return torch.stack([src, dst]), alpha

    def _attend(self, block: TorchBlock, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src, dst = with_self_loops(block)
        score_src = (h * self.att_src).sum(-1)
        score_dst = (h[: block.num_dst] * self.att_dst).sum(-1)
        # scores in float32: a bf16 softmax over a high-degree node loses the small weights
        scores = F.leaky_relu(gather_rows(score_src, src).float() + gather_rows(score_dst, dst).float(), 0.2)
        return src, dst, edge_softmax(scores, dst, block.num_dst)

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, heads={self.heads}, concat={self.concat}"
