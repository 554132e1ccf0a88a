"""The built-in models (GraphSAGE, GCN, GAT) and adapters for PyG and DGL convolution layers.

Every model here is a ``ConvStack``: ``num_layers`` convolutions taking ``(block, x_src)``,
each but the last followed by a normalisation (``norm``: "none", "batch" or "layer"), an
activation and dropout. Widths go ``in_dim -> hidden -> ... -> hidden -> out_dim``.

Three ways to bring a model:

* ``make_model("sage" | "gcn" | "gat", in_dim=..., hidden=..., out_dim=..., num_layers=...)``;
* ``FromPygLayers([...])`` / ``FromDglLayers([...])``: PyG ``MessagePassing`` or DGL convolution
  layers, one per block, stacked like the built-in models;
* any ``torch.nn.Module`` whose ``forward(blocks, x)`` takes a sequence of ``TorchBlock`` and the
  sampled nodes' features is used as it is (subclass ``BlockModel`` for layer-wise inference).

Example:
    >>> import torch
    >>> from gnn_ooc.trainer.base import TorchBlock
    >>> model = make_model("sage", in_dim=8, hidden=16, out_dim=3, num_layers=2)
    >>> block = TorchBlock(torch.tensor([[1, 2, 0], [0, 0, 1]]), num_src=3, num_dst=2)
    >>> seed_block = TorchBlock(torch.tensor([[1], [0]]), num_src=2, num_dst=1)
    >>> model([block, seed_block], torch.randn(3, 8)).shape
    torch.Size([1, 3])
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from gnn_ooc.sampler.base import SampledSubgraph
from gnn_ooc.trainer.base import BlockModel, TorchBlock, TrainerError
from gnn_ooc.trainer.layers import Dropout, GATConv, GCNConv, SAGEConv

__all__ = ["GAT", "GCN", "ConvStack", "FromDglLayers", "FromPygLayers", "GraphSAGE", "dgl_block", "make_model"]

Norm = Literal["none", "batch", "layer"]
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh,
}


def _activation(activation: str | nn.Module) -> nn.Module:
    if isinstance(activation, nn.Module):
        return activation
    if activation not in _ACTIVATIONS:
        raise TrainerError(f"activation must be one of {sorted(_ACTIVATIONS)} or an nn.Module, got {activation!r}")
    return _ACTIVATIONS[activation]()


def _norm(norm: str, dim: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(dim)
    if norm == "layer":
        return nn.LayerNorm(dim)
    if norm == "none":
        return nn.Identity()
    raise TrainerError(f"norm must be 'none', 'batch' or 'layer', got {norm!r}")


def _widths(in_dim: int, hidden: int, out_dim: int, num_layers: int) -> list[int]:
    if isinstance(num_layers, bool) or int(num_layers) < 1:
        raise TrainerError(f"num_layers must be a positive integer, got {num_layers!r}")
    if min(in_dim, hidden, out_dim) < 1:
        raise TrainerError(f"widths must be positive, got in_dim={in_dim}, hidden={hidden}, out_dim={out_dim}")
    return [in_dim, *[hidden] * (int(num_layers) - 1), out_dim]


class ConvStack(BlockModel):
    """Convolutions ``conv(block, x_src)`` in sequence; ``dims[i] -> dims[i + 1]`` is layer ``i``.

    Between layers (not after the last): ``norm``, ``activation``, then dropout with ``dropout``.

    Example:
        >>> stack = ConvStack([SAGEConv(4, 8), SAGEConv(8, 2)], dims=[4, 8, 2], norm="layer")
        >>> stack.num_layers, stack.layer_out_dim(0), stack.out_dim
        (2, 8, 2)
    """

    def __init__(self, convs: Sequence[nn.Module], dims: Sequence[int], dropout: float = 0.5,
                 norm: Norm = "none", activation: str | nn.Module = "relu") -> None:
        super().__init__()
        if len(convs) < 1 or len(dims) != len(convs) + 1:
            raise TrainerError(f"need at least one layer and len(dims) == len(convs) + 1, got {len(convs)} and {len(dims)}")
        self.dims = [int(d) for d in dims]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(_norm(norm, d) for d in self.dims[1:-1])
        self.activation = _activation(activation)
        self.dropout = Dropout(dropout)  # refuses a rate outside [0, 1)

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    @property
    def in_dim(self) -> int:
        return self.dims[0]

    @property
    def out_dim(self) -> int:
        return self.dims[-1]

    def layer_out_dim(self, i: int) -> int:
        return self.dims[i + 1]

    def layer(self, i: int, block: TorchBlock, h: torch.Tensor) -> torch.Tensor:
        h = self.convs[i](block, h)
        if i == self.num_layers - 1:
            return h
        return self.dropout(self.activation(self.norms[i](h)))


class GraphSAGE(ConvStack):
    """GraphSAGE with ``num_layers`` ``SAGEConv`` layers (``aggr``: mean, sum or max).

    Example:
        >>> GraphSAGE(in_dim=8, hidden=16, out_dim=3, num_layers=3, norm="batch").dims
        [8, 16, 16, 3]
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, dropout: float = 0.5,
                 norm: Norm = "none", activation: str | nn.Module = "relu",
                 aggr: Literal["mean", "sum", "max"] = "mean") -> None:
        dims = _widths(in_dim, hidden, out_dim, num_layers)
        convs = [SAGEConv(a, b, aggr=aggr) for a, b in zip(dims[:-1], dims[1:])]
        super().__init__(convs, dims, dropout=dropout, norm=norm, activation=activation)


class GCN(ConvStack):
    """GCN with ``num_layers`` ``GCNConv`` layers (see there for ``degree_norm``).

    Example:
        >>> GCN(in_dim=8, hidden=16, out_dim=3, num_layers=2).dims
        [8, 16, 3]
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, dropout: float = 0.5,
                 norm: Norm = "none", activation: str | nn.Module = "relu",
                 degree_norm: Literal["both", "right"] = "both") -> None:
        dims = _widths(in_dim, hidden, out_dim, num_layers)
        convs = [GCNConv(a, b, degree_norm=degree_norm) for a, b in zip(dims[:-1], dims[1:])]
        super().__init__(convs, dims, dropout=dropout, norm=norm, activation=activation)


class GAT(ConvStack):
    """GAT: hidden layers concatenate ``heads`` heads of ``hidden // heads`` features (so ``hidden``
    is the full width, and must divide by ``heads``); the last layer averages ``heads`` heads of
    ``out_dim``. ``attn_dropout`` drops attention weights while training.

    Example:
        >>> gat = GAT(in_dim=8, hidden=16, out_dim=3, num_layers=2, heads=4)
        >>> gat.dims, gat.convs[0].heads, gat.convs[0].out_dim
        ([8, 16, 3], 4, 4)
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, dropout: float = 0.5,
                 norm: Norm = "none", activation: str | nn.Module = "relu", heads: int = 4,
                 attn_dropout: float = 0.0) -> None:
        dims = _widths(in_dim, hidden, out_dim, num_layers)
        if heads < 1 or (num_layers > 1 and hidden % heads):
            raise TrainerError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        convs = [GATConv(a, b // heads, heads=heads, attn_dropout=attn_dropout) for a, b in zip(dims[:-2], dims[1:-1])]
        convs.append(GATConv(dims[-2], out_dim, heads=heads, concat=False, attn_dropout=attn_dropout))
        super().__init__(convs, dims, dropout=dropout, norm=norm, activation=activation)


_MODELS: dict[str, type[ConvStack]] = {"sage": GraphSAGE, "graphsage": GraphSAGE, "gcn": GCN, "gat": GAT}


def make_model(name: str, **kwargs: Any) -> ConvStack:
    """A built-in model by name ("sage", "gcn" or "gat"); ``kwargs`` go to its constructor.

    Example:
        >>> type(make_model("gat", in_dim=4, hidden=8, out_dim=2, num_layers=2, heads=2)).__name__
        'GAT'
    """
    cls = _MODELS.get(name.lower())
    if cls is None:
        raise TrainerError(f"unknown model {name!r}; expected one of 'sage', 'gcn', 'gat'")
    return cls(**kwargs)


# --- PyG and DGL layers ----------------------------------------------------------------------------
def _flat(out: Any) -> torch.Tensor:
    # multi-head layers (DGL's GATConv) return [N, heads, F]: heads are concatenated
    if not isinstance(out, torch.Tensor):
        raise TrainerError(f"a wrapped layer must return a tensor, got {type(out).__name__}")
    return out.flatten(1) if out.dim() > 2 else out


class _PygConv(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, block: TorchBlock, x_src: torch.Tensor) -> torch.Tensor:
        return _flat(self.conv((x_src, x_src[: block.num_dst]), block.edge_index))


class _DglConv(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, block: TorchBlock, x_src: torch.Tensor) -> torch.Tensor:
        return _flat(self.conv(dgl_block(block), (x_src, x_src[: block.num_dst])))


def dgl_block(block: TorchBlock) -> Any:
    """``block`` as a DGL block (imports ``dgl``), through ``sampler.interop.to_dgl_blocks``."""
    from gnn_ooc.sampler.interop import to_dgl_blocks

    ei = block.edge_index.cpu().numpy()
    # a one-hop subgraph over local ids: hop 0 = the destinations, hop 1 = the other sources
    sub = SampledSubgraph(
        node=np.arange(block.num_src, dtype=np.int64), row=ei[0], col=ei[1],
        num_sampled_nodes=(block.num_dst, block.num_src - block.num_dst), num_sampled_edges=(block.num_edges,),
    )
    return to_dgl_blocks(sub, device=block.device)[0]


def _infer_dims(layers: Sequence[Any], in_names: Sequence[str], out_fn: Callable[[Any], int]) -> list[int]:
    try:
        first: Any = next(getattr(layers[0], n) for n in in_names if hasattr(layers[0], n))
        first = first[0] if isinstance(first, tuple) else first  # (src, dst) widths of bipartite layers
        dims = [int(first), *(out_fn(conv) for conv in layers)]
    except (AttributeError, IndexError, StopIteration, TypeError, ValueError):
        dims = []
    if not dims or min(dims) < 1:
        raise TrainerError("cannot read the layers' widths (no layers, or lazy or unknown ones): pass dims=[in, ..., out]")
    return dims


def _pyg_out(conv: Any) -> int:
    out = int(conv.out_channels)
    return out * int(getattr(conv, "heads", 1)) if getattr(conv, "concat", False) else out


def _dgl_out(conv: Any) -> int:
    return int(conv._out_feats) * int(getattr(conv, "_num_heads", 1))


class FromPygLayers(ConvStack):
    """PyG ``MessagePassing`` layers (one per block) as a ``BlockModel``.

    Layer ``i`` is called as PyG's bipartite form ``conv((x_src, x_src[:num_dst]), edge_index)``,
    so any layer accepting a pair of feature tensors works (``SAGEConv``, ``GATConv``,
    ``GraphConv``, ...; ``GCNConv`` does not take pairs). Widths are read from
    ``in_channels``/``out_channels`` (times ``heads`` for concatenating heads) unless ``dims`` is
    given. Importing this module never imports PyG.

    Example:
        >>> from torch_geometric.nn import SAGEConv as PygSAGE  # doctest: +SKIP
        >>> model = FromPygLayers([PygSAGE(8, 16), PygSAGE(16, 3)], dropout=0.2)  # doctest: +SKIP
        >>> model.dims  # doctest: +SKIP
        [8, 16, 3]
    """

    def __init__(self, layers: Sequence[nn.Module], dims: Sequence[int] | None = None, dropout: float = 0.5,
                 norm: Norm = "none", activation: str | nn.Module = "relu") -> None:
        dims = list(dims) if dims is not None else _infer_dims(layers, ("in_channels",), _pyg_out)
        super().__init__([_PygConv(c) for c in layers], dims, dropout=dropout, norm=norm, activation=activation)


class FromDglLayers(ConvStack):
    """DGL convolution layers (one per block) as a ``BlockModel``.

    Each ``TorchBlock`` becomes a DGL block (``dgl_block``, imported on first use) and layer ``i``
    is called as ``conv(dgl_block, (x_src, x_src[:num_dst]))``; multi-head outputs
    (``[N, heads, F]``) are concatenated. Widths are read from DGL's ``_in_feats`` /
    ``_in_src_feats`` / ``_out_feats`` / ``_num_heads`` unless ``dims`` is given.

    Example:
        >>> import dgl.nn as dglnn  # doctest: +SKIP
        >>> model = FromDglLayers([dglnn.SAGEConv(8, 16, "mean"), dglnn.SAGEConv(16, 3, "mean")])  # doctest: +SKIP
        >>> model.dims  # doctest: +SKIP
        [8, 16, 3]
    """

    def __init__(self, layers: Sequence[nn.Module], dims: Sequence[int] | None = None, dropout: float = 0.5,
                 norm: Norm = "none", activation: str | nn.Module = "relu") -> None:
        dims = list(dims) if dims is not None else _infer_dims(layers, ("_in_src_feats", "_in_feats"), _dgl_out)
        super().__init__([_DglConv(c) for c in layers], dims, dropout=dropout, norm=norm, activation=activation)
