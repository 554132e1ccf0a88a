"""The sampler contract, written once and run against every sampler (built-in and user-defined).

PyG samplers wrapped by ``interop.from_pyg_sampler`` are checked against the same invariants in
``test_interop.py`` (they need PyG).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from gnn_ooc.sampler.base import CscGraph, SampledSubgraph, SampleKey, Sampler
from gnn_ooc.sampler.layerwise import LayerWiseSampler
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import PlanSpec, epoch_order, plan_epochs
from tests.sampler.test_plan import make_dataset


class UserSampler(Sampler):
    """What a user writes: one method, built with ``from_hops`` (first k in-neighbours, random k)."""

    def __init__(self, graph: Any, k: int = 3) -> None:
        self.g = CscGraph.of(graph)
        super().__init__(self.g.num_nodes)
        self.k = k

    @property
    def num_layers(self) -> int:
        return 2

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        rng, hops, edges, frontier, seen = key.generator(), [], [], seeds, set(seeds.tolist())
        base = 0
        for _ in range(2):
            src, dst, eid = [], [], []
            for i, v in enumerate(frontier.tolist()):
                lo, hi = int(self.g.indptr[v]), int(self.g.indptr[v + 1])
                pos = rng.permutation(np.arange(lo, hi))[: self.k]
                src += self.g.indices[pos].tolist()
                dst += [base + i] * len(pos)
                eid += pos.tolist()
            hops.append((np.array(src, np.int64), np.array(dst, np.int64)))
            edges.append(np.array(eid, np.int64))
            new = [u for u in dict.fromkeys(src) if u not in seen]
            seen.update(new)
            base += len(frontier)
            frontier = np.array(new, np.int64)
        return SampledSubgraph.from_hops(seeds, hops, edges)


FACTORIES: dict[str, Callable[[Any], Sampler]] = {
    "neighbor": lambda g: NeighborSampler(g, [4, 3], return_edge_ids=True),
    "neighbor-weighted": lambda g: NeighborSampler(g, [4, 3], weights=np.linspace(0, 1, CscGraph.of(g).num_edges),
                                                   return_edge_ids=True),
    "neighbor-all": lambda g: NeighborSampler(g, [-1, 2], return_edge_ids=True),
    "layerwise": lambda g: LayerWiseSampler(g, [30, 20]),
    "user": lambda g: UserSampler(g),
}


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_dataset(tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract(name: str, ds: Any) -> None:
    sampler = FACTORIES[name](ds)
    seeds = np.random.default_rng(0).choice(ds.num_nodes, 40, replace=False)
    out = sampler.sample(seeds, SampleKey(1, 2, 3))
    out.validate(ds.num_nodes)
    assert np.array_equal(out.seeds, seeds) and out.num_layers == sampler.num_layers
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    src, dst = out.node[out.row], out.node[out.col]
    if out.edge is not None:  # global edge ids point at the right CSC slots
        assert np.array_equal(indices[out.edge], src)
        assert np.all((indptr[dst] <= out.edge) & (out.edge < indptr[dst + 1]))
    else:
        for u, v in zip(src.tolist(), dst.tolist()):
            assert u in indices[indptr[v] : indptr[v + 1]]
    again = sampler.sample(seeds, SampleKey(1, 2, 3))
    assert np.array_equal(again.node, out.node) and np.array_equal(again.row, out.row)
    for layer, block in enumerate(out.blocks):  # destinations are a prefix of the sources
        assert block.num_dst <= block.num_src and (block.row < block.num_src).all() and (block.col < block.num_dst).all()
        if layer + 1 < out.num_layers:
            assert out.blocks[layer + 1].num_src == block.num_dst


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_offline_equals_online(name: str, ds: Any) -> None:
    sampler = FACTORIES[name](ds)
    spec = PlanSpec(name=f"c-{name}", batch_size=100, seed=5, threads=2)
    plan = plan_epochs(ds, sampler, 1, spec)
    order = epoch_order(ds.split("train"), 5, 0)
    for b in (0, plan.num_batches - 1):
        online = sampler.sample(order[b * 100 : (b + 1) * 100], SampleKey(5, 0, b))
        offline = plan.epoch(0).batch(b)
        assert np.array_equal(online.node, offline.node)
        key = lambda s: sorted(zip(s.row.tolist(), s.col.tolist()))  # noqa: E731
        assert key(online) == key(offline)
