"""The built-in neighbour sampler: distributions, caps, weights, determinism, memory maps."""

from __future__ import annotations

import itertools
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.sampler.base import CorruptGraphError, SampleKey, Sampler, SamplerError
from gnn_ooc.sampler.layerwise import LayerWiseSampler
from gnn_ooc.sampler.neighbor import NeighborSampler
from tests.conftest import write_raw

# chi-square quantiles at 99.9 % (so a correct sampler fails about once in a thousand runs)
CHI2_999 = {14: 36.12, 19: 43.82, 9: 27.88}


def star(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Node 0 has in-neighbours 1..degree; no other edges."""
    indptr = np.zeros(degree + 2, np.int64)
    indptr[1:] = degree
    return indptr, np.arange(1, degree + 1, dtype=np.int32)


def csc(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((src, dst))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return indptr, src[order].astype(np.int32)


def random_csc(seed: int = 0, n: int = 300, e: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return csc(n, rng.integers(0, n, e), np.minimum(rng.zipf(1.5, e) - 1, n - 1))


def chi2(observed: np.ndarray) -> float:
    expected = observed.sum() / observed.size
    return float(((observed - expected) ** 2 / expected).sum())


def test_each_neighbour_equally_likely_and_no_repeats() -> None:
    s = NeighborSampler(star(20), [5])
    hits = np.zeros(21, np.int64)
    for b in range(4000):
        out = s.sample([0], SampleKey(3, 0, b))
        picked = out.node[out.row]
        assert picked.size == 5 and np.unique(picked).size == 5  # fan-out cap, without replacement
        hits[picked] += 1
    assert chi2(hits[1:]) < CHI2_999[19]


def test_every_subset_equally_likely() -> None:
    # without replacement means uniform over the C(6, 2) pairs, not just uniform marginals
    s = NeighborSampler(star(6), [2])
    pairs = {p: i for i, p in enumerate(itertools.combinations(range(1, 7), 2))}
    hits = np.zeros(len(pairs), np.int64)
    for b in range(6000):
        out = s.sample([0], SampleKey(1, 2, b))
        hits[pairs[tuple(sorted(out.node[out.row].tolist()))]] += 1
    assert chi2(hits) < CHI2_999[14]


def full_neighbourhood(indptr: np.ndarray, indices: np.ndarray, seeds: list[int], hops: int) -> list[tuple[int, int]]:
    """Every in-edge of every node within ``hops - 1`` hops, parallel edges included."""
    edges: list[tuple[int, int]] = []
    frontier, seen = list(seeds), set(seeds)
    for _ in range(hops):
        nxt = []
        for v in frontier:
            for u in indices[indptr[v] : indptr[v + 1]].tolist():
                edges.append((u, v))
                if u not in seen:
                    seen.add(u)
                    nxt.append(u)
        frontier = nxt
    return sorted(edges)


def test_minus_one_is_the_full_neighbourhood_and_small_degrees_are_taken_whole() -> None:
    indptr, indices = random_csc()
    seeds = [0, 5, 17]
    for fanouts in ([-1, -1], [10**6, 10**6]):
        out = NeighborSampler((indptr, indices), fanouts).sample(seeds, key=0)
        got = sorted(zip(out.node[out.row].tolist(), out.node[out.col].tolist()))
        assert got == full_neighbourhood(indptr, indices, seeds, 2)


def test_fanout_caps_per_hop() -> None:
    indptr, indices = random_csc(1)
    out = NeighborSampler((indptr, indices), [3, 2]).sample(np.arange(10), key=4)
    deg = np.diff(indptr)
    for hop, fanout in enumerate([3, 2]):
        lo, hi = sum(out.num_sampled_nodes[:hop]), sum(out.num_sampled_nodes[: hop + 1])
        e0, e1 = sum(out.num_sampled_edges[:hop]), sum(out.num_sampled_edges[: hop + 1])
        fanin = np.bincount(out.col[e0:e1] - lo, minlength=hi - lo)
        assert np.array_equal(fanin, np.minimum(deg[out.node[lo:hi]], fanout))


def test_weights_respected() -> None:
    indptr, indices = star(10)
    w = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7, 8], np.float32)
    s = NeighborSampler((indptr, indices), [1], weights=w, return_edge_ids=True)
    hits = np.zeros(10, np.int64)
    for b in range(6000):
        hits[s.sample([0], SampleKey(0, 0, b)).edge] += 1
    assert hits[0] == 0 and hits[5] == 0  # zero weight: never
    pos = w > 0
    expected = w[pos] / w[pos].sum() * hits.sum()
    assert float(((hits[pos] - expected) ** 2 / expected).sum()) < 24.3  # chi2(7) at 99.9 %


def test_weighted_without_replacement_and_too_few_positive() -> None:
    indptr, indices = star(10)
    w = np.arange(10, dtype=np.float64)
    s = NeighborSampler((indptr, indices), [4], weights=w, return_edge_ids=True)
    hits = np.zeros(10, np.int64)
    for b in range(2000):
        out = s.sample([0], SampleKey(0, 0, b))
        assert np.unique(out.edge).size == 4 and 0 not in out.edge.tolist()
        hits[out.edge] += 1
    assert np.all(np.diff(hits[1:]) > -60)  # inclusion grows with the weight (up to noise)
    few = NeighborSampler((indptr, indices), [4], weights=np.r_[np.zeros(8), 1.0, 2.0], return_edge_ids=True)
    assert sorted(few.sample([0], key=1).edge.tolist()) == [8, 9]


def test_same_result_whatever_the_thread_count() -> None:
    indptr, indices = random_csc(2, 2000, 40000)
    seeds = np.random.default_rng(0).choice(2000, 200, replace=False)
    w = np.random.default_rng(1).random(indices.size)
    for weights in (None, w):
        outs = [NeighborSampler((indptr, indices), [8, 4, 2], weights=weights, threads=t, return_edge_ids=True)
                for t in (1, 2)]
        results = [s.sample(seeds, SampleKey(9, 3, 7)) for s in outs] + [outs[0].serial().sample(seeds, SampleKey(9, 3, 7))]
        for r in results[1:]:
            for name in ("node", "row", "col", "edge"):
                assert np.array_equal(getattr(r, name), getattr(results[0], name))
            assert r.num_sampled_nodes == results[0].num_sampled_nodes


def test_keys_give_fresh_samples() -> None:
    indptr, indices = random_csc(3, 2000, 40000)
    s = NeighborSampler((indptr, indices), [5, 5])
    seeds = np.arange(0, 2000, 7)
    base = s.sample(seeds, SampleKey(0, 0, 0)).node
    for key in (SampleKey(1, 0, 0), SampleKey(0, 1, 0), SampleKey(0, 0, 1)):
        assert not np.array_equal(s.sample(seeds, key).node, base)


def test_blocks_and_edges_are_real(rng: np.random.Generator) -> None:
    indptr, indices = random_csc(4, 500, 8000)
    out = NeighborSampler((indptr, indices), [6, 4, 3], return_edge_ids=True).sample(rng.choice(500, 32, replace=False), key=5)
    out.validate(500)
    assert np.array_equal(indices[out.edge], out.node[out.row])
    starts, ends = indptr[out.node[out.col]], indptr[out.node[out.col] + 1]
    assert np.all((starts <= out.edge) & (out.edge < ends))
    blocks = out.blocks
    assert blocks[-1].num_dst == 32
    for inner, outer in zip(blocks[1:], blocks[:-1]):
        assert inner.num_src == outer.num_dst  # a layer's sources are the next layer's destinations
    for b in blocks:
        assert b.num_dst <= b.num_src and b.row.max() < b.num_src and b.col.max() < b.num_dst


def test_bad_input_is_named() -> None:
    g = random_csc()
    with pytest.raises(SamplerError, match="outside the graph"):
        NeighborSampler(g, [2]).sample([0, 300], key=0)
    with pytest.raises(SamplerError, match="twice"):
        NeighborSampler(g, [2]).sample([1, 1], key=0)
    with pytest.raises(SamplerError, match="fan-outs"):
        NeighborSampler(g, [0])
    with pytest.raises(SamplerError, match="aligned with indices"):
        NeighborSampler(g, [2], weights=np.ones(3))
    with pytest.raises(SamplerError, match=">= 0"):
        NeighborSampler(g, [2], weights=-np.ones(g[1].size))
    with pytest.raises(SamplerError, match="key"):
        NeighborSampler(g, [2]).sample([0], key="x")


def test_empty_seeds_and_isolated_nodes() -> None:
    indptr, indices = star(3)
    out = NeighborSampler((indptr, indices), [2, 2]).sample([3, 1], key=0)  # both have no in-edges
    assert out.node.tolist() == [3, 1] and out.num_edges == 0 and out.num_sampled_nodes == (2, 0, 0)
    assert NeighborSampler((indptr, indices), [2]).sample(np.empty(0, np.int64), key=0).num_nodes == 0


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 400, 5000), rng.integers(0, 400, 5000)
    labels = rng.integers(0, 3, 400)
    write_raw(root / "raw", src, dst, features=rng.random((400, 4), dtype=np.float32), labels=labels,
              splits={"train": np.arange(0, 300), "valid": np.arange(300, 350), "test": np.arange(350, 400)})
    preprocess(PreprocessSpec(output=root / "ds", edges=(root / "raw" / "edges.parquet",),
                              features=root / "raw" / "node_features.npy", labels=root / "raw" / "node_labels.npy",
                              split_dir=root / "raw" / "split"))
    return Dataset.open(root / "ds")


def test_memory_mapped_dataset_and_pickling(small_dataset: Dataset, tmp_path: Path) -> None:
    s = NeighborSampler(small_dataset, [5, 5])
    assert isinstance(s.graph.indices, np.memmap)  # never loaded whole
    w = tmp_path / "w.npy"
    np.save(w, np.ones(small_dataset.num_edges, np.float32))
    sw = NeighborSampler(small_dataset, [5, 5], weights=w)
    for sampler in (s, sw):
        blob = pickle.dumps(sampler)
        assert len(blob) < 4096  # the maps are reopened, not copied
        twin = pickle.loads(blob)
        a, b = sampler.sample(np.arange(50), key=2), twin.sample(np.arange(50), key=2)
        assert np.array_equal(a.node, b.node) and np.array_equal(a.row, b.row)


# --- a topology damaged during a run ---------------------------------------------------------------
@pytest.fixture
def damaged(small_dataset: Dataset, tmp_path: Path) -> Dataset:
    """A private copy of the small dataset, opened: the tests then change its files under it."""
    shutil.copytree(small_dataset.path, tmp_path / "ds")
    return Dataset.open(tmp_path / "ds")


def poke(path: Path, position: int, value: int) -> None:
    """Write one value into a .npy in place, as a disk error or another writer would; the sampler's
    read-only shared mapping sees it."""
    arr = np.load(path, mmap_mode="r+")
    arr[position] = value
    arr.flush()
    del arr


def in_edges_of(ds: Dataset, v: int) -> tuple[int, int]:
    return int(ds.indptr[v]), int(ds.indptr[v + 1])


def sampler_of(kind: str, ds: Dataset, sizes: list[int]) -> Sampler:
    if kind == "layerwise":  # the same exposure: it reads the CSC by index too
        return LayerWiseSampler(ds, sizes)
    s = NeighborSampler(ds, sizes)
    return s.serial() if kind == "serial" else s


@pytest.mark.parametrize("kind", ["parallel", "serial", "layerwise"])
@pytest.mark.parametrize("value", ["num_nodes", "negative"])
def test_a_neighbour_id_outside_the_graph_is_named(damaged: Dataset, value: str, kind: str) -> None:
    s = sampler_of(kind, damaged, [-1, 3])
    seeds = np.arange(0, 300, 7)
    s.sample(seeds, key=1)  # fine before the damage
    v = int(seeds[np.flatnonzero(np.diff(damaged.indptr)[seeds] > 0)[1]])
    start, _ = in_edges_of(damaged, v)
    bad = damaged.num_nodes if value == "num_nodes" else -5
    poke(damaged.path / "indices.npy", start, bad)
    with pytest.raises(CorruptGraphError) as err:
        s.sample(seeds, key=1)
    msg = str(err.value)
    assert isinstance(err.value, SamplerError) and "\n" not in msg
    assert msg.startswith(str(damaged.path / "indices.npy")) and f"position {start} holds node id {bad}," in msg
    assert f"in-neighbour of node {v})" in msg


@pytest.mark.parametrize("kind", ["parallel", "layerwise"])
@pytest.mark.parametrize("damage", ["decreasing", "past_the_end", "negative"])
def test_damaged_offsets_are_named(damaged: Dataset, damage: str, kind: str) -> None:
    s = sampler_of(kind, damaged, [4, 4])
    seeds = np.arange(10, 60)
    v = 20
    start, end = in_edges_of(damaged, v)
    if damage == "negative":
        position, value = v, -3
    else:
        position, value = v + 1, start - 1 if damage == "decreasing" else damaged.num_edges + 10
    poke(damaged.path / "indptr.npy", position, value)
    with pytest.raises(CorruptGraphError, match=r"indptr\.npy: node (19|20)'s offsets indptr\[\d+:\d+\]") as err:
        s.sample(seeds, key=0)
    assert str(err.value).startswith(str(damaged.path / "indptr.npy")) and str(value) in str(err.value)


# --- in a forked child -----------------------------------------------------------------------------
def _sample_and_send(s: NeighborSampler, seeds: np.ndarray, key: SampleKey, conn: Any) -> None:
    out = s.sample(seeds, key)
    conn.send((out.node.tolist(), out.row.tolist(), out.col.tolist()))


def test_sampling_in_a_child_forked_after_the_parallel_kernels_ran() -> None:
    """numba's GNU OpenMP pool does not survive fork: a child that launched a parallel kernel was
    terminated (SIGTERM) once the parent had started the pool. It samples serially, the same batch."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    indptr, indices = random_csc(5, 2000, 40000)
    s, seeds, key = NeighborSampler((indptr, indices), [8, 4]), np.arange(0, 2000, 9), SampleKey(2, 0, 1)
    want = s.sample(seeds, key)  # in the main thread: the parallel kernels start numba's pool
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_sample_and_send, args=(s, seeds, key, send))
    child.start()
    send.close()
    try:
        got = recv.recv() if recv.poll(60) else None
    except EOFError:  # it died without sending
        got = None
    child.join(60)
    assert child.exitcode == 0, f"the forked child died (exit code {child.exitcode})"
    assert got == (want.node.tolist(), want.row.tolist(), want.col.tolist())
