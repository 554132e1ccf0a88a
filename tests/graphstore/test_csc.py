"""The external-sort CSC builder against a CSC built in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_ooc.graphstore.format.npyfile import NpyWriter
from gnn_ooc.graphstore.ingest.csc import CscBuilder, index_dtype
from tests.conftest import random_graph, reference_csc


def build(tmp: Path, src: np.ndarray, dst: np.ndarray, n: int | None, budget: int, chunk: int, **flags: bool) -> tuple[np.ndarray, np.ndarray, object]:
    b = CscBuilder(tmp, num_nodes=n, memory_budget=budget, expected_edges=len(src), **flags)
    for s in range(0, len(src), chunk):
        b.add(np.asarray(src[s : s + chunk], np.int64), np.asarray(dst[s : s + chunk], np.int64))
    final_n = n if n is not None else b.max_id + 1
    with NpyWriter(tmp / "indptr.npy", np.int64, (final_n + 1,)) as p, NpyWriter(tmp / "indices.npy", index_dtype(final_n), (None,)) as i:
        stats = b.finish(p, i)
    leftovers = [f.name for f in tmp.iterdir() if f.name.startswith("bucket")]
    assert not leftovers, leftovers
    return np.load(tmp / "indptr.npy"), np.load(tmp / "indices.npy"), stats


@pytest.mark.parametrize("budget", [1 << 20, 1 << 26])
@pytest.mark.parametrize("flags", [{}, {"undirected": True}, {"drop_self_loops": True, "dedup": True},
                                   {"undirected": True, "dedup": True, "drop_self_loops": True}])
def test_random_graphs_match_reference(tmp_path: Path, rng: np.random.Generator, budget: int, flags: dict[str, bool]) -> None:
    n, e = 5000, 60000
    src, dst = random_graph(rng, n, e)
    indptr, indices, _ = build(tmp_path, src, dst, n, budget, chunk=7777, **flags)
    ref_ptr, ref_idx = reference_csc(src, dst, n, **flags)
    assert indices.dtype == np.int32
    np.testing.assert_array_equal(indptr, ref_ptr)
    np.testing.assert_array_equal(indices, ref_idx)


def test_spills_and_resplits_under_a_tiny_budget(tmp_path: Path, rng: np.random.Generator) -> None:
    # 400k edges onto 40 nodes: 3.2 MB of records, far over a 1 MiB budget and its buckets.
    src, dst = rng.integers(0, 40, 400_000), rng.integers(0, 40, 400_000)
    indptr, indices, stats = build(tmp_path, src, dst, None, 1 << 20, chunk=20_000)
    ref_ptr, ref_idx = reference_csc(src, dst, 40)
    np.testing.assert_array_equal(indptr, ref_ptr)
    np.testing.assert_array_equal(indices, ref_idx)
    assert stats.spilled_bytes > 0 and stats.resplits > 0  # type: ignore[attr-defined]


def test_unknown_node_count_is_largest_id_plus_one(tmp_path: Path) -> None:
    indptr, indices, stats = build(tmp_path, np.array([5, 0]), np.array([9, 9]), None, 1 << 22, chunk=1)
    assert stats.num_nodes == 10  # type: ignore[attr-defined]
    assert indptr.tolist() == [0] * 10 + [2] and indices.tolist() == [0, 5]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40).flatmap(lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=200),
        st.booleans(), st.booleans(), st.booleans(), st.integers(1, 50),
    ))
)
def test_property_small_edge_lists(tmp_path_factory: pytest.TempPathFactory, case: tuple) -> None:
    n, edges, undirected, loops, dedup, chunk = case
    src = np.array([e[0] for e in edges])
    dst = np.array([e[1] for e in edges])
    tmp = tmp_path_factory.mktemp("csc")
    flags = {"undirected": undirected, "drop_self_loops": loops, "dedup": dedup}
    indptr, indices, _ = build(tmp, src, dst, n, 1 << 20, chunk, **flags)
    ref_ptr, ref_idx = reference_csc(src, dst, n, **flags)
    assert indptr.tolist() == ref_ptr.tolist()
    assert indices.tolist() == ref_idx.tolist()
