"""gnn_ooc.trainer: GNN models on sampled blocks (GraphSAGE, GCN, GAT, PyG/DGL layers).

Example:
    >>> import numpy as np, torch
    >>> from gnn_ooc.sampler import NeighborSampler
    >>> from gnn_ooc.trainer import make_model, torch_blocks
    >>> indptr, indices = np.array([0, 2, 3, 5, 6]), np.array([1, 2, 0, 0, 3, 2], np.int32)
    >>> sub = NeighborSampler((indptr, indices), fanouts=[-1, -1]).sample([0, 3], key=0)
    >>> model = make_model("gcn", in_dim=5, hidden=8, out_dim=2, num_layers=2)
    >>> model(torch_blocks(sub), torch.randn(sub.num_nodes, 5)).shape
    torch.Size([2, 2])
"""

from gnn_ooc.trainer.base import BlockModel, TorchBlock, TrainerError, torch_blocks
from gnn_ooc.trainer.layers import GATConv, GCNConv, SAGEConv, edge_softmax, with_self_loops
from gnn_ooc.trainer.models import (
    GAT,
    GCN,
    ConvStack,
    FromDglLayers,
    FromPygLayers,
    GraphSAGE,
    dgl_block,
    make_model,
)

__all__ = [
    "GAT",
    "GCN",
    "BlockModel",
    "ConvStack",
    "FromDglLayers",
    "FromPygLayers",
    "GATConv",
    "GCNConv",
    "GraphSAGE",
    "SAGEConv",
    "TorchBlock",
    "TrainerError",
    "dgl_block",
    "edge_softmax",
    "make_model",
    "torch_blocks",
    "with_self_loops",
]
