"""The peer's side of ``bench.step``: DGL's layers on the same blocks, run in DGL's own environment.

Standalone on purpose (torch, numpy and dgl only): DGL 2.1 needs torch <= 2.2, so this runs under
``/tmp/dgl-venv/bin/python`` (``../shared/peers/setup_dgl.sh``), never beside gnn-ooc. It reads
the blocks ``bench.step`` wrote (``blocks.npz``), builds the same two-layer models from DGL's
``SAGEConv`` (mean), ``GraphConv`` (norm both, one self loop per destination) and ``GATConv``
(heads concatenated, the last layer's averaged), and prints one JSON line: the median seconds of a
training step (forward, backward, Adam) per model and width.

Example:
    /tmp/dgl-venv/bin/python tools/bench/dgl_step.py BLOCKS.npz --models sage,gcn,gat --hidden 128,256
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def load_batches(path: str) -> tuple[list[list[tuple[torch.Tensor, torch.Tensor, int, int]]], int]:
    data = np.load(path)
    batches, layers = int(data["batches"]), int(data["layers"])
    out = []
    for b in range(batches):
        out.append([(torch.from_numpy(data[f"src_{b}_{k}"]), torch.from_numpy(data[f"dst_{b}_{k}"]),
                     int(data[f"sizes_{b}_{k}"][0]), int(data[f"sizes_{b}_{k}"][1])) for k in range(layers)])
    return out, int(data["classes"])


def dgl_blocks(batch: list[tuple[torch.Tensor, torch.Tensor, int, int]], self_loops: bool) -> list:
    import dgl

    blocks = []
    for src, dst, ns, nd in batch:
        if self_loops:  # as gnn-ooc's GCN and GAT do: drop the block's own loops, add one per destination
            keep = src != dst
            loops = torch.arange(nd)
            src, dst = torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])
        blocks.append(dgl.create_block((src, dst), num_src_nodes=ns, num_dst_nodes=nd))
    return blocks


class Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout

    def forward(self, blocks: list, x: torch.Tensor) -> torch.Tensor:
        for k, (layer, block) in enumerate(zip(self.layers, blocks)):
            x = layer(block, x)
            if x.dim() == 3:  # GAT: heads concatenated between layers, averaged at the end
                x = x.mean(1) if k == len(self.layers) - 1 else x.flatten(1)
            if k < len(self.layers) - 1:
                x = F.dropout(F.relu(x), self.dropout, self.training)
        return x


def model(name: str, dims: list[int], heads: int, dropout: float) -> Stack:
    import dgl.nn as dglnn

    pairs = list(zip(dims[:-1], dims[1:]))
    if name == "sage":
        layers = [dglnn.SAGEConv(a, b, "mean") for a, b in pairs]
    elif name == "gcn":
        layers = [dglnn.GraphConv(a, b, norm="both", allow_zero_in_degree=True) for a, b in pairs]
    else:
        layers = [dglnn.GATConv(a, b // heads, heads, allow_zero_in_degree=True) for a, b in pairs[:-1]]
        layers.append(dglnn.GATConv(pairs[-1][0], pairs[-1][1], heads, allow_zero_in_degree=True))
    return Stack(layers, dropout)


def time_steps(net: nn.Module, batches: list, xs: list[torch.Tensor], ys: list[torch.Tensor], rounds: int) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    times = []
    for r in range(rounds + 1):
        for blocks, x, y in zip(batches, xs, ys):
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(net(blocks, x), y).backward()
            opt.step()
            if r:  # the first round warms up
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("blocks")
    p.add_argument("--models", default="sage,gcn,gat")
    p.add_argument("--hidden", default="128,256")
    p.add_argument("--in-dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    raw, classes = load_batches(a.blocks)
    xs = [torch.randn(batch[0][2], a.in_dim) for batch in raw]
    ys = [torch.randint(0, classes, (batch[-1][3],)) for batch in raw]
    result: dict[str, float] = {}
    for name in a.models.split(","):
        batches = [dgl_blocks(batch, self_loops=name != "sage") for batch in raw]
        for hidden in (int(h) for h in a.hidden.split(",")):
            net = model(name, [a.in_dim] + [hidden] * (len(raw[0]) - 1) + [classes], a.heads, a.dropout)
            result[f"{name}/{hidden}"] = time_steps(net, batches, xs, ys, a.rounds)
    import dgl

    print(json.dumps({"dgl": dgl.__version__, "torch": torch.__version__, "step_seconds": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
