"""The sampler contract, written once and run against every sampler (built-in and user-defined).

PyG samplers wrapped by ``interop.from_pyg_sampler`` are checked against the same invariants in
``test_interop.py`` (they need PyG).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import pytest

from gnn_ooc.sampler.base import CscGraph, SampledSubgraph, SampleKey, Sampler
from gnn_ooc.sampler.layerwise import LayerWiseSampler
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import PlanSpec, epoch_order, plan_epochs
from gnn_ooc.testing import ContractError, check_resume, check_sampler
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
    """The checks ``gnn_ooc.testing`` ships to users, on every sampler of ours."""
    sampler = FACTORIES[name](ds)
    seeds = np.random.default_rng(0).choice(ds.num_nodes, 40, replace=False)
    check_sampler(sampler, ds, seeds=seeds, key=SampleKey(1, 2, 3))
    check_resume(lambda: FACTORIES[name](ds), lambda s: s.sample(seeds, SampleKey(1, 2, 3)).node)


class _Broken(NeighborSampler):
    def __init__(self, graph: Any, how: str) -> None:
        super().__init__(graph, [3, 2], return_edge_ids=True)
        self.how = how

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        out = super()._sample(seeds, key)
        if self.how == "random":  # randomness not from the key
            return super()._sample(seeds, SampleKey(int(np.random.randint(1 << 30))))
        if self.how == "edges":  # edge ids off by one
            return dataclasses.replace(out, edge=(out.edge + 1) % CscGraph.of(self.graph).num_edges)
        return out


@pytest.mark.parametrize("how,message", [("random", "the same key gave another sample"),
                                         ("edges", "an edge id's CSC slot holds another source")])
def test_the_shipped_check_fails_a_broken_sampler(ds: Any, how: str, message: str) -> None:
    with pytest.raises(ContractError, match=f"_Broken: {message}"):
        check_sampler(_Broken(ds, how), ds)


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
