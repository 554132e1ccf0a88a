"""Contract checks for the parts a user brings, the same our own tests run over every built-in.

* ``check_sampler(sampler, graph)``: the ``SampledSubgraph`` layout, seeds first, every edge an
  edge of the graph (at its CSC slot when edge ids are given), blocks that chain, the same key
  giving the same batch, and the same batch again after a pickle round trip (what offline
  planning does with the sampler);
* ``check_feature_store(store, reference)``: rows equal the reference array's, with duplicates,
  a preallocated output, empty ids, ``gather_at``, hit counts, and the errors for bad ids;
* ``check_resume(make, step)``: a component's ``state_dict`` taken half way and loaded into a
  fresh one gives the same steps afterwards (exact resume).

Each raises ``ContractError`` (an ``AssertionError``: pytest shows it as a failed check) naming
the part and what broke.

Example:
    >>> import numpy as np
    >>> from gnn_ooc.sampler import NeighborSampler
    >>> g = (np.array([0, 2, 3, 5, 6]), np.array([1, 2, 0, 0, 3, 2], np.int32))
    >>> check_sampler(NeighborSampler(g, [2, 2]), g, seeds=[0, 3])
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["ContractError", "check_feature_store", "check_resume", "check_sampler"]


class ContractError(AssertionError):
    """A part that breaks its contract; the message names the part and the invariant."""


def _expect(ok: Any, part: Any, what: str) -> None:
    if not ok:
        raise ContractError(f"{type(part).__name__}: {what}")


# --- samplers ------------------------------------------------------------------------------------
def check_sampler(sampler: Any, graph: Any, *, seeds: Sequence[int] | np.ndarray | None = None,
                  key: Any = None) -> None:
    """Check ``sampler`` (a ``Sampler``) against its contract on ``graph`` (what it samples from:
    a ``Dataset``, a ``CscGraph`` or ``(indptr, indices)``), for ``seeds`` (default: 40 random
    nodes) under ``key`` (default ``SampleKey(1, 2, 3)``)."""
    from gnn_ooc.sampler.base import CscGraph, SampleKey, Sampler

    _expect(isinstance(sampler, Sampler), sampler, "is not a gnn_ooc.sampler.base.Sampler")
    g = CscGraph.of(graph)
    key = key if key is not None else SampleKey(1, 2, 3)
    if seeds is None:
        seeds = np.random.default_rng(0).choice(g.num_nodes, min(40, g.num_nodes), replace=False)
    seeds = np.asarray(seeds, dtype=np.int64)
    out = sampler.sample(seeds, key)
    out.validate(g.num_nodes)
    _expect(np.array_equal(out.seeds, seeds), sampler, "the seeds are not first, in the order given")
    _expect(sampler.num_layers in (None, out.num_layers), sampler,
            f"num_layers is {sampler.num_layers} but a sample has {out.num_layers} hops")
    _check_edges(sampler, out, np.asarray(g.indptr), np.asarray(g.indices))
    _check_blocks(sampler, out)
    _expect(_same_sample(out, sampler.sample(seeds, key)), sampler, "the same key gave another sample")
    twin = pickle.loads(pickle.dumps(sampler))
    _expect(_same_sample(out, twin.sample(seeds, key)), sampler,
            "a pickled copy (what offline planning uses) gave another sample for the same key")


def _check_edges(sampler: Any, out: Any, indptr: np.ndarray, indices: np.ndarray) -> None:
    src, dst = out.node[out.row], out.node[out.col]
    if out.edge is not None:  # global edge ids point at the right CSC slots
        _expect(np.array_equal(indices[out.edge], src), sampler, "an edge id's CSC slot holds another source")
        _expect(np.all((indptr[dst] <= out.edge) & (out.edge < indptr[dst + 1])), sampler,
                "an edge id lies outside its destination's in-edges")
        return
    for u, v in zip(src.tolist(), dst.tolist()):
        _expect(u in indices[indptr[v] : indptr[v + 1]], sampler, f"edge {u} -> {v} is not an edge of the graph")


def _check_blocks(sampler: Any, out: Any) -> None:
    for layer, block in enumerate(out.blocks):  # destinations are a prefix of the sources
        _expect(block.num_dst <= block.num_src and (block.row < block.num_src).all()
                and (block.col < block.num_dst).all(), sampler, f"block {layer} has ids outside its nodes")
        if layer + 1 < out.num_layers:
            _expect(out.blocks[layer + 1].num_src == block.num_dst, sampler,
                    f"block {layer + 1} does not start from block {layer}'s destinations")


def _same_sample(a: Any, b: Any) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("node", "row", "col"))


# --- feature stores ------------------------------------------------------------------------------
def check_feature_store(store: Any, reference: np.ndarray) -> None:
    """Check ``store`` (a ``FeatureStore``) against ``reference``, the [N, D] rows it must serve."""
    import torch

    from gnn_ooc.errors import InputError
    from gnn_ooc.graphstore.features.base import FeatureStore

    _expect(isinstance(store, FeatureStore), store, "is not a gnn_ooc.graphstore.features.base.FeatureStore")
    ref = torch.from_numpy(np.ascontiguousarray(reference)).to(store.dtype)
    n, d = ref.shape
    _expect((store.num_rows, store.dim) == (n, d), store, f"holds {store.num_rows} x {store.dim}, expected {n} x {d}")
    ids = np.random.default_rng(1).integers(0, n, min(500, 4 * n))  # duplicates included
    rows_before = store.stats.rows
    _expect(torch.equal(store.gather(ids).cpu(), ref[ids]), store, "gathered rows differ from the reference")
    out = torch.full((3, d), -1, dtype=store.dtype, device=store.device)
    _expect(store.gather(torch.tensor([n - 1, 0, n - 1]), out=out) is out, store, "gather(out=) did not fill out")
    _expect(torch.equal(out.cpu(), ref[[n - 1, 0, n - 1]]), store, "gather(out=) wrote other rows")
    _expect(tuple(store.gather([]).shape) == (0, d), store, "gather([]) is not an empty [0, D] tensor")
    _expect(store.stats.rows - rows_before == ids.size + 3, store, "rows served are not counted in stats.rows")
    into = torch.full((6, d), -1, dtype=store.dtype, device=store.device)
    _expect(store.gather_at([min(7, n - 1), n - 1], into, torch.tensor([4, 0])) is into, store, "gather_at's output")
    _expect(torch.equal(into[[4, 0]].cpu(), ref[[min(7, n - 1), n - 1]]) and bool((into[[1, 2, 3, 5]] == -1).all()),
            store, "gather_at did not place the rows at the given positions only")
    for bad in ([0, n], [-1]):
        try:
            store.gather(bad)
        except InputError:
            continue
        raise ContractError(f"{type(store).__name__}: gather({bad}) did not refuse the row id outside [0, {n})")


# --- exact resume --------------------------------------------------------------------------------
def check_resume(make: Callable[[], Any], step: Callable[[Any], Any], *, steps: int = 6,
                 same: Callable[[Any, Any], bool] | None = None) -> None:
    """``make()`` builds the component (anything with ``state_dict``/``load_state_dict``), ``step(c)``
    advances it and returns what it produced. Run ``steps`` steps; from a ``state_dict`` taken half
    way, a fresh component must produce the same second half (``same`` compares two outputs,
    default: equal, arrays and tensors element-wise)."""
    same = same or _equal
    first = make()
    half = steps // 2
    for _ in range(half):
        step(first)
    state = first.state_dict()
    pickle.dumps(state)  # a checkpoint must be able to hold it
    rest = [step(first) for _ in range(steps - half)]
    second = make()
    second.load_state_dict(state)
    for i, want in enumerate(rest):
        _expect(same(step(second), want), second, f"step {half + i} after load_state_dict differs from the original's")


def _equal(a: Any, b: Any) -> bool:
    if hasattr(a, "detach") and hasattr(b, "detach"):
        return bool(a.shape == b.shape and (a == b).all())
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)
