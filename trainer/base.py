"""The model contract: a GNN is called as ``model(blocks, x)`` on the blocks of a sampled subgraph.

``torch_blocks(sub)`` turns a ``SampledSubgraph`` into ``TorchBlock``s, input layer first (DGL's
order). Block ``i`` is layer ``i``'s bipartite graph: sources are the first ``num_src`` rows of
that layer's input, destinations the first ``num_dst`` of them (a prefix, so a destination's own
features are ``x_src[:num_dst]``), and ``edge_index[0] -> edge_index[1]`` are the local source
and destination of each message. ``x`` holds one row per node of ``blocks[0]``'s sources; the
output holds one row per seed (``blocks[-1]``'s destinations).

A ``BlockModel`` is a ``torch.nn.Module`` with one hook, ``layer(i, block, h)``: layer ``i``
alone, convolution plus its normalisation, activation and dropout. ``forward`` checks the
shapes and runs the layers in order; layer-wise inference calls ``layer`` itself, one layer at a
time over every node. Any ``torch.nn.Module`` taking ``(blocks, x)`` trains as well; only
layer-wise inference needs a ``BlockModel``.

Example:
    >>> import numpy as np, torch
    >>> from gnn_ooc.sampler import SampledSubgraph
    >>> sub = SampledSubgraph.from_hops(np.array([0]), [(np.array([1, 2]), np.array([0, 0]))])
    >>> (block,) = torch_blocks(sub)
    >>> block.edge_index.tolist(), block.num_src, block.num_dst
    ([[1, 2], [0, 0]], 3, 1)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from gnn_ooc.errors import GnnOocError
from gnn_ooc.sampler.base import SampledSubgraph


class EpochSource(Protocol):
    """Where an offline training source's epochs come from (``run.OfflineEpochs``, the evaluation's
    ``run.FixedEpoch``, or any object with these three methods)."""

    def wait(self, epoch: int) -> Any:
        """Epoch ``epoch``'s plan (``EpochPlan``: ``len``, ``batch(b)``), once it is ready."""

    def release(self, epoch: int) -> None:
        """Training is done with ``epoch``: its files may go."""

    def packed(self, epoch: int) -> Any:
        """Its ``PackedEpoch`` (packed feature segments), or None when nothing is packed."""


class TrainerError(GnnOocError, ValueError):
    """A model, block or feature tensor that does not fit the model contract."""


@dataclass(frozen=True, eq=False)  # compared by identity: tensors have no truth value
class TorchBlock:
    """One layer's bipartite graph as torch: ``edge_index`` ``[2, E]`` int64 (source, destination).

    Sources are local ids ``0 .. num_src - 1``, destinations ``0 .. num_dst - 1``, and destination
    ``v`` is also source ``v``. Ids are not range-checked (that would synchronise a GPU).
    ``src_out_degree`` (optional, ``[num_src]``) gives each source's out-degree in the whole
    graph, counted as ``GCNConv`` counts it (self loops replaced by one): layer-wise inference
    sets it so that ``GCNConv(degree_norm="both")`` on a chunk equals the whole-graph layer.

    Example:
        >>> b = TorchBlock(torch.tensor([[1, 2], [0, 0]]), num_src=3, num_dst=1)
        >>> b.num_edges, b.to("cpu") is b
        (2, True)
    """

    edge_index: torch.Tensor
    num_src: int
    num_dst: int
    src_out_degree: torch.Tensor | None = None

    def __post_init__(self) -> None:
        ei = self.edge_index
        if not isinstance(ei, torch.Tensor) or ei.dim() != 2 or ei.shape[0] != 2 or ei.dtype != torch.int64:
            got = f"{ei.dtype}{tuple(ei.shape)}" if isinstance(ei, torch.Tensor) else type(ei).__name__
            raise TrainerError(f"TorchBlock.edge_index must be an int64 tensor of shape [2, E], got {got}")
        num_src, num_dst = int(self.num_src), int(self.num_dst)
        if not 0 <= num_dst <= num_src:
            raise TrainerError(f"a block needs 0 <= num_dst <= num_src (destinations are a prefix), got {num_dst}, {num_src}")
        object.__setattr__(self, "num_src", num_src)
        object.__setattr__(self, "num_dst", num_dst)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    def to(self, device: Any, non_blocking: bool = False) -> TorchBlock:
        """This block with ``edge_index`` on ``device`` (itself when already there)."""
        ei = self.edge_index.to(device, non_blocking=non_blocking)
        deg = self.src_out_degree
        deg = None if deg is None else deg.to(device, non_blocking=non_blocking)
        if ei is self.edge_index and deg is self.src_out_degree:
            return self
        return TorchBlock(ei, self.num_src, self.num_dst, deg)


def torch_blocks(sub: SampledSubgraph, device: Any = None) -> tuple[TorchBlock, ...]:
    """The blocks of ``sub`` as ``TorchBlock``s on ``device`` (CPU when None), input layer first.

    Example:
        >>> from gnn_ooc.sampler import SampledSubgraph
        >>> sub = SampledSubgraph(node=np.array([5, 7, 9]), row=np.array([1, 2]), col=np.array([0, 1]),
        ...                       num_sampled_nodes=(1, 1, 1), num_sampled_edges=(1, 1))
        >>> [(b.num_src, b.num_dst, b.edge_index.tolist()) for b in torch_blocks(sub)]
        [(3, 2, [[1, 2], [0, 1]]), (2, 1, [[1], [0]])]
    """
    # One transfer for the whole edge list: each block's edges are a prefix of it (views, no copies).
    edge_index = torch.from_numpy(np.stack([sub.row, sub.col]).astype(np.int64, copy=False))
    if device is not None:
        edge_index = edge_index.to(device)
    return tuple(TorchBlock(edge_index[:, : b.num_edges], b.num_src, b.num_dst) for b in sub.blocks)


class BlockModel(torch.nn.Module, ABC):
    """A GNN on sampled blocks: ``forward(blocks, x)`` checks shapes and runs ``layer`` in order.

    Subclasses implement ``layer(i, block, h)`` (layer ``i`` with its normalisation, activation
    and dropout; none of them after the last layer) and the dimension properties.

    Example:
        >>> class MeanOfNeighbours(BlockModel):
        ...     '''One layer, no weights: the mean of each destination's in-neighbours.'''
        ...     num_layers, in_dim, out_dim = 1, 2, 2
        ...     def layer_out_dim(self, i): return 2
        ...     def layer(self, i, block, h):
        ...         src, dst = block.edge_index
        ...         total = h.new_zeros(block.num_dst, h.shape[1]).index_add_(0, dst, h[src])
        ...         count = torch.bincount(dst, minlength=block.num_dst).clamp(min=1)
        ...         return total / count[:, None]
        >>> block = TorchBlock(torch.tensor([[1, 2], [0, 0]]), num_src=3, num_dst=1)
        >>> MeanOfNeighbours()([block], torch.tensor([[0., 0.], [1., 2.], [3., 4.]])).tolist()
        [[2.0, 3.0]]
    """

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """How many blocks ``forward`` takes."""

    @property
    @abstractmethod
    def in_dim(self) -> int:
        """Input feature width."""

    @property
    @abstractmethod
    def out_dim(self) -> int:
        """Output width (classes, or the embedding width)."""

    @abstractmethod
    def layer_out_dim(self, i: int) -> int:
        """Width of ``layer(i, ...)``'s output (``out_dim`` for the last layer)."""

    @abstractmethod
    def layer(self, i: int, block: TorchBlock, h: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` on ``block``: ``h`` has ``block.num_src`` rows, the result ``block.num_dst``."""

    def forward(self, blocks: Sequence[TorchBlock], x: torch.Tensor) -> torch.Tensor:
        _check_inputs(self, blocks, x)
        h = x
        for i, block in enumerate(blocks):
            h = self.layer(i, block, h)
            if h.dim() < 1 or h.shape[0] != block.num_dst:
                raise TrainerError(
                    f"{type(self).__name__}.layer({i}) returned {tuple(h.shape)}, expected {block.num_dst} rows "
                    f"(the block's destinations)"
                )
        return h


def _check_inputs(model: BlockModel, blocks: Sequence[TorchBlock], x: torch.Tensor) -> None:
    name = type(model).__name__
    if len(blocks) != model.num_layers:
        raise TrainerError(f"{name} has {model.num_layers} layers but got {len(blocks)} blocks (sample one hop per layer)")
    if x.dim() != 2 or x.shape[1] != model.in_dim:
        raise TrainerError(f"{name} expects x of shape [num_nodes, {model.in_dim}], got {tuple(x.shape)}")
    if x.shape[0] != blocks[0].num_src:
        raise TrainerError(
            f"x has {x.shape[0]} rows but blocks[0] has {blocks[0].num_src} sources "
            f"(x must hold one row per sampled node, in the subgraph's node order)"
        )
    for i in range(1, len(blocks)):
        if blocks[i].num_src != blocks[i - 1].num_dst:
            raise TrainerError(
                f"blocks[{i}] has {blocks[i].num_src} sources but blocks[{i - 1}] has {blocks[i - 1].num_dst} "
                f"destinations (blocks go input layer first)"
            )
