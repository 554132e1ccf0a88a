"""Models on sampled blocks: shapes, hand-computed layers, layer-wise equivalence, training, interop."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest
import torch

from gnn_ooc.sampler import NeighborSampler, SampledSubgraph, SampleKey
from gnn_ooc.trainer import (
    GAT,
    BlockModel,
    FromDglLayers,
    FromPygLayers,
    GATConv,
    GCNConv,
    GraphSAGE,
    SAGEConv,
    TorchBlock,
    TrainerError,
    make_model,
    torch_blocks,
)

N, IN, HID, OUT = 60, 6, 8, 3
MODELS = ["sage", "gcn", "gat"]


# --- graphs ----------------------------------------------------------------------------------------
def random_edges(seed: int = 0, n: int = N, e: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """A random undirected graph without self loops or duplicate edges: (src, dst), both directions."""
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    keep = src != dst
    pairs = np.unique(np.stack([np.r_[src[keep], dst[keep]], np.r_[dst[keep], src[keep]]], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def csc(src: np.ndarray, dst: np.ndarray, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((src, dst))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return indptr, src[order].astype(np.int64)


def whole_graph(src: np.ndarray, dst: np.ndarray, n: int = N) -> TorchBlock:
    """Every node both source and destination: the block layer-wise inference runs on."""
    return TorchBlock(torch.from_numpy(np.stack([src, dst]).astype(np.int64)), n, n)


def sample(depth: int, fanout: int = 3, seeds: Any = (0, 5, 9, 17), seed: int = 0) -> SampledSubgraph:
    sampler = NeighborSampler(csc(*random_edges(seed)), fanouts=[fanout] * depth)
    return sampler.sample(list(seeds), key=SampleKey(seed))


def build(name: str, depth: int, **kwargs: Any) -> BlockModel:
    return make_model(name, in_dim=IN, hidden=HID, out_dim=OUT, num_layers=depth, **kwargs)


# --- shapes and the contract -----------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_output_shapes(name: str, depth: int) -> None:
    sub = sample(depth)
    model = build(name, depth, norm="batch")
    out = model(torch_blocks(sub), torch.randn(sub.num_nodes, IN))
    assert out.shape == (sub.num_seeds, OUT)
    assert (model.num_layers, model.in_dim, model.out_dim) == (depth, IN, OUT)
    assert [model.layer_out_dim(i) for i in range(depth)] == [HID] * (depth - 1) + [OUT]


def test_torch_blocks_match_the_subgraph() -> None:
    sub = sample(3)
    blocks = torch_blocks(sub, device="cpu")
    assert len(blocks) == 3
    for tb, b in zip(blocks, sub.blocks):
        assert (tb.num_src, tb.num_dst) == (b.num_src, b.num_dst)
        assert tb.edge_index.dtype == torch.int64
        assert tb.edge_index.tolist() == [b.row.tolist(), b.col.tolist()]
    assert blocks[-1].num_dst == sub.num_seeds


def test_torch_block_checks_its_fields() -> None:
    with pytest.raises(TrainerError, match="int64"):
        TorchBlock(torch.tensor([[0], [0]], dtype=torch.int32), 1, 1)
    with pytest.raises(TrainerError, match=r"\[2, E\]"):
        TorchBlock(torch.tensor([0, 1]), 2, 1)
    with pytest.raises(TrainerError, match="num_dst <= num_src"):
        TorchBlock(torch.tensor([[0], [0]]), 1, 2)


def test_validation_errors_are_clear() -> None:
    sub = sample(2)
    model = build("sage", 2)
    blocks = torch_blocks(sub)
    with pytest.raises(TrainerError, match=f"x has {sub.num_nodes + 1} rows but blocks\\[0\\] has {sub.num_nodes} sources"):
        model(blocks, torch.randn(sub.num_nodes + 1, IN))
    with pytest.raises(TrainerError, match="has 2 layers but got 1 blocks"):
        model(blocks[:1], torch.randn(sub.num_nodes, IN))
    with pytest.raises(TrainerError, match=f"x of shape \\[num_nodes, {IN}\\]"):
        model(blocks, torch.randn(sub.num_nodes, IN + 1))
    with pytest.raises(TrainerError, match="input layer first"):
        model(blocks[::-1], torch.randn(blocks[-1].num_src, IN))


def test_a_layer_returning_the_wrong_rows_is_named() -> None:
    class Broken(BlockModel):
        num_layers, in_dim, out_dim = 1, 2, 2

        def layer_out_dim(self, i: int) -> int:
            return 2

        def layer(self, i: int, block: TorchBlock, h: torch.Tensor) -> torch.Tensor:
            return h  # all sources, not the destinations

    block = TorchBlock(torch.tensor([[1], [0]]), num_src=2, num_dst=1)
    with pytest.raises(TrainerError, match=r"Broken.layer\(0\) returned \(2, 2\), expected 1 rows"):
        Broken()([block], torch.randn(2, 2))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(TrainerError, match="unknown model"):
        make_model("gin", in_dim=2, hidden=4, out_dim=2, num_layers=2)
    with pytest.raises(TrainerError, match="multiple of heads"):
        GAT(in_dim=2, hidden=6, out_dim=2, num_layers=2, heads=4)
    with pytest.raises(TrainerError, match="norm must be"):
        GraphSAGE(in_dim=2, hidden=4, out_dim=2, num_layers=2, norm="group")
    with pytest.raises(TrainerError, match="num_layers"):
        GraphSAGE(in_dim=2, hidden=4, out_dim=2, num_layers=0)
    with pytest.raises(TrainerError, match=r"dropout must be in \[0, 1\), got 1.0"):
        GraphSAGE(in_dim=2, hidden=4, out_dim=2, num_layers=2, dropout=1.0)


# --- layers against hand computations --------------------------------------------------------------
@pytest.mark.parametrize("in_dim,out_dim", [(3, 2), (2, 4)])  # projects before / after averaging
def test_sage_mean_by_hand(in_dim: int, out_dim: int) -> None:
    torch.manual_seed(0)
    # sources 0..3, destinations 0..2: 0 <- {1, 2, 3}, 1 <- {0}, 2 <- nothing
    block = TorchBlock(torch.tensor([[1, 2, 3, 0], [0, 0, 0, 1]]), num_src=4, num_dst=3)
    x = torch.randn(4, in_dim)
    conv = SAGEConv(in_dim, out_dim)
    mean = torch.stack([x[1:4].mean(0), x[0], torch.zeros(in_dim)])
    expected = conv.lin_neighbours(mean) + conv.lin_root(x[:3])
    torch.testing.assert_close(conv(block, x), expected)
    # an isolated destination: zero aggregate, so only its own features and the bias
    torch.testing.assert_close(conv(block, x)[2], conv.lin_root(x[2]) + conv.lin_neighbours.bias)


@pytest.mark.parametrize("aggr", ["sum", "max"])
def test_sage_sum_and_max_by_hand(aggr: str) -> None:
    torch.manual_seed(0)
    block = TorchBlock(torch.tensor([[1, 2, 3, 0, 1], [0, 0, 0, 1, 0]]), num_src=4, num_dst=3)  # 1 -> 0 twice
    x = torch.randn(4, 3, requires_grad=True)
    conv = SAGEConv(3, 2, aggr=aggr)  # type: ignore[arg-type]
    rows = [x[[1, 2, 3, 1]], x[[0]]]
    agg = torch.stack([r.sum(0) if aggr == "sum" else r.amax(0) for r in rows] + [torch.zeros(3)])
    expected = conv.lin_neighbours(agg) + conv.lin_root(x[:3])
    got = conv(block, x)
    torch.testing.assert_close(got, expected)
    up = torch.randn(got.shape)
    torch.testing.assert_close(torch.autograd.grad(got, x, up)[0], torch.autograd.grad(expected, x, up)[0])


def dense_adjacency(src: np.ndarray, dst: np.ndarray, n: int) -> torch.Tensor:
    a = torch.zeros(n, n)
    a[torch.from_numpy(dst), torch.from_numpy(src)] = 1.0  # a[v, u]: u -> v
    return a


def test_gcn_on_the_whole_graph_is_the_dense_formula() -> None:
    torch.manual_seed(0)
    n = 12
    src, dst = random_edges(seed=3, n=n, e=30)
    block = whole_graph(np.r_[src, 4], np.r_[dst, 4], n)  # a self loop already there: not counted twice
    a_hat = dense_adjacency(src, dst, n) + torch.eye(n)
    d = a_hat.sum(1).rsqrt()
    x = torch.randn(n, 5)
    conv = GCNConv(5, 3)
    torch.nn.init.normal_(conv.bias)
    expected = d[:, None] * a_hat * d[None, :] @ x @ conv.lin.weight.T + conv.bias
    torch.testing.assert_close(conv(block, x), expected)
    right = GCNConv(5, 3, degree_norm="right")
    expected_right = (a_hat / a_hat.sum(1, keepdim=True)) @ x @ right.lin.weight.T + right.bias
    torch.testing.assert_close(right(block, x), expected_right)


def test_gat_attention_is_a_softmax_per_destination() -> None:
    torch.manual_seed(0)
    sub = sample(1, fanout=-1)
    (block,) = torch_blocks(sub)
    conv = GATConv(IN, 4, heads=3)
    edge_index, alpha = conv.attention(block, torch.randn(block.num_src, IN))
    assert alpha.shape == (edge_index.shape[1], 3) and bool((alpha > 0).all())
    per_dst = torch.zeros(block.num_dst, 3).index_add_(0, edge_index[1], alpha)
    torch.testing.assert_close(per_dst, torch.ones(block.num_dst, 3))
    # one self loop per destination
    loops = edge_index[0] == edge_index[1]
    assert sorted(edge_index[1][loops].tolist()) == list(range(block.num_dst))


@pytest.mark.parametrize("concat", [True, False])
def test_gat_ignores_edge_order(concat: bool) -> None:
    torch.manual_seed(0)
    (block,) = torch_blocks(sample(1, fanout=-1))
    x = torch.randn(block.num_src, IN)
    conv = GATConv(IN, 4, heads=2, concat=concat)
    shuffled = TorchBlock(block.edge_index[:, torch.randperm(block.num_edges)], block.num_src, block.num_dst)
    torch.testing.assert_close(conv(shuffled, x), conv(block, x))
    assert conv(block, x).shape == (block.num_dst, 8 if concat else 4)


# --- layer-wise inference sees what training sees --------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(
    "name,kwargs",
    [("sage", {"norm": "batch"}), ("gat", {"norm": "layer"}), ("gcn", {"degree_norm": "right"})],
)
def test_full_neighbour_blocks_equal_layer_wise_inference(name: str, kwargs: dict[str, Any], depth: int) -> None:
    torch.manual_seed(0)
    src, dst = random_edges(seed=1)
    sub = NeighborSampler(csc(src, dst), fanouts=[-1] * depth).sample([3, 0, 41, 7], key=0)
    model = build(name, depth, **kwargs).eval()
    x = torch.randn(N, IN)
    with torch.no_grad():
        sampled = model(torch_blocks(sub), x[torch.from_numpy(sub.node)])
        h, full = x, whole_graph(src, dst)
        for i in range(depth):
            h = model.layer(i, full, h)
    torch.testing.assert_close(sampled, h[torch.from_numpy(sub.seeds)])


# --- training behaviour ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_gradients_reach_every_parameter(name: str, norm: str) -> None:
    torch.manual_seed(0)
    sub = sample(2, fanout=4)
    model = build(name, 2, norm=norm, dropout=0.0)
    model(torch_blocks(sub), torch.randn(sub.num_nodes, IN)).square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODELS)
def test_dropout_only_while_training(name: str) -> None:
    torch.manual_seed(0)
    sub = sample(2)
    blocks, x = torch_blocks(sub), torch.randn(sub.num_nodes, IN)
    kwargs = {"attn_dropout": 0.5} if name == "gat" else {}
    model = build(name, 2, dropout=0.5, **kwargs)
    assert not torch.equal(model(blocks, x), model(blocks, x))
    model.eval()
    assert torch.equal(model(blocks, x), model(blocks, x))


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_on_cpu(name: str) -> None:
    torch.manual_seed(0)
    sub = sample(2)
    model = build(name, 2, norm="layer")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch_blocks(sub), torch.randn(sub.num_nodes, IN))
    assert out.shape == (sub.num_seeds, OUT) and torch.isfinite(out.float()).all()
    out.float().sum().backward()


@pytest.mark.parametrize("name", MODELS)
def test_training_decreases_the_loss(name: str) -> None:
    """Two planted communities; a node's own features barely show its class, its neighbours' do."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 200
    label = rng.integers(0, 2, n)
    same = rng.random((n, n)) < np.where(label[:, None] == label[None, :], 0.06, 0.005)
    dst, src = np.nonzero(np.triu(same, 1) | np.triu(same, 1).T)
    sampler = NeighborSampler(csc(src, dst, n), fanouts=[5, 5])
    x = torch.randn(n, IN) + 0.5 * torch.from_numpy(label).float()[:, None]
    y = torch.from_numpy(label)
    model = make_model(name, in_dim=IN, hidden=16, out_dim=2, num_layers=2, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for step in range(50):
        seeds = rng.choice(n, 32, replace=False)
        sub = sampler.sample(seeds, key=SampleKey(0, 0, step))
        loss = torch.nn.functional.cross_entropy(model(torch_blocks(sub), x[torch.from_numpy(sub.node)]), y[seeds])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses


# --- PyG and DGL layers ----------------------------------------------------------------------------
def test_pyg_sage_layers_match_ours() -> None:
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    pyg = FromPygLayers([pyg_nn.SAGEConv(IN, HID), pyg_nn.SAGEConv(HID, OUT)], norm="layer")
    ours = GraphSAGE(in_dim=IN, hidden=HID, out_dim=OUT, num_layers=2, norm="layer")
    assert pyg.dims == ours.dims == [IN, HID, OUT]
    with torch.no_grad():
        for theirs, mine in zip(pyg.convs, ours.convs):
            mine.lin_neighbours.weight.copy_(theirs.conv.lin_l.weight)
            mine.lin_neighbours.bias.copy_(theirs.conv.lin_l.bias)
            mine.lin_root.weight.copy_(theirs.conv.lin_r.weight)
    sub = sample(2)
    blocks, x = torch_blocks(sub), torch.randn(sub.num_nodes, IN)
    torch.testing.assert_close(pyg.eval()(blocks, x), ours.eval()(blocks, x))


def test_pyg_layer_widths() -> None:
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    model = FromPygLayers([pyg_nn.GATConv(IN, 4, heads=2), pyg_nn.GATConv(8, OUT, heads=2, concat=False)])
    assert model.dims == [IN, 8, OUT]
    sub = sample(2)
    assert model(torch_blocks(sub), torch.randn(sub.num_nodes, IN)).shape == (sub.num_seeds, OUT)
    with pytest.raises(TrainerError, match="pass dims"):
        FromPygLayers([pyg_nn.SAGEConv(-1, 4)])


def fake_dgl() -> types.ModuleType:
    """Just enough of dgl for ``to_dgl_blocks``: a block that keeps its edges and node counts."""

    class FakeBlock:
        def __init__(self, edges: tuple[torch.Tensor, torch.Tensor], num_src: int, num_dst: int) -> None:
            self.edges, self.num_src, self.num_dst = edges, num_src, num_dst
            self.srcdata: dict[str, Any] = {}
            self.dstdata: dict[str, Any] = {}
            self.edata: dict[str, Any] = {}

    def create_block(edges: Any, num_src_nodes: int, num_dst_nodes: int, idtype: Any, device: Any) -> FakeBlock:
        return FakeBlock(edges, num_src_nodes, num_dst_nodes)

    mod = types.ModuleType("dgl")
    mod.create_block = create_block  # type: ignore[attr-defined]
    mod.NID, mod.EID = "_ID", "_ID"  # type: ignore[attr-defined]
    return mod


class MeanConv(torch.nn.Module):
    """A DGL-style layer: ``conv(graph, (h_src, h_dst))``, mean of in-neighbours plus a linear map."""

    def __init__(self, in_feats: int, out_feats: int) -> None:
        super().__init__()
        self._in_feats, self._out_feats = in_feats, out_feats
        self.lin = torch.nn.Linear(in_feats, out_feats)

    def forward(self, graph: Any, feat: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        src, dst = graph.edges
        h_src, h_dst = feat
        assert h_dst.shape[0] == graph.num_dst and h_src.shape[0] == graph.num_src
        total = h_src.new_zeros(graph.num_dst, h_src.shape[1]).index_add_(0, dst, h_src[src])
        return self.lin(total / torch.bincount(dst, minlength=graph.num_dst).clamp(min=1)[:, None])


def test_dgl_layers_through_the_converter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dgl", fake_dgl())
    torch.manual_seed(0)
    model = FromDglLayers([MeanConv(IN, HID), MeanConv(HID, OUT)], dropout=0.0).eval()
    assert model.dims == [IN, HID, OUT]
    sub = sample(2)
    blocks, x = torch_blocks(sub), torch.randn(sub.num_nodes, IN)
    # the same layers by hand on our blocks
    h = x
    for i, block in enumerate(blocks):
        src, dst = block.edge_index
        total = h.new_zeros(block.num_dst, h.shape[1]).index_add_(0, dst, h[src])
        h = model.convs[i].conv.lin(total / torch.bincount(dst, minlength=block.num_dst).clamp(min=1)[:, None])
        h = h.relu() if i == 0 else h
    torch.testing.assert_close(model(blocks, x), h)


def test_a_plain_module_taking_blocks_and_x_is_a_model() -> None:
    class MeanOfSeedsNeighbours(torch.nn.Module):
        def forward(self, blocks: Any, x: torch.Tensor) -> torch.Tensor:
            src, dst = blocks[-1].edge_index
            return x.new_zeros(blocks[-1].num_dst, x.shape[1]).index_add_(0, dst, x[src])

    sub = sample(1)
    assert MeanOfSeedsNeighbours()(torch_blocks(sub), torch.ones(sub.num_nodes, 2)).shape == (sub.num_seeds, 2)
