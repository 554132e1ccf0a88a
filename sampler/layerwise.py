"""A layer-wise sampler (FastGCN / LADIES style), written against the public sampler contract only.

Node-wise samplers (``NeighborSampler``) pick a fan-out of neighbours per node, so the subgraph
grows geometrically with depth. A layer-wise sampler instead fixes the number of *new nodes per
hop*: hop ``h`` looks at the union of in-neighbours of the whole frontier and picks
``layer_sizes[h - 1]`` of them, so memory and feature traffic grow linearly with depth.

This module is also the reference for writing a custom sampler: it subclasses ``Sampler``,
implements the one hook ``_sample``, and overrides ``settings`` and ``num_layers``; nothing else
of the package is used (see ``docs/custom_samplers.md``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gnn_ooc.sampler.base import (
    CorruptGraphError,
    CscGraph,
    SampledSubgraph,
    SampleKey,
    Sampler,
    SamplerError,
    parse_fanouts,
)

IMPORTANCES = ("ladies", "uniform")


class LayerWiseSampler(Sampler):
    """Layer-wise sampling: a fixed number of new nodes per hop, drawn from the frontier's neighbours.

    At hop ``h`` the *frontier* is the set of nodes first reached at hop ``h - 1`` (the seeds at
    hop 1) and the *candidates* are the union of the frontier's in-neighbours. Candidates split
    in two:

    * candidates already in the subgraph (seeds, nodes of earlier hops, the frontier itself):
      they cost no new node (their features are loaded anyway), so every edge from them into
      the frontier is kept and they do not count against ``layer_sizes``;
    * new candidates: ``layer_sizes[h - 1]`` of them are drawn without replacement (all of them
      when there are fewer, or when the size is -1), with probability proportional to the
      number of distinct frontier nodes each connects to (``importance="ladies"``, the squared
      column norm of the frontier's adjacency rows, as in LADIES) or uniformly
      (``importance="uniform"``, FastGCN without degree weights). Every edge from a drawn
      candidate into the frontier is kept, and the drawn candidates (in ascending global id)
      become the next frontier.

    This is exactly the layout of ``SampledSubgraph``: hop ``h`` edges point into the nodes
    first reached at hop ``h - 1`` and come from nodes reached by hop ``h``, and
    ``num_sampled_nodes[h] == min(layer_sizes[h - 1], new candidates)``. Edges within a hop
    follow the frontier's order, then CSC order; ``edge`` holds their global edge ids
    (positions in ``indices``), parallel edges included. The output carries no debiasing
    weights (FastGCN's ``1 / p``); models that want them can recompute them from the graph.

    Randomness comes from ``key.generator()`` only, so a key gives the same subgraph every time.
    Only the frontier's ``indptr`` entries and in-neighbour lists are read from the (possibly
    memory-mapped) CSC; work and memory are proportional to the frontier's in-degree plus the
    sampled subgraph, never to the graph.
    A topology damaged during a run (a neighbour id outside the graph, offsets that decrease)
    raises ``CorruptGraphError`` naming the file and position.

    Example:
        >>> indptr = np.array([0, 2, 4, 5, 6, 6], dtype=np.int64)  # in-edges: 1, 2 -> 0;  0, 3 -> 1;
        >>> indices = np.array([1, 2, 0, 3, 4, 0], dtype=np.int32)  #           4 -> 2;  0 -> 3
        >>> s = LayerWiseSampler((indptr, indices), [1, -1])  # one new node at hop 1, all at hop 2
        >>> out = s.sample([0, 1], key=0)
        >>> out.node.tolist(), out.num_sampled_nodes, out.num_sampled_edges
        ([0, 1, 3], (2, 1, 0), (3, 1))
        >>> out.row.tolist(), out.col.tolist(), out.edge.tolist()  # seed 1 -> seed 0 is kept too
        ([1, 0, 2, 0], [0, 1, 1, 2], [0, 2, 3, 5])
        >>> out.validate(5)
        >>> bool(np.array_equal(s.sample([0, 1], key=0).node, out.node))  # same key, same subgraph
        True
        >>> s.settings()["layer_sizes"], s.num_layers
        ([1, -1], 2)
    """

    def __init__(
        self,
        graph: Any,
        layer_sizes: Sequence[int] | str,
        *,
        importance: str = "ladies",
    ) -> None:
        self.graph = CscGraph.of(graph)
        super().__init__(num_nodes=self.graph.num_nodes)
        self.layer_sizes = parse_fanouts(layer_sizes)
        if importance not in IMPORTANCES:
            raise SamplerError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
        self.importance = importance

    @property
    def num_layers(self) -> int:
        return len(self.layer_sizes)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "layer_sizes": list(self.layer_sizes), "importance": self.importance}

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        rng = key.generator()
        indptr, indices = self.graph.indptr, self.graph.indices
        # Every node in the subgraph so far, sorted by global id, with its local id.
        order = np.argsort(seeds, kind="stable")
        known, known_local = seeds[order], order.astype(np.int64)
        frontier, lo = seeds, 0  # global ids of the nodes first reached at the last hop; local ids lo..
        nodes, rows, cols, edges = [seeds], [], [], []
        counts_n, counts_e = [int(seeds.size)], []
        for size in self.layer_sizes:
            n_total = sum(counts_n)
            # Gather the frontier's in-edges: edge ids and local destinations, frontier order.
            starts = np.asarray(indptr[frontier], dtype=np.int64)
            deg = np.asarray(indptr[frontier + 1], dtype=np.int64) - starts
            _check_offsets(indptr, frontier, starts, deg, self.graph.num_edges)
            total = int(deg.sum())
            first = np.cumsum(deg) - deg
            eid = np.repeat(starts - first, deg) + np.arange(total, dtype=np.int64)
            dst = np.repeat(np.arange(lo, lo + frontier.size, dtype=np.int64), deg)
            src = np.asarray(indices[eid], dtype=np.int64)
            _check_neighbours(indices, src, eid, dst - lo, frontier, self.graph.num_nodes)
            # Which sources are in the subgraph already?
            pos = np.minimum(np.searchsorted(known, src), max(known.size - 1, 0))
            present = known[pos] == src if known.size else np.zeros(total, dtype=bool)
            fresh = ~present
            cand, inv = np.unique(src[fresh], return_inverse=True)
            inv = inv.reshape(-1)
            chosen = self._choose(cand.size, size, inv, dst[fresh] - lo, frontier.size, rng)
            # Local ids: known sources keep theirs; chosen candidates are numbered from n_total.
            new_local = np.full(cand.size, -1, dtype=np.int64)
            new_local[chosen] = n_total + np.arange(int(chosen.sum()), dtype=np.int64)
            row = np.empty(total, dtype=np.int64)
            row[present] = known_local[pos[present]]
            row[fresh] = new_local[inv]
            keep = row >= 0
            rows.append(row[keep])
            cols.append(dst[keep])
            edges.append(eid[keep])
            counts_e.append(int(keep.sum()))
            # The chosen candidates are the next frontier.
            frontier, lo = cand[chosen], n_total
            nodes.append(frontier)
            counts_n.append(int(frontier.size))
            merged = np.concatenate([known, frontier])
            merged_local = np.concatenate([known_local, new_local[chosen]])
            order = np.argsort(merged, kind="stable")
            known, known_local = merged[order], merged_local[order]
        return SampledSubgraph(
            node=np.concatenate(nodes),
            row=np.concatenate(rows) if rows else np.empty(0, np.int64),
            col=np.concatenate(cols) if cols else np.empty(0, np.int64),
            num_sampled_nodes=tuple(counts_n),
            num_sampled_edges=tuple(counts_e),
            edge=np.concatenate(edges) if edges else np.empty(0, np.int64),
        )

    def _choose(
        self,
        num_cand: int,
        size: int,
        inv: np.ndarray,
        dst_pos: np.ndarray,
        num_frontier: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """A mask over candidates: ``size`` of them without replacement, weighted by importance."""
        if size == -1 or num_cand <= size:
            return np.ones(num_cand, dtype=bool)
        if self.importance == "ladies":
            # Distinct (candidate, frontier node) pairs: parallel edges count once.
            pairs = np.unique(inv.astype(np.int64) * num_frontier + dst_pos)
            weight = np.bincount(pairs // num_frontier, minlength=num_cand).astype(np.float64)
        else:
            weight = np.ones(num_cand, dtype=np.float64)
        # Weighted sampling without replacement (Efraimidis-Spirakis as an exponential race):
        # the ``size`` smallest Exp(1) / weight win.
        race = rng.standard_exponential(num_cand) / weight
        chosen = np.zeros(num_cand, dtype=bool)
        chosen[np.argpartition(race, size - 1)[:size]] = True
        return chosen


# The files can change on disk during a run: a bad offset would be an IndexError (or a wrong
# range), a negative neighbour id would silently wrap around in numpy's indexing.
def _check_offsets(indptr: np.ndarray, frontier: np.ndarray, starts: np.ndarray, deg: np.ndarray, num_edges: int) -> None:
    if frontier.size and (starts.min() < 0 or deg.min() < 0 or (starts + deg).max() > num_edges):
        i = int(np.flatnonzero((starts < 0) | (deg < 0) | (starts + deg > num_edges))[0])
        v = int(frontier[i])
        raise CorruptGraphError.bad_offsets(indptr, v, int(starts[i]), int(starts[i] + deg[i]), num_edges)


def _check_neighbours(indices: np.ndarray, src: np.ndarray, eid: np.ndarray, dst_pos: np.ndarray,
                      frontier: np.ndarray, num_nodes: int) -> None:
    if src.size and (src.min() < 0 or src.max() >= num_nodes):
        j = int(np.flatnonzero((src < 0) | (src >= num_nodes))[0])
        raise CorruptGraphError.bad_neighbour(indices, int(eid[j]), int(src[j]), num_nodes, int(frontier[dst_pos[j]]))
