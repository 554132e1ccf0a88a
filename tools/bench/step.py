"""The training step against the peer: our layers and DGL's on the same sampled blocks.

Samples ``--batches`` batches of ``--batch-size`` seeds with fan-outs ``--fanouts`` from a
generated power-law graph held in memory (``--nodes``, ``--avg-degree``; Chung-Lu edges, so a
batch's sources overlap as in a real graph), then times a training step (forward, backward, Adam)
per model (GraphSAGE, GCN, GAT) and hidden width: ours (``make_model``), PyG's layers through our
adapter when torch_geometric imports, and DGL 2.1's layers in DGL's own environment
(``tools/bench/dgl_step.py`` under ``--dgl-python``, default ``/tmp/dgl-venv/bin/python``: create it
with ``../shared/peers/setup_dgl.sh``), on the same blocks, same threads, in one run. Input
features are random (the step's cost does not depend on their values). Each measurement is the
median step over ``--rounds`` rounds of the batches (after a warm-up round); ours and DGL's are
measured ``--repeats`` times alternately and the best of each is reported, and ours / DGL's.

Example:
    python -m gnn_ooc.tools.bench.step --models sage,gcn,gat --hidden 128,256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DGL_PYTHON = Path("/tmp/dgl-venv/bin/python")
PEER = Path(__file__).with_name("dgl_step.py")


def power_law_graph(nodes: int, avg_degree: float, seed: int, exponent: float = 2.1) -> tuple[np.ndarray, np.ndarray]:
    """CSC ``(indptr, indices)`` of a symmetric Chung-Lu graph: endpoints drawn by weights ``i^(-1/(a-1))``."""
    rng = np.random.default_rng(seed)
    weight = np.arange(1, nodes + 1, dtype=np.float64) ** (-1.0 / (exponent - 1.0))
    cdf = np.cumsum(weight / weight.sum())
    half = int(nodes * avg_degree / 2)
    ends = np.minimum(np.searchsorted(cdf, rng.random((2, half))), nodes - 1)
    perm = rng.permutation(nodes)  # hubs spread over the id range
    src, dst = perm[np.concatenate([ends[0], ends[1]])], perm[np.concatenate([ends[1], ends[0]])]
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=nodes), out=indptr[1:])
    return indptr, src[order].astype(np.int32)


def sample_blocks(args: argparse.Namespace) -> list[list[tuple[torch.Tensor, torch.Tensor, int, int]]]:
    from gnn_ooc.sampler.neighbor import NeighborSampler
    from gnn_ooc.trainer.base import torch_blocks

    graph = power_law_graph(args.nodes, args.avg_degree, args.seed)
    sampler = NeighborSampler(graph, [int(f) for f in args.fanouts.split(",")])
    seeds = np.random.default_rng(args.seed).permutation(args.nodes)[: args.batches * args.batch_size]
    out = []
    for b in range(args.batches):
        sub = sampler.sample(seeds[b * args.batch_size : (b + 1) * args.batch_size], key=b)
        out.append([(blk.edge_index[0].clone(), blk.edge_index[1].clone(), blk.num_src, blk.num_dst)
                    for blk in torch_blocks(sub)])
    return out


def ours(name: str, dims: list[int], args: argparse.Namespace) -> torch.nn.Module:
    from gnn_ooc.trainer.models import make_model

    extra = {"heads": args.heads} if name == "gat" else {}
    return make_model(name, in_dim=dims[0], hidden=dims[1], out_dim=dims[-1], num_layers=len(dims) - 1,
                      dropout=args.dropout, **extra)


def pyg(name: str, dims: list[int], args: argparse.Namespace) -> torch.nn.Module | None:
    """PyG's SAGEConv / GATConv through ``FromPygLayers`` (its GCNConv takes no bipartite pairs: none)."""
    if name not in ("sage", "gat"):
        return None
    try:
        import torch_geometric.nn as pyg_nn
    except ImportError:
        return None
    from gnn_ooc.trainer.models import FromPygLayers

    pairs = list(zip(dims[:-1], dims[1:]))
    if name == "sage":
        layers = [pyg_nn.SAGEConv((a, a), b, aggr="mean") for a, b in pairs]
    elif name == "gat":
        layers = [pyg_nn.GATConv((a, a), b // args.heads, heads=args.heads, add_self_loops=False)
                  for a, b in pairs[:-1]]
        layers.append(pyg_nn.GATConv((pairs[-1][0],) * 2, pairs[-1][1], heads=args.heads, concat=False,
                                     add_self_loops=False))
    else:
        return None
    return FromPygLayers(layers, dims=dims, dropout=args.dropout)


def time_steps(net: torch.nn.Module, batches: list[Any], xs: list[torch.Tensor], ys: list[torch.Tensor],
               rounds: int) -> float:
    from gnn_ooc.trainer.base import TorchBlock

    blocks = [[TorchBlock(torch.stack([s, d]), ns, nd) for s, d, ns, nd in batch] for batch in batches]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    times = []
    for r in range(rounds + 1):
        for blk, x, y in zip(blocks, xs, ys):
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(net(blk, x), y).backward()
            opt.step()
            if r:  # the first round warms up (numba's kernels load)
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_dgl(batches: list[Any], args: argparse.Namespace, classes: int) -> dict[str, Any]:
    if not args.dgl_python.exists():
        return {"error": f"{args.dgl_python} not found (create it with ../shared/peers/setup_dgl.sh)"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blocks.npz"
        arrays: dict[str, Any] = {"batches": len(batches), "layers": len(batches[0]), "classes": classes}
        for b, batch in enumerate(batches):
            for k, (s, d, ns, nd) in enumerate(batch):
                arrays.update({f"src_{b}_{k}": s.numpy(), f"dst_{b}_{k}": d.numpy(), f"sizes_{b}_{k}": np.array([ns, nd])})
        np.savez(path, **arrays)
        cmd = [str(args.dgl_python), str(PEER), str(path), "--models", args.models, "--hidden", args.hidden,
               "--in-dim", str(args.in_dim), "--heads", str(args.heads), "--dropout", str(args.dropout),
               "--rounds", str(args.rounds), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Ours (and PyG's) then DGL's, ``--repeats`` times alternately; each figure is the best repeat's
    median step (this host's load comes and goes: the best is the least disturbed)."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    batches = sample_blocks(args)
    xs = [torch.randn(batch[0][2], args.in_dim) for batch in batches]
    ys = [torch.randint(0, args.classes, (batch[-1][3],)) for batch in batches]
    rows: dict[str, dict[str, list[float]]] = {}
    dgl: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name in args.models.split(","):
            for hidden in (int(h) for h in args.hidden.split(",")):
                dims = [args.in_dim] + [hidden] * (len(batches[0]) - 1) + [args.classes]
                row = rows.setdefault(f"{name}/{hidden}", {})
                row.setdefault("ours", []).append(time_steps(ours(name, dims, args), batches, xs, ys, args.rounds))
                peer = pyg(name, dims, args)
                if peer is not None:
                    row.setdefault("pyg", []).append(time_steps(peer, batches, xs, ys, args.rounds))
        dgl = run_dgl(batches, args, args.classes)
        for key, seconds in dgl.get("step_seconds", {}).items():
            rows[key].setdefault("dgl", []).append(seconds)
    sizes = [[(ns, nd, int(s.numel())) for s, _, ns, nd in batch] for batch in batches]
    return {"rows": {k: {who: min(v) for who, v in row.items()} for k, row in rows.items()},
            "repeats": rows, "dgl": {k: v for k, v in dgl.items() if k != "step_seconds"},
            "blocks_src_dst_edges_mean": np.mean(np.array(sizes), axis=0).round().astype(int).tolist(),
            "threads": args.threads}


def table(result: dict[str, Any]) -> str:
    lines = ["| model / hidden | ours | PyG layers | DGL 2.1 | ours / DGL |", "|---|---|---|---|---|"]
    for key, row in result["rows"].items():
        ms = {k: f"{1e3 * v:.1f} ms" for k, v in row.items()}
        ratio = f"**{row['ours'] / row['dgl']:.2f}**" if "dgl" in row else "n/a"
        lines.append(f"| {key} | {ms['ours']} | {ms.get('pyg', 'n/a')} | {ms.get('dgl', 'n/a')} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--avg-degree", type=float, default=20.0)
    p.add_argument("--fanouts", default="10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--models", default="sage,gcn,gat")
    p.add_argument("--hidden", default="128,256")
    p.add_argument("--in-dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=47)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3, help="rounds over the batches per measurement")
    p.add_argument("--repeats", type=int, default=2, help="measurements of each, alternating ours and DGL's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dgl-python", type=Path, default=DGL_PYTHON)
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    result = measure(args)
    print(table(result), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
