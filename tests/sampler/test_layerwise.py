"""LayerWiseSampler: layout, real edges, layer sizes, determinism, importance, -1 = every candidate."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

import gnn_ooc.sampler.layerwise as layerwise
from gnn_ooc.sampler.base import SampledSubgraph, SampleKey, SamplerError
from gnn_ooc.sampler.layerwise import LayerWiseSampler
from tests.conftest import random_graph, reference_csc

Graph = tuple[np.ndarray, np.ndarray]


def uniform_graph(seed: int, n: int, e: int) -> Graph:
    rng = np.random.default_rng(seed)
    indptr, indices = reference_csc(rng.integers(0, n, e), rng.integers(0, n, e), n)
    return indptr, indices.astype(np.int32)


def skewed_graph(seed: int, n: int, e: int) -> Graph:
    """Power-law in-degrees, duplicate edges, self loops, many nodes without in-edges."""
    src, dst = random_graph(np.random.default_rng(seed), n, e)
    indptr, indices = reference_csc(src, dst, n)
    return indptr, indices.astype(np.int32)


GRAPHS = {"uniform": uniform_graph(0, 400, 2400), "skewed": skewed_graph(1, 400, 4000)}


def check_layerwise(out: SampledSubgraph, graph: Graph, sizes: list[int]) -> None:
    """Check ``out`` against the definition, with plain Python sets (slow, small graphs only)."""
    indptr, indices = graph
    out.validate(len(indptr) - 1)
    assert out.edge is not None and out.num_layers == len(sizes)
    cum_n = np.concatenate([[0], np.cumsum(out.num_sampled_nodes)])
    cum_e = np.concatenate([[0], np.cumsum(out.num_sampled_edges)])
    node = out.node.tolist()
    # Every edge is a real in-edge with its global edge id: indices[e] == node[row], e in node[col]'s range.
    v = out.node[out.col]
    assert np.all(indptr[v] <= out.edge) and np.all(out.edge < indptr[v + 1])
    assert np.array_equal(indices[out.edge].astype(np.int64), out.node[out.row])
    for h in range(1, out.num_layers + 1):
        frontier = node[cum_n[h - 1] : cum_n[h]]
        before, by_now = set(node[: cum_n[h]]), set(node[: cum_n[h + 1]])
        in_edges = [e for u in frontier for e in range(indptr[u], indptr[u + 1])]
        candidates = {int(indices[e]) for e in in_edges} - before
        new = set(node[cum_n[h] : cum_n[h + 1]])
        assert new <= candidates, f"hop {h}: a new node is not an in-neighbour of the frontier"
        size = sizes[h - 1]
        assert len(new) == (len(candidates) if size == -1 else min(size, len(candidates))), f"hop {h}"
        # Every edge from a node in the subgraph into the frontier is kept (seeds included), once.
        kept = out.edge[cum_e[h - 1] : cum_e[h]].tolist()
        assert len(kept) == len(set(kept))
        assert set(kept) == {e for e in in_edges if int(indices[e]) in by_now}, f"hop {h}"


@pytest.mark.parametrize("importance", ["ladies", "uniform"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("sizes", [[5], [8, 4], [20, 10, 5], [3, -1], [1, 1, 1, 1]])
def test_output_follows_the_definition(name: str, importance: str, sizes: list[int]) -> None:
    graph = GRAPHS[name]
    sampler = LayerWiseSampler(graph, sizes, importance=importance)
    rng = np.random.default_rng(7)
    for batch in range(4):
        seeds = rng.choice(len(graph[0]) - 1, size=int(rng.integers(1, 16)), replace=False)
        out = sampler.sample(seeds, SampleKey(3, 0, batch))
        assert np.array_equal(out.seeds, seeds)
        check_layerwise(out, graph, sizes)


def test_minus_one_takes_every_candidate() -> None:
    # With -1 at every hop the sample is the full L-hop in-neighbourhood, whatever the key.
    graph = GRAPHS["skewed"]
    indptr, indices = graph
    seeds = np.array([0, 1, 5, 17])
    sampler = LayerWiseSampler(graph, [-1, -1])
    outs = [sampler.sample(seeds, key) for key in (0, 1, 2)]
    for out in outs:
        check_layerwise(out, graph, [-1, -1])
        assert out.num_edges == int(sum(indptr[v + 1] - indptr[v] for v in out.node[: sum(out.num_sampled_nodes[:2])]))
    assert all(np.array_equal(o.edge, outs[0].edge) and np.array_equal(o.node, outs[0].node) for o in outs)
    reached = set(seeds.tolist())
    frontier = set(reached)
    for h in range(1, 3):
        nxt = {int(indices[e]) for u in frontier for e in range(indptr[u], indptr[u + 1])} - reached
        assert outs[0].num_sampled_nodes[h] == len(nxt)
        reached |= nxt
        frontier = nxt


def test_layer_sizes_bound_new_nodes() -> None:
    graph = uniform_graph(2, 2000, 40000)  # in-degree 20: every frontier has many more candidates
    sampler = LayerWiseSampler(graph, [10, 7, 3])
    out = sampler.sample(np.arange(50), key=1)
    assert out.num_sampled_nodes == (50, 10, 7, 3)
    check_layerwise(out, graph, [10, 7, 3])


def test_seeds_that_are_neighbours_keep_their_edges() -> None:
    # 1 -> 0 and 0 -> 1 between the seeds, plus new candidates 2, 3 (into 0) and 4 (into 1).
    indptr = np.array([0, 3, 5, 5, 5, 5], dtype=np.int64)
    indices = np.array([1, 2, 3, 0, 4], dtype=np.int32)
    out = LayerWiseSampler((indptr, indices), [1]).sample([0, 1], key=0)
    assert out.num_sampled_nodes[1] == 1
    assert {0, 3} <= set(out.edge.tolist())  # the seed-to-seed edges, whatever was drawn
    check_layerwise(out, (indptr, indices), [1])


def test_same_key_same_subgraph_and_different_keys_differ() -> None:
    graph = GRAPHS["uniform"]
    sampler = LayerWiseSampler(graph, [15, 10])
    seeds = np.arange(0, 400, 40)
    a, b = sampler.sample(seeds, SampleKey(5, 1, 2)), sampler.sample(seeds, SampleKey(5, 1, 2))
    for field in ("node", "row", "col", "edge"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert a.num_sampled_nodes == b.num_sampled_nodes and a.num_sampled_edges == b.num_sampled_edges
    others = [sampler.sample(seeds, k) for k in (SampleKey(5, 1, 3), SampleKey(5, 2, 2), SampleKey(6, 1, 2))]
    assert all(not np.array_equal(o.node, a.node) for o in others)


def ladies_graph() -> tuple[Graph, np.ndarray, np.ndarray]:
    """20 seeds; 50 'hub' candidates each pointing into 10 seeds, 50 'leaf' candidates into 1."""
    rng = np.random.default_rng(11)
    seeds, hubs, leaves = np.arange(20), np.arange(20, 70), np.arange(70, 120)
    src = [np.repeat(hubs, 10), leaves]
    dst = [np.concatenate([rng.choice(20, 10, replace=False) for _ in hubs]), rng.integers(0, 20, 50)]
    # A duplicated leaf edge must not make the leaf look better connected (distinct frontier nodes count).
    src.append(np.repeat(leaves[:5], 20))
    dst.append(np.repeat(dst[1][:5], 20))
    indptr, indices = reference_csc(np.concatenate(src), np.concatenate(dst), 120)
    return (indptr, indices.astype(np.int32)), seeds, hubs


def test_ladies_prefers_candidates_connected_to_more_frontier_nodes() -> None:
    graph, seeds, hubs = ladies_graph()
    draws = 1500

    def hub_share(importance: str, size: int) -> float:
        sampler = LayerWiseSampler(graph, [size], importance=importance)
        picked = np.concatenate([sampler.sample(seeds, SampleKey(0, 0, b)).node[20:] for b in range(draws)])
        return float(np.isin(picked, hubs).mean())

    # One draw: P(hub) = 50 * 10 / (50 * 10 + 50 * 1) = 0.909 under LADIES, 0.5 uniformly.
    assert abs(hub_share("ladies", 1) - 500 / 550) < 0.04
    assert abs(hub_share("uniform", 1) - 0.5) < 0.06
    # Ten draws without replacement: still mostly hubs, and leaves are never excluded outright.
    assert 0.8 < hub_share("ladies", 10) < 0.99


def test_reads_a_memory_mapped_csc(tmp_path: Path) -> None:
    indptr, indices = GRAPHS["skewed"]
    np.save(tmp_path / "indptr.npy", indptr)
    np.save(tmp_path / "indices.npy", indices)
    mapped = (np.load(tmp_path / "indptr.npy", mmap_mode="r"), np.load(tmp_path / "indices.npy", mmap_mode="r"))
    seeds = np.array([0, 3, 9])
    out = LayerWiseSampler(mapped, [6, 6]).sample(seeds, key=4)
    ref = LayerWiseSampler((indptr, indices), [6, 6]).sample(seeds, key=4)
    assert type(out.node) is np.ndarray and type(out.edge) is np.ndarray
    assert np.array_equal(out.node, ref.node) and np.array_equal(out.edge, ref.edge)
    check_layerwise(out, (indptr, indices), [6, 6])


def test_isolated_seeds_and_empty_hops() -> None:
    indptr = np.array([0, 0, 1, 1], dtype=np.int64)  # only 0 -> 1
    indices = np.array([0], dtype=np.int32)
    sampler = LayerWiseSampler((indptr, indices), [4, 4, 4])
    out = sampler.sample([2], key=0)
    assert out.num_sampled_nodes == (1, 0, 0, 0) and out.num_edges == 0
    out = sampler.sample([1], key=0)
    assert out.node.tolist() == [1, 0] and out.num_sampled_nodes == (1, 1, 0, 0)
    out = sampler.sample(np.empty(0, np.int64), key=0)
    assert out.num_nodes == 0 and out.num_sampled_edges == (0, 0, 0)


def test_settings_are_json_and_bad_arguments_fail() -> None:
    sampler = LayerWiseSampler(GRAPHS["uniform"], "10, -1", importance="uniform")
    assert sampler.num_layers == 2
    settings = json.loads(json.dumps(sampler.settings()))
    assert settings == {
        "sampler": "gnn_ooc.sampler.layerwise.LayerWiseSampler",
        "layer_sizes": [10, -1],
        "importance": "uniform",
    }
    assert LayerWiseSampler(GRAPHS["uniform"], [10, -1]).settings() != settings
    with pytest.raises(SamplerError, match="importance"):
        LayerWiseSampler(GRAPHS["uniform"], [5], importance="fastgcn")
    with pytest.raises(SamplerError, match="fan-outs"):
        LayerWiseSampler(GRAPHS["uniform"], [5, 0])
    with pytest.raises(SamplerError):
        LayerWiseSampler(np.arange(3), [5])
    with pytest.raises(SamplerError, match="outside the graph"):
        sampler.sample([400], key=0)


def test_docstring_example_runs() -> None:
    result = doctest.testmod(layerwise, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
