"""PyG / DGL interop: converters, our sampler inside PyG's NodeLoader, PyG samplers as ours."""

from __future__ import annotations

import pickle
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest

from gnn_ooc.sampler import interop
from gnn_ooc.sampler.base import SampledSubgraph, SampleKey, Sampler, SamplerError
from gnn_ooc.sampler.interop import layer_by_hops

N, E = 40, 160


# --- graphs and a sampler of ours ------------------------------------------------------------------
def make_csc(seed: int = 0, n: int = N, e: int = E) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, dst): a random directed graph in CSC form; node n - 1 has no in-edges."""
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, e), rng.integers(0, n - 1, e)
    order = np.lexsort((src, dst))
    src, dst = src[order], dst[order]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return indptr, src.astype(np.int64), dst.astype(np.int64)


def edge_set(src: np.ndarray, dst: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(np.asarray(src).tolist(), np.asarray(dst).tolist()))


class UpToK(Sampler):
    """Up to ``k`` random in-neighbours of every node first reached at each hop (key-driven)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, k: int = 3, layers: int = 2) -> None:
        super().__init__(num_nodes=len(indptr) - 1)
        self.indptr, self.indices, self.k, self.layers = indptr, indices, k, layers

    @property
    def num_layers(self) -> int:
        return self.layers

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        rng = key.generator()
        known = {int(s): i for i, s in enumerate(seeds.tolist())}
        frontier = list(known.items())
        hops, edges = [], []
        for _ in range(self.layers):
            pos = [rng.permutation(np.arange(self.indptr[g], self.indptr[g + 1]))[: self.k] for g, _ in frontier]
            dst = [np.full(p.size, loc) for (_, loc), p in zip(frontier, pos)]
            eid = np.concatenate(pos) if pos else np.empty(0, np.int64)
            src = self.indices[eid]
            hops.append((src, np.concatenate(dst) if dst else np.empty(0, np.int64)))
            edges.append(eid)
            frontier = []
            for u in src.tolist():
                if u not in known:
                    known[u] = len(known)
                    frontier.append((u, known[u]))
        return SampledSubgraph.from_hops(seeds, hops, edges)


@pytest.fixture(params=["up_to_k", "neighbor"])
def sampler(request: pytest.FixtureRequest) -> Sampler:
    indptr, indices, _ = make_csc()
    if request.param == "up_to_k":
        return UpToK(indptr, indices)
    try:
        from gnn_ooc.sampler.neighbor import NeighborSampler
    except ImportError as exc:  # written alongside this module
        pytest.skip(f"gnn_ooc.sampler.neighbor.NeighborSampler unavailable: {exc}")
    return NeighborSampler((indptr, indices), [3, 2], return_edge_ids=True)


def check_real_edges(sub: SampledSubgraph, indptr: np.ndarray, indices: np.ndarray, dst: np.ndarray) -> None:
    grow, gcol = sub.node[sub.row], sub.node[sub.col]
    assert edge_set(grow, gcol) <= edge_set(indices, dst)
    if sub.edge is not None:
        np.testing.assert_array_equal(indices[sub.edge], grow)
        np.testing.assert_array_equal(dst[sub.edge], gcol)


# --- import ---------------------------------------------------------------------------------------
def test_import_does_not_import_pyg_or_dgl() -> None:
    code = (
        "import sys, gnn_ooc.sampler.interop as m\n"
        "from gnn_ooc.sampler.interop import *\n"
        "assert 'torch_geometric' not in sys.modules and 'dgl' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- layer_by_hops (NumPy only) --------------------------------------------------------------------
def reference_layers(seeds: np.ndarray, node: np.ndarray, row: np.ndarray, col: np.ndarray, layers: int) -> tuple:
    """The obvious per-node BFS: expected node order, (src, dst) global edges in order, counts."""
    seed_list = seeds.tolist()
    node_list = node.tolist() + [s for s in seed_list if s not in set(node.tolist())]
    hop = {s: 0 for s in seed_list}
    for h in range(1, layers + 1):
        for r, c in zip(row.tolist(), col.tolist()):
            if hop.get(node_list[c]) == h - 1 and node_list[r] not in hop:
                hop[node_list[r]] = h
    order = seed_list + sorted((u for u in node_list if hop.get(u, 0) > 0), key=lambda u: (hop[u], node_list.index(u)))
    edges = [(node_list[r], node_list[c], hop[node_list[c]] + 1, i) for i, (r, c) in enumerate(zip(row.tolist(), col.tolist()))
             if node_list[c] in hop and hop[node_list[c]] < layers]
    edges.sort(key=lambda t: (t[2], t[3]))
    counts = [sum(1 for u in order if hop[u] == h) for h in range(layers + 1)]
    return order, [(a, b) for a, b, _, _ in edges], [i for *_, i in edges], counts


@pytest.mark.parametrize("trial", range(12))
def test_layer_by_hops_matches_reference_bfs(trial: int) -> None:
    rng = np.random.default_rng(trial)
    n_sub = int(rng.integers(1, 25))
    node = rng.permutation(100)[:n_sub]
    ne = int(rng.integers(0, 60))
    row, col = rng.integers(0, n_sub, ne), rng.integers(0, n_sub, ne)
    seeds = rng.permutation(np.concatenate([node, [200, 201]]))[: int(rng.integers(1, 5))]  # maybe absent
    layers = int(rng.integers(1, 4))
    edge = rng.permutation(1000)[:ne]
    sub = layer_by_hops(seeds, node, row, col, layers, edge)
    sub.validate()
    order, edges, kept, counts = reference_layers(seeds, node, row, col, layers)
    assert sub.node.tolist() == order
    assert list(zip(sub.node[sub.row].tolist(), sub.node[sub.col].tolist())) == edges
    assert sub.edge is not None and sub.edge.tolist() == edge[kept].tolist()
    assert list(sub.num_sampled_nodes) == counts and sub.num_layers == layers


def test_layer_by_hops_rejects_bad_input() -> None:
    one = np.array([0])
    with pytest.raises(SamplerError, match="twice"):
        layer_by_hops(one, np.array([0, 0]), one, one, 1)
    with pytest.raises(SamplerError, match="outside"):
        layer_by_hops(one, np.array([0, 1]), np.array([2]), one, 1)
    with pytest.raises(SamplerError, match="num_layers"):
        layer_by_hops(one, one, one, one, 0)
    with pytest.raises(SamplerError, match="seeds"):
        layer_by_hops(np.array([0, 0]), one, one, one, 1)


# --- our output -> PyG -----------------------------------------------------------------------------
def small_sub(int32: bool = False) -> SampledSubgraph:
    dt = np.int32 if int32 else np.int64
    return SampledSubgraph(node=np.array([5, 7, 9, 2], dt), row=np.array([1, 2, 3], dt), col=np.array([0, 0, 1], dt),
                           num_sampled_nodes=(1, 2, 1), num_sampled_edges=(2, 1), edge=np.array([10, 11, 12], dt))


def test_to_pyg_sampler_output() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="PyG converters need torch_geometric")
    from torch_geometric.sampler import SamplerOutput

    ids = torch.tensor([3])
    out = interop.to_pyg_sampler_output(small_sub(int32=True), input_id=ids, seed_time=None)
    assert isinstance(out, SamplerOutput)
    for name, want in [("node", [5, 7, 9, 2]), ("row", [1, 2, 3]), ("col", [0, 0, 1]), ("edge", [10, 11, 12])]:
        t = getattr(out, name)
        assert t.dtype == torch.int64 and t.tolist() == want
    assert out.num_sampled_nodes == [1, 2, 1] and out.num_sampled_edges == [2, 1]
    assert out.metadata[0] is ids and out.metadata[1] is None
    assert interop.to_pyg_sampler_output(SampledSubgraph(**{**small_sub().__dict__, "edge": None})).edge is None


@pytest.mark.parametrize("kind", ["numpy", "memmap", "torch"])
def test_to_pyg_data(kind: str, tmp_path: Any) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="PyG converters need torch_geometric")
    feats = np.arange(40, dtype=np.float32).reshape(10, 4)
    labels = np.arange(10) * 10
    if kind == "memmap":
        np.save(tmp_path / "x.npy", feats)
        x: Any = np.load(tmp_path / "x.npy", mmap_mode="r")
    else:
        x = torch.from_numpy(feats) if kind == "torch" else feats
    sub = SampledSubgraph(node=np.array([5, 7, 9, 2, 3]), row=np.array([1, 2, 3]), col=np.array([0, 0, 1]),
                          num_sampled_nodes=(2, 2, 1), num_sampled_edges=(2, 1))  # seed 7 is isolated
    data = interop.to_pyg_data(sub, x=x, y=labels)
    assert data.num_nodes == 5 and data.batch_size == 2
    assert data.edge_index.dtype == torch.int64 and data.edge_index.tolist() == [[1, 2, 3], [0, 0, 1]]
    assert data.n_id.tolist() == [5, 7, 9, 2, 3] and "e_id" not in data
    assert data.num_sampled_nodes == [2, 2, 1] and data.num_sampled_edges == [2, 1]
    np.testing.assert_array_equal(data.x.numpy(), feats[sub.node])
    assert data.y.tolist() == (labels[sub.node]).tolist()
    assert interop.to_pyg_data(small_sub()).e_id.tolist() == [10, 11, 12]
    assert interop.to_pyg_data(sub).num_nodes == 5  # not inferred from edge_index, which misses node 4


# --- our output -> DGL -----------------------------------------------------------------------------
def fake_dgl(torch: Any) -> types.ModuleType:
    """Just enough of DGL's documented ``create_block`` contract to catch misuse."""

    class Frame(dict):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

        def __setitem__(self, key: str, value: Any) -> None:
            assert isinstance(value, torch.Tensor) and value.shape[0] == self.n, "a frame column has one row per item"
            super().__setitem__(key, value)

    class Block:
        is_block = True

        def __init__(self, src: Any, dst: Any, nsrc: int, ndst: int) -> None:
            self.src, self.dst, self.nsrc, self.ndst = src, dst, nsrc, ndst
            self.srcdata, self.dstdata, self.edata = Frame(nsrc), Frame(ndst), Frame(src.numel())

        def num_src_nodes(self) -> int:
            return self.nsrc

        def num_dst_nodes(self) -> int:
            return self.ndst

        def edges(self) -> tuple[Any, Any]:
            return self.src, self.dst

    def create_block(data_dict: Any, num_src_nodes: Any = None, num_dst_nodes: Any = None,
                     idtype: Any = None, device: Any = None, node_count_check: bool = True) -> Block:
        assert isinstance(data_dict, tuple) and len(data_dict) == 2, "homogeneous form: (U, V)"
        src, dst = data_dict
        assert isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
        assert src.dim() == dst.dim() == 1 and src.shape == dst.shape
        assert src.dtype == dst.dtype and src.dtype in (torch.int32, torch.int64)
        assert idtype in (None, torch.int32, torch.int64)
        # dgl/convert.py asserts these are ints when data_dict is not a dict
        assert type(num_src_nodes) is int and type(num_dst_nodes) is int
        if src.numel():
            assert 0 <= int(src.min()) and int(src.max()) < num_src_nodes
            assert 0 <= int(dst.min()) and int(dst.max()) < num_dst_nodes
        return Block(src, dst, num_src_nodes, num_dst_nodes)

    mod = types.ModuleType("dgl")
    mod.create_block = create_block  # type: ignore[attr-defined]
    mod.NID, mod.EID = "_ID", "_ID"  # type: ignore[attr-defined]
    return mod


def check_blocks(blocks: list[Any], sub: SampledSubgraph, nid: str, eid: str) -> None:
    assert len(blocks) == sub.num_layers
    for block, ours in zip(blocks, sub.blocks):
        assert block.num_src_nodes() == ours.num_src and block.num_dst_nodes() == ours.num_dst
        src, dst = block.edges()
        assert sorted(zip(src.tolist(), dst.tolist())) == sorted(zip(ours.row.tolist(), ours.col.tolist()))
        assert block.srcdata[nid].tolist() == sub.node[: ours.num_src].tolist()
        assert block.dstdata[nid].tolist() == sub.node[: ours.num_dst].tolist()
        if ours.edge is not None:
            assert block.edata[eid].tolist() == ours.edge.tolist()
    assert blocks[-1].dstdata[nid].tolist() == sub.seeds.tolist()  # last block ends at the seeds


def test_to_dgl_blocks_fake(monkeypatch: pytest.MonkeyPatch, sampler: Sampler) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "dgl", fake_dgl(torch))
    sub = sampler.sample(np.array([4, 0, 11]), key=5)
    check_blocks(interop.to_dgl_blocks(sub), sub, "_ID", "_ID")
    check_blocks(interop.to_dgl_blocks(small_sub(int32=True)), small_sub(), "_ID", "_ID")


def test_to_dgl_blocks_real() -> None:
    try:
        import dgl
    except Exception as exc:  # DGL wheels lag torch releases; ImportError or a broken binary
        pytest.skip(f"dgl is not importable: {exc!r}")
    sub = small_sub()
    check_blocks(interop.to_dgl_blocks(sub), sub, dgl.NID, dgl.EID)
    assert all(b.is_block for b in interop.to_dgl_blocks(sub))


# --- our sampler inside PyG's NodeLoader -----------------------------------------------------------
def pyg_graph(torch: Any, shuffle_edges: bool = False) -> tuple[Any, Any, tuple[np.ndarray, ...]]:
    """A PyG Data over make_csc(); with shuffle_edges its edge order differs from the CSC's."""
    from torch_geometric.data import Data

    indptr, indices, dst = make_csc()
    perm = np.random.default_rng(9).permutation(E) if shuffle_edges else np.arange(E)
    edge_index = torch.from_numpy(np.stack([indices, dst])[:, perm])
    data = Data(x=torch.randn(N, 3, generator=torch.Generator().manual_seed(0)), y=torch.arange(N) * 2,
                edge_index=edge_index, edge_attr=torch.from_numpy(perm.astype(np.float32)))
    edge_permutation = torch.from_numpy(np.argsort(perm)) if shuffle_edges else None
    return data, edge_permutation, (indptr, indices, dst)


@pytest.mark.parametrize("shuffle_edges", [False, True])
def test_node_loader_with_our_sampler(sampler: Sampler, shuffle_edges: bool) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    from torch_geometric.loader import NodeLoader
    from torch_geometric.sampler import BaseSampler

    data, perm, (indptr, indices, dst) = pyg_graph(torch, shuffle_edges)
    adapter = interop.to_pyg_sampler(sampler, seed=3, edge_permutation=perm)
    assert isinstance(adapter, BaseSampler) and isinstance(adapter, interop.PygSamplerAdapter)
    inputs = torch.tensor([4, 0, 11, 39, 7, 20, 33])
    loader = NodeLoader(data, node_sampler=adapter, input_nodes=inputs, batch_size=3)
    batches = list(loader)
    assert [b.batch_size for b in batches] == [3, 3, 1]
    for i, b in enumerate(batches):
        n_id = b.n_id.numpy()
        assert n_id[: b.batch_size].tolist() == inputs[3 * i : 3 * i + 3].tolist()
        assert b.input_id.tolist() == list(range(3 * i, 3 * i + b.batch_size))
        assert b.edge_index.dtype == torch.int64
        grow, gcol = n_id[b.edge_index[0].numpy()], n_id[b.edge_index[1].numpy()]
        assert edge_set(grow, gcol) <= edge_set(indices, dst)
        # e_id indexes the loader's data (through edge_permutation), edge_attr follows it
        assert data.edge_index[:, b.e_id].tolist() == [grow.tolist(), gcol.tolist()]
        assert torch.equal(b.edge_attr, data.edge_attr[b.e_id])
        assert torch.equal(b.x, data.x[b.n_id]) and torch.equal(b.y, data.y[b.n_id])
        assert sum(b.num_sampled_nodes) == b.num_nodes and sum(b.num_sampled_edges) == b.num_edges
        # the batch is exactly our sample under the adapter's key for batch i
        ours = sampler.sample(inputs[3 * i : 3 * i + 3], SampleKey(3, 0, i))
        assert n_id.tolist() == ours.node.tolist() and b.edge_index[0].tolist() == ours.row.tolist()


def test_adapter_keys() -> None:
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    indptr, indices, _ = make_csc()
    s = UpToK(indptr, indices)
    a = interop.to_pyg_sampler(s, seed=11)
    assert [a.next_key() for _ in range(3)] == [SampleKey(11, 0, b) for b in range(3)]
    a.set_epoch(2)
    assert a.next_key() == SampleKey(11, 2, 0)
    assert interop.to_pyg_sampler(s, key_fn=lambda b: b + 100).next_key() == SampleKey(100)
    assert interop.to_pyg_sampler(s).seed != interop.to_pyg_sampler(s).seed  # fresh seeds by default
    b = pickle.loads(pickle.dumps(interop.to_pyg_sampler(s, seed=11)))
    assert type(b) is interop.PygSamplerAdapter and b.next_key() == SampleKey(11, 0, 0)


def test_adapter_keys_in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    import torch.utils.data

    indptr, indices, _ = make_csc()
    a = interop.to_pyg_sampler(UpToK(indptr, indices), seed=1)
    # worker 1 of 3 gets the loader's batches 1, 4, 7, ...
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(num_workers=3, id=1))
    assert [a.next_key().batch for _ in range(3)] == [1, 4, 7]


def test_node_loader_workers_get_the_loader_batch_keys() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    import multiprocessing

    from torch_geometric.loader import NodeLoader

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method (spawn works too, but costs seconds per worker)")
    data, _, (indptr, indices, _) = pyg_graph(torch)
    s = UpToK(indptr, indices)
    inputs = torch.arange(0, 40, 2)
    loader = NodeLoader(data, node_sampler=interop.to_pyg_sampler(s, seed=3), input_nodes=inputs, batch_size=3,
                        num_workers=2, multiprocessing_context="fork")
    for i, b in enumerate(loader):
        assert b.n_id.tolist() == s.sample(inputs[3 * i : 3 * i + 3], SampleKey(3, 0, i)).node.tolist()


def memmapped_neighbor_sampler(tmp_path: Any) -> Sampler:
    """A NeighborSampler (numba kernels) over make_csc() saved and memory-mapped, as a Dataset's are."""
    from gnn_ooc.sampler.neighbor import NeighborSampler

    indptr, indices, _ = make_csc()
    np.save(tmp_path / "indptr.npy", indptr)
    np.save(tmp_path / "indices.npy", indices.astype(np.int32))
    maps = (np.load(tmp_path / "indptr.npy", mmap_mode="r"), np.load(tmp_path / "indices.npy", mmap_mode="r"))
    return NeighborSampler(maps, [3, 2], return_edge_ids=True)


def loader_batches(data: Any, sampler: Sampler, inputs: Any, **kwargs: Any) -> list[tuple[list[int], list[int]]]:
    from torch_geometric.loader import NodeLoader

    loader = NodeLoader(data, node_sampler=interop.to_pyg_sampler(sampler, seed=3), input_nodes=inputs, batch_size=3,
                        **kwargs)
    return [(b.n_id.tolist(), b.e_id.tolist()) for b in loader]


def check_loader_workers(context: str, worker_counts: tuple[int, ...], tmp_path: Any) -> None:
    """The same batches with ``worker_counts`` workers under ``context`` as without workers (the
    adapter keys batch n * W + w of worker w)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    import multiprocessing

    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"needs the {context} start method")
    data, _, _ = pyg_graph(torch)
    s = memmapped_neighbor_sampler(tmp_path)
    inputs = torch.arange(0, 40, 2)  # 7 batches: not a multiple of the worker counts
    want = loader_batches(data, s, inputs)  # in this process, parallel kernels: numba's pool starts
    assert want[1][0] == s.sample(inputs[3:6], SampleKey(3, 0, 1)).node.tolist()
    for workers in worker_counts:
        got = loader_batches(data, s, inputs, num_workers=workers, multiprocessing_context=context)
        assert got == want, f"{workers} {context} workers gave other batches"


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores
def test_node_loader_fork_workers_with_our_numba_sampler(tmp_path: Any) -> None:
    """A forked worker that ran numba's parallel kernels after the parent had started numba's GNU
    OpenMP pool was terminated ("fork() called from a process already using GNU OpenMP")."""
    check_loader_workers("fork", (2, 3), tmp_path)


@pytest.mark.slow  # each spawned worker imports torch, PyG and the kernels again (seconds)
def test_node_loader_spawn_workers_with_our_numba_sampler(tmp_path: Any) -> None:
    """Spawned workers map the dataset's files again by name (the sampler pickles file names)."""
    check_loader_workers("spawn", (2,), tmp_path)


def test_adapter_samples_serially_in_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """In a DataLoader worker the adapter uses the sampler's serial() twin: a worker is a core's work."""
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    import torch.utils.data

    s = memmapped_neighbor_sampler(tmp_path)
    a = interop.to_pyg_sampler(s, seed=1)
    assert a._sampler_here() is s
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(num_workers=2, id=0))
    twin = a._sampler_here()
    assert twin is a._sampler_here() and twin.parallel is False and s.parallel is True
    ups = interop.to_pyg_sampler(UpToK(*make_csc()[:2]), seed=1)
    assert ups._sampler_here() is ups.sampler  # no serial(): the sampler itself


def test_adapter_refuses_what_it_cannot_do() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    from torch_geometric.sampler import EdgeSamplerInput, NodeSamplerInput

    indptr, indices, _ = make_csc()
    a = interop.to_pyg_sampler(UpToK(indptr, indices), seed=1)
    two = torch.tensor([0, 1])
    with pytest.raises(NotImplementedError, match="NodeLoader"):
        a.sample_from_edges(EdgeSamplerInput(None, two, two))
    with pytest.raises(NotImplementedError, match="temporal"):
        a.sample_from_nodes(NodeSamplerInput(None, two, time=two))
    with pytest.raises(SamplerError, match="homogeneous"):
        a.sample_from_nodes(NodeSamplerInput(None, two, input_type="paper"))
    with pytest.raises(SamplerError, match="Sampler"):
        interop.to_pyg_sampler(object())


# --- PyG samplers as ours --------------------------------------------------------------------------
def toy_pyg_samplers(torch: Any) -> tuple[type, type]:
    from torch_geometric.sampler import BaseSampler, SamplerOutput

    class KeepSome(BaseSampler):
        """Each in-edge of the frontier kept with probability p (torch's global RNG), per hop, with counts."""

        def __init__(self, indptr: np.ndarray, indices: np.ndarray, hops: int = 2, p: float = 0.6) -> None:
            self.colptr, self.row = torch.from_numpy(indptr), torch.from_numpy(indices)
            self.hops, self.p = hops, p

        def in_edges(self, nodes: Any) -> Any:
            start, deg = self.colptr[nodes], self.colptr[nodes + 1] - self.colptr[nodes]
            owner = torch.repeat_interleave(torch.arange(nodes.numel()), deg)
            offset = torch.arange(int(deg.sum())) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
            return start[owner] + offset, owner

        def sample_from_nodes(self, index: Any, **kwargs: Any) -> Any:
            node = index.node.clone()
            local = {int(v): i for i, v in enumerate(node.tolist())}
            rows, cols, eids, nsn, nse, lo = [], [], [], [node.numel()], [], 0
            for _ in range(self.hops):
                pos, owner = self.in_edges(node[lo:])
                keep = torch.rand(pos.numel()) < self.p
                pos, owner = pos[keep], owner[keep]
                fresh = [u for u in dict.fromkeys(self.row[pos].tolist()) if u not in local]
                local.update(zip(fresh, range(len(local), len(local) + len(fresh))))
                rows.append(torch.tensor([local[u] for u in self.row[pos].tolist()], dtype=torch.long))
                cols.append(owner + lo)
                eids.append(pos)
                lo = node.numel()
                node = torch.cat([node, torch.tensor(fresh, dtype=torch.long)])
                nsn.append(len(fresh))
                nse.append(pos.numel())
            return SamplerOutput(node=node, row=torch.cat(rows), col=torch.cat(cols), edge=torch.cat(eids),
                                 num_sampled_nodes=nsn, num_sampled_edges=nse, metadata=(index.input_id, None))

        def sample_from_edges(self, index: Any, neg_sampling: Any = None) -> Any:
            raise NotImplementedError

    class ShuffledSubgraph(KeepSome):
        """The same sample without counts, nodes and edges in random order (a generic subgraph sampler)."""

        def sample_from_nodes(self, index: Any, **kwargs: Any) -> Any:
            out = super().sample_from_nodes(index)
            nperm, eperm = torch.randperm(out.node.numel()), torch.randperm(out.row.numel())
            inv = torch.empty_like(nperm)
            inv[nperm] = torch.arange(nperm.numel())
            return SamplerOutput(node=out.node[nperm], row=inv[out.row][eperm], col=inv[out.col][eperm],
                                 edge=out.edge[eperm])

    return KeepSome, ShuffledSubgraph


@pytest.mark.parametrize("with_counts", [True, False])
def test_from_pyg_sampler(with_counts: bool) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    indptr, indices, dst = make_csc()
    keep_some, shuffled = toy_pyg_samplers(torch)
    toy = keep_some(indptr, indices) if with_counts else shuffled(indptr, indices)
    ours = interop.from_pyg_sampler(toy, num_layers=None if with_counts else 2, num_nodes=N)
    assert isinstance(ours, Sampler) and ours.settings()["pyg_sampler"].endswith(type(toy).__qualname__)
    seeds = np.array([4, 0, 11, 39])
    state = torch.get_rng_state()
    a = ours.sample(seeds, SampleKey(1, 0, 0))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's torch RNG is left alone
    a.validate(N)
    assert a.seeds.tolist() == seeds.tolist() and a.num_layers == 2
    check_real_edges(a, indptr, indices, dst)
    b, c = ours.sample(seeds, SampleKey(1, 0, 0)), ours.sample(seeds, SampleKey(1, 0, 1))
    assert a.node.tolist() == b.node.tolist() and a.row.tolist() == b.row.tolist()  # same key, same batch
    assert (a.node.tolist(), a.row.tolist()) != (c.node.tolist(), c.row.tolist())
    if not with_counts:  # re-layering recovers the counted sampler's layout exactly
        counted = interop.from_pyg_sampler(keep_some(indptr, indices), num_nodes=N).sample(seeds, SampleKey(1, 0, 0))
        assert sorted(counted.node.tolist()) == sorted(a.node.tolist())
        assert counted.num_sampled_nodes == a.num_sampled_nodes and counted.num_sampled_edges == a.num_sampled_edges
        assert sorted(counted.edge.tolist()) == sorted(a.edge.tolist())


def test_from_pyg_sampler_layers_and_errors() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    from torch_geometric.sampler import SamplerOutput

    indptr, indices, dst = make_csc()
    keep_some, shuffled = toy_pyg_samplers(torch)
    seeds = np.array([4, 0])
    full = interop.from_pyg_sampler(keep_some(indptr, indices, hops=3)).sample(seeds, 2)
    cut = interop.from_pyg_sampler(keep_some(indptr, indices, hops=3), num_layers=1).sample(seeds, 2)
    assert cut.num_layers == 1 and cut.node.tolist() == full.node[: sum(full.num_sampled_nodes[:2])].tolist()
    with pytest.raises(SamplerError, match="num_layers"):
        interop.from_pyg_sampler(shuffled(indptr, indices)).sample(seeds, 2)

    class Permuted(keep_some):  # type: ignore[misc, valid-type]
        edge_permutation = torch.arange(E - 1, -1, -1)  # its edge ids are positions in reversed order

    permuted = interop.from_pyg_sampler(Permuted(indptr, indices, hops=3)).sample(seeds, 2)
    assert full.edge is not None and permuted.edge is not None
    assert permuted.edge.tolist() == (E - 1 - full.edge).tolist()
    with pytest.raises(SamplerError, match="BaseSampler"):
        interop.from_pyg_sampler(object())
    one = torch.tensor([0])
    disjoint = SamplerOutput(node=one, row=one, col=one, edge=None, batch=one)
    with pytest.raises(SamplerError, match="disjoint"):
        interop.from_pyg_sampler_output(disjoint, [0])
    with pytest.raises(SamplerError, match="SamplerOutput"):
        interop.from_pyg_sampler_output({"node": one}, [0])


def test_round_trip_through_pyg(sampler: Sampler) -> None:
    pytest.importorskip("torch_geometric", reason="the PyG adapter needs torch_geometric")
    adapter = interop.to_pyg_sampler(sampler, key_fn=lambda b: SampleKey(7, 0, 0))
    back = interop.from_pyg_sampler(adapter, num_nodes=N)
    seeds = np.array([3, 1, 30])
    want, got = sampler.sample(seeds, SampleKey(7)), back.sample(seeds, key=123)
    for name in ("node", "row", "col", "edge"):
        w, g = getattr(want, name), getattr(got, name)
        assert (w is None and g is None) or w.tolist() == g.tolist()
    assert (want.num_sampled_nodes, want.num_sampled_edges) == (got.num_sampled_nodes, got.num_sampled_edges)


def test_real_pyg_neighbor_sampler() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric", reason="needs torch_geometric")
    import torch_geometric.typing as pyg_typing

    if not (pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE):
        pytest.skip("PyG's NeighborSampler needs pyg-lib or torch-sparse, neither is installed")
    from torch_geometric.sampler import NeighborSampler

    data, _, (indptr, indices, dst) = pyg_graph(torch, shuffle_edges=True)
    ours = interop.from_pyg_sampler(NeighborSampler(data, num_neighbors=[3, 2]), num_nodes=N)
    seeds = np.array([4, 0, 11])
    a, b = ours.sample(seeds, 5), ours.sample(seeds, 5)
    a.validate(N)
    assert a.seeds.tolist() == seeds.tolist() and a.node.tolist() == b.node.tolist()
    grow, gcol = a.node[a.row], a.node[a.col]
    assert edge_set(grow, gcol) <= edge_set(indices, dst)
    assert a.edge is not None and data.edge_index[:, a.edge].tolist() == [grow.tolist(), gcol.tolist()]
