"""The sampler contract: seeds and a key in, a layered sampled subgraph out.

A sampler turns a batch of seed node ids into the subgraph a GNN with ``L`` layers needs. The
output carries what PyG's ``SamplerOutput`` carries:

* ``node``: global ids of every sampled node, the seeds first, then the nodes first reached at
  hop 1, hop 2, ... (``num_sampled_nodes`` counts them per hop, seeds included as hop 0);
* ``row``/``col``: local source/destination index of each sampled edge (messages flow
  ``row -> col``, so ``edge_index = [row, col]``), edges ordered by hop (``num_sampled_edges``);
* ``edge``: global edge ids (positions in the dataset's CSC ``indices``) when asked for.

Hop ``h`` edges point into the nodes first reached at hop ``h - 1`` and come from nodes reached
by hop ``h``. So the block of GNN layer ``i`` (0 = input layer, as in DGL) is a prefix of the
edge list: its destinations are a prefix of its sources, and ``blocks[-1]`` ends at the seeds.

Randomness is explicit: a ``SampleKey`` (seed, epoch, batch) is passed with the seeds, so a
batch is the same whatever the thread count, and a plan can be reproduced batch by batch.

Example:
    >>> class FirstNeighbors(Sampler):
    ...     '''A custom sampler is one method: take the first in-neighbour of every seed.'''
    ...     def __init__(self, indptr, indices):
    ...         super().__init__(num_nodes=len(indptr) - 1)
    ...         self.indptr, self.indices = indptr, indices
    ...     def _sample(self, seeds, key):
    ...         has = self.indptr[seeds + 1] > self.indptr[seeds]
    ...         nbrs = self.indices[self.indptr[seeds[has]]]
    ...         return SampledSubgraph.from_hops(seeds, [(nbrs, np.flatnonzero(has))])
    >>> s = FirstNeighbors(np.array([0, 1, 2, 2]), np.array([2, 0]))
    >>> out = s.sample([1, 0], key=0)
    >>> out.node.tolist(), out.row.tolist(), out.col.tolist(), out.num_sampled_nodes
    ([1, 0, 2], [1, 2], [0, 1], (2, 1))
"""

from __future__ import annotations

import os
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from gnn_ooc.errors import GnnOocError

_MASK64 = (1 << 64) - 1


class SamplerError(GnnOocError, ValueError):
    """Bad sampler input (seeds, fan-outs, key) or a sampler output that breaks the contract."""


class CorruptGraphError(SamplerError):
    """The CSC topology broke its invariants while being sampled: a neighbour id outside
    ``[0, N)`` in ``indices``, or ``indptr`` offsets that decrease or leave ``[0, E]``.

    A run checks the dataset when it starts, but the files can still change on disk (or be
    damaged in the page cache) during the run; samplers raise this instead of reading out of
    bounds. The message names the file, the position and the value.

    Example:
        >>> print(CorruptGraphError.bad_neighbour(np.array([0, 9]), 1, 9, 2, 0))
        indices (in memory): position 1 holds node id 9, outside the graph's 2 nodes (an in-neighbour of node 0): ...
    """

    _DAMAGED = ": the topology is damaged or changed on disk"

    @classmethod
    def bad_neighbour(cls, indices: np.ndarray, position: int, value: int, num_nodes: int, node: int) -> CorruptGraphError:
        return cls(f"{cls._name(indices, 'indices')}: position {position} holds node id {value}, outside the graph's "
                   f"{num_nodes} nodes (an in-neighbour of node {node}){cls._DAMAGED}")

    @classmethod
    def bad_offsets(cls, indptr: np.ndarray, node: int, start: int, end: int, num_edges: int) -> CorruptGraphError:
        return cls(f"{cls._name(indptr, 'indptr')}: node {node}'s offsets indptr[{node}:{node + 2}] = [{start}, {end}] "
                   f"are not a range within [0, {num_edges}] (offsets must not decrease){cls._DAMAGED}")

    @staticmethod
    def _name(arr: np.ndarray, what: str) -> str:
        """The file behind a memory-mapped array (a dataset's ``indices.npy``), else what it is."""
        name = getattr(arr, "filename", None)
        return str(name) if name else f"{what} (in memory)"


# --- randomness ------------------------------------------------------------------------------------
def splitmix64(x: int) -> int:
    """The splitmix64 finaliser on a Python int (the kernels use the same function)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class SampleKey:
    """The counter of counter-based random numbers: the same key gives the same batch.

    Example:
        >>> SampleKey(7, epoch=1, batch=3).stream() == SampleKey(7, 1, 3).stream()
        True
        >>> SampleKey(7, 1, 3).stream() != SampleKey(7, 1, 4).stream()
        True
    """

    seed: int
    epoch: int = 0
    batch: int = 0

    def __post_init__(self) -> None:
        for name in ("seed", "epoch", "batch"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise SamplerError(f"SampleKey.{name} must be an integer >= 0, got {v!r}")

    def stream(self) -> int:
        """A 64-bit key mixing seed, epoch and batch (the kernels key every node from it)."""
        x = splitmix64(int(self.seed) & _MASK64)
        x = splitmix64(x ^ (int(self.epoch) & _MASK64))
        return splitmix64(x ^ (int(self.batch) & _MASK64))

    def generator(self) -> np.random.Generator:
        """A NumPy generator determined by this key, for custom samplers."""
        # fixed-width words plus a tag: numpy drops trailing zero words of big ints, which would
        # make (seed + 2**32, e, 0) collide with (seed, 1, e)
        words = [(int(v) >> shift) & 0xFFFFFFFF for v in (self.seed, self.epoch, self.batch) for shift in (0, 32)]
        return np.random.default_rng(np.array([*words, 0x5A3B1E], dtype=np.uint32))



def as_key(key: Any) -> SampleKey:
    """Normalise a key: a ``SampleKey``, an int seed, a NumPy or torch generator, or None (fresh)."""
    if isinstance(key, SampleKey):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return SampleKey(int(key))
    if isinstance(key, np.random.Generator):
        return SampleKey(int(key.integers(0, 1 << 63)))
    if key is None:
        return SampleKey(secrets.randbits(63))
    if type(key).__name__ == "Generator" and type(key).__module__.startswith("torch"):
        import torch

        return SampleKey(int(torch.randint(0, 1 << 62, (1,), generator=key).item()))
    raise SamplerError(f"key must be a SampleKey, an int seed or a generator, got {type(key).__name__}")


# --- outputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One GNN layer's bipartite graph: sources are ``node[:num_src]``, destinations ``node[:num_dst]``.

    Example:
        >>> b = Block(np.array([1, 2]), np.array([0, 0]), num_src=3, num_dst=1)
        >>> b.edge_index.tolist()
        [[1, 2], [0, 0]]
    """

    row: np.ndarray
    col: np.ndarray
    num_src: int
    num_dst: int
    edge: np.ndarray | None = None

    @property
    def num_edges(self) -> int:
        return int(self.row.shape[0])

    @property
    def edge_index(self) -> np.ndarray:
        """``[2, E]``: source then destination local ids (PyG's layout)."""
        return np.stack([self.row, self.col])


@dataclass(frozen=True)
class SampledSubgraph:
    """A sampled L-hop subgraph with its seeds first; see the module docstring for the layout.

    Example:
        >>> g = SampledSubgraph(node=np.array([5, 7, 9]), row=np.array([1, 2]), col=np.array([0, 1]),
        ...                     num_sampled_nodes=(1, 1, 1), num_sampled_edges=(1, 1))
        >>> [(b.num_dst, b.num_src, b.num_edges) for b in g.blocks]
        [(2, 3, 2), (1, 2, 1)]
    """

    node: np.ndarray
    row: np.ndarray
    col: np.ndarray
    num_sampled_nodes: tuple[int, ...]
    num_sampled_edges: tuple[int, ...]
    edge: np.ndarray | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_sampled_nodes", tuple(int(n) for n in self.num_sampled_nodes))
        object.__setattr__(self, "num_sampled_edges", tuple(int(n) for n in self.num_sampled_edges))
        _check_shapes(self)

    @property
    def num_layers(self) -> int:
        return len(self.num_sampled_edges)

    @property
    def num_seeds(self) -> int:
        return self.num_sampled_nodes[0]

    @property
    def num_nodes(self) -> int:
        return int(self.node.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.row.shape[0])

    @property
    def seeds(self) -> np.ndarray:
        return self.node[: self.num_seeds]

    @property
    def blocks(self) -> tuple[Block, ...]:
        """Per GNN layer, input layer first (DGL's order); ``blocks[-1]`` has the seeds as destinations."""
        return tuple(self.block(i) for i in range(self.num_layers))

    def block(self, layer: int) -> Block:
        hops = self.num_layers - layer
        if not 0 < hops <= self.num_layers:
            raise IndexError(f"layer {layer} out of range for {self.num_layers} layers")
        cum_nodes = np.cumsum(self.num_sampled_nodes)
        ne = int(sum(self.num_sampled_edges[:hops]))
        edge = None if self.edge is None else self.edge[:ne]
        return Block(self.row[:ne], self.col[:ne], int(cum_nodes[hops]), int(cum_nodes[hops - 1]), edge)

    @staticmethod
    def from_hops(
        seeds: np.ndarray,
        hops: Sequence[tuple[np.ndarray, np.ndarray]],
        edges: Sequence[np.ndarray] | None = None,
    ) -> SampledSubgraph:
        """Build the layered output from per-hop ``(source global ids, destination local ids)``.

        Hop ``h``'s destinations must be local ids of nodes first reached at hop ``h - 1``;
        new source nodes are numbered in order of first appearance. This is the easy way for a
        custom sampler to produce a valid output.
        """
        return _from_hops(np.asarray(seeds, np.int64), hops, edges)

    def validate(self, num_nodes: int | None = None) -> None:
        """Check every invariant of the layout; raises ``SamplerError`` naming the broken one."""
        _validate(self, num_nodes)

    def to_torch(self) -> dict[str, Any]:
        """The arrays as torch tensors (zero-copy), keyed like PyG's ``SamplerOutput`` fields."""
        import torch

        out: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in ("node", "row", "col")}
        out["edge"] = None if self.edge is None else torch.from_numpy(np.ascontiguousarray(self.edge))
        out["num_sampled_nodes"] = list(self.num_sampled_nodes)
        out["num_sampled_edges"] = list(self.num_sampled_edges)
        return out


def _check_shapes(g: SampledSubgraph) -> None:
    for name in ("node", "row", "col", "edge"):
        a = getattr(g, name)
        if a is not None and (not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "iu"):
            raise SamplerError(f"SampledSubgraph.{name} must be a 1-D integer numpy array")
    if g.row.shape != g.col.shape or (g.edge is not None and g.edge.shape != g.row.shape):
        raise SamplerError(f"row, col (and edge) differ in length: {g.row.shape}, {g.col.shape}")
    if len(g.num_sampled_nodes) != len(g.num_sampled_edges) + 1:
        raise SamplerError(
            f"num_sampled_nodes has {len(g.num_sampled_nodes)} entries, expected num_sampled_edges + 1 "
            f"= {len(g.num_sampled_edges) + 1} (hop 0 holds the seeds)"
        )
    if sum(g.num_sampled_nodes) != g.node.shape[0] or sum(g.num_sampled_edges) != g.row.shape[0]:
        raise SamplerError(
            f"per-hop counts sum to {sum(g.num_sampled_nodes)} nodes / {sum(g.num_sampled_edges)} edges, "
            f"arrays hold {g.node.shape[0]} / {g.row.shape[0]}"
        )


def _validate(g: SampledSubgraph, num_nodes: int | None) -> None:
    cum_n = np.concatenate([[0], np.cumsum(g.num_sampled_nodes)])
    cum_e = np.concatenate([[0], np.cumsum(g.num_sampled_edges)])
    if g.node.size and (g.node.min() < 0 or (num_nodes is not None and g.node.max() >= num_nodes)):
        raise SamplerError(f"node ids outside [0, {num_nodes})")
    if np.unique(g.node).size != g.node.size:
        raise SamplerError("node holds a global id twice")
    for h in range(1, g.num_layers + 1):
        row, col = g.row[cum_e[h - 1] : cum_e[h]], g.col[cum_e[h - 1] : cum_e[h]]
        if row.size and (row.min() < 0 or row.max() >= cum_n[h + 1]):
            raise SamplerError(f"hop {h}: a source index is outside the nodes reached by hop {h} [0, {cum_n[h + 1]})")
        if col.size and (col.min() < cum_n[h - 1] or col.max() >= cum_n[h]):
            raise SamplerError(
                f"hop {h}: a destination index is outside the nodes first reached at hop {h - 1} "
                f"[{cum_n[h - 1]}, {cum_n[h]})"
            )


def _from_hops(
    seeds: np.ndarray, hops: Sequence[tuple[np.ndarray, np.ndarray]], edges: Sequence[np.ndarray] | None
) -> SampledSubgraph:
    nodes = [seeds]
    known = dict(zip(seeds.tolist(), range(seeds.size)))
    rows, cols, counts = [], [], [seeds.size]
    for src, dst in hops:
        src = np.asarray(src, np.int64)
        start = len(known)
        uniq, first = np.unique(src, return_index=True)
        fresh = [(int(i), int(u)) for i, u in sorted(zip(first.tolist(), uniq.tolist())) if int(u) not in known]
        for _, u in fresh:
            known[u] = len(known)
        nodes.append(np.array([u for _, u in fresh], dtype=np.int64))
        lookup = np.array([known[int(u)] for u in uniq.tolist()], dtype=np.int64)
        rows.append(lookup[np.searchsorted(uniq, src)] if src.size else src)
        cols.append(np.asarray(dst, np.int64))
        counts.append(len(known) - start)
    edge = None if edges is None else np.concatenate([np.asarray(e, np.int64) for e in edges])
    return SampledSubgraph(
        node=np.concatenate(nodes),
        row=np.concatenate(rows) if rows else np.empty(0, np.int64),
        col=np.concatenate(cols) if cols else np.empty(0, np.int64),
        num_sampled_nodes=tuple(counts),
        num_sampled_edges=tuple(int(r.size) for r in rows),
        edge=edge,
    )


# --- the graph a sampler reads ---------------------------------------------------------------------
@dataclass(frozen=True)
class Reopen:
    """A memory-mapped ``.npy`` by file name: pickles in bytes and maps the file again on ``open``,
    refusing a file whose size, dtype or shape changed in between."""

    filename: str
    dtype: str
    shape: tuple[int, ...]
    size: int

    def open(self) -> np.ndarray:
        try:
            size = os.stat(self.filename).st_size
            arr = np.load(self.filename, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise SamplerError(f"{self.filename}: cannot map it again ({e})") from None
        if size != self.size or str(arr.dtype) != self.dtype or tuple(arr.shape) != self.shape:
            raise SamplerError(f"{self.filename}: changed since it was pickled ({size} B {arr.dtype}{arr.shape}, "
                               f"expected {self.size} B {self.dtype}{self.shape})")
        return arr


def reopenable(arr: np.ndarray) -> Reopen | np.ndarray:
    """A ``Reopen`` for a whole memory-mapped ``.npy`` (as ``np.load(mmap_mode="r")`` returns), else ``arr``."""
    name = getattr(arr, "filename", None)
    if isinstance(arr, np.memmap) and name and str(name).endswith(".npy"):
        try:
            head = np.load(name, mmap_mode="r")
            size = os.stat(name).st_size
        except (OSError, ValueError):
            return arr
        if head.shape == arr.shape and head.dtype == arr.dtype and head.offset == arr.offset:
            return Reopen(str(name), str(arr.dtype), tuple(arr.shape), size)
    return arr


@dataclass(frozen=True)
class CscGraph:
    """The CSC topology a sampler reads: ``indices[indptr[v]:indptr[v + 1]]`` are v's in-neighbours.

    The arrays may be memory maps (a ``Dataset``'s are); samplers never load them whole.

    Example:
        >>> g = CscGraph.of((np.array([0, 1, 1]), np.array([1])))
        >>> g.num_nodes, g.num_edges
        (2, 1)
    """

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.indptr.shape[0]) - 1

    @property
    def num_edges(self) -> int:
        return int(self.indices.shape[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # memory maps travel as file names (a planner process maps them again), not as their bytes
        return (_csc_from, (reopenable(self.indptr), reopenable(self.indices)))

    @staticmethod
    def of(graph: Any) -> CscGraph:
        """Accept a ``CscGraph``, a ``Dataset`` (anything with ``indptr``/``indices``) or a pair of arrays."""
        if isinstance(graph, CscGraph):
            return graph
        if hasattr(graph, "indptr") and hasattr(graph, "indices"):
            indptr, indices = graph.indptr, graph.indices
        elif isinstance(graph, (tuple, list)) and len(graph) == 2:
            indptr, indices = graph
        else:
            raise SamplerError(f"expected a Dataset, a CscGraph or (indptr, indices), got {type(graph).__name__}")
        # ndarray subclasses (memory maps) stay as they are
        indptr = indptr if isinstance(indptr, np.ndarray) else np.asarray(indptr)
        indices = indices if isinstance(indices, np.ndarray) else np.asarray(indices)
        if indptr.ndim != 1 or indptr.size < 1 or indptr.dtype != np.int64:
            raise SamplerError(f"indptr must be a 1-D int64 array of N + 1 offsets, got {indptr.dtype}{indptr.shape}")
        if indices.ndim != 1 or indices.dtype not in (np.int32, np.int64):
            raise SamplerError(f"indices must be a 1-D int32 or int64 array, got {indices.dtype}{indices.shape}")
        if int(indptr[-1]) != indices.shape[0]:
            raise SamplerError(f"indptr ends at {int(indptr[-1])} but indices holds {indices.shape[0]} edges")
        return CscGraph(indptr, indices)


def _csc_from(indptr: Reopen | np.ndarray, indices: Reopen | np.ndarray) -> CscGraph:
    return CscGraph(indptr.open() if isinstance(indptr, Reopen) else indptr,
                    indices.open() if isinstance(indices, Reopen) else indices)


# --- the contract ----------------------------------------------------------------------------------
def as_seeds(seeds: Any, num_nodes: int | None) -> np.ndarray:
    """Seeds as a contiguous int64 array; raises ``SamplerError`` for non-integer, duplicate or out-of-range ids."""
    if type(seeds).__module__.startswith("torch"):
        seeds = seeds.detach().cpu().numpy()
    arr = np.asarray(seeds)
    if arr.ndim != 1:
        raise SamplerError(f"seeds must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise SamplerError(f"seeds must be integer node ids, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or (num_nodes is not None and hi >= num_nodes):
            bad = lo if lo < 0 else hi
            raise SamplerError(f"seed id {bad} is outside the graph (expected 0 <= id < {num_nodes})")
        if np.unique(arr).size != arr.size:
            raise SamplerError("seeds hold a node id twice (expected unique seeds)")
    return arr


class Sampler(ABC):
    """Base of every sampler: ``sample`` validates, then calls the one hook ``_sample``.

    Subclasses implement ``_sample(seeds, key)`` returning a ``SampledSubgraph`` (see the module
    example), and may override ``settings`` (recorded in plans) and ``state_dict``. The optional
    hooks are declared here with defaults that work: ``thread_safe``, ``serial()``,
    ``max_edges(batch_size, mean_degree)`` and ``sweeper(window_bytes=...)``.
    ``gnn_ooc.testing.check_sampler`` checks a sampler against this contract.
    """

    #: Whether ``sample`` runs the full O(E) ``validate`` on every output (on for user samplers).
    check_output: bool = True
    #: Whether ``sample`` may run in several threads at once (the planner then samples batches in parallel).
    thread_safe: bool = False

    def __init__(self, num_nodes: int | None = None) -> None:
        self.num_nodes = num_nodes

    def sample(self, seeds: Any, key: Any = None) -> SampledSubgraph:
        """Sample the subgraph of ``seeds`` (unique node ids) under ``key`` (see ``as_key``)."""
        seed_arr = as_seeds(seeds, self.num_nodes)
        out = self._sample(seed_arr, as_key(key))
        if not isinstance(out, SampledSubgraph):
            raise SamplerError(f"{type(self).__name__}._sample returned {type(out).__name__}, expected SampledSubgraph")
        if out.num_seeds != seed_arr.size or not np.array_equal(out.seeds, seed_arr):
            raise SamplerError(f"{type(self).__name__}._sample must put the seeds first, in the order given")
        if self.check_output:
            out.validate(self.num_nodes)
        return out

    @abstractmethod
    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        """Sample for unique int64 ``seeds``; all randomness must come from ``key``."""

    @property
    def num_layers(self) -> int | None:
        """Hops per sample, when fixed."""
        return None

    def settings(self) -> dict[str, Any]:
        """JSON-able settings that determine the samples (a plan refuses a sampler whose settings differ)."""
        cls = type(self)
        return {"sampler": f"{cls.__module__}.{cls.__qualname__}"}

    def serial(self) -> Sampler:
        """Optional hook: the sampler to call from each of several threads sampling batches at once
        (the planner's, a DataLoader's workers). Default: this sampler. ``NeighborSampler`` returns
        a copy whose kernels run single-threaded (its parallel kernels would fight each other)."""
        return self

    def max_edges(self, batch_size: int, mean_degree: float) -> int | None:
        """Optional hook: a bound on one batch's sampled edges, which sizes planning's memory.
        None (the default): the fan-outs' bound when ``settings()`` has ``fanouts``, else
        ``batch_size * mean_degree`` per layer."""
        del batch_size, mean_degree
        return None

    def sweeper(self, *, window_bytes: int) -> Any | None:
        """Optional hook: an object whose ``sample_group(seeds_list, keys)`` samples several batches
        at once, reading the topology in ascending sweeps (``sampler.sweep.SweepSampler``), with
        ``bytes_per_batch(batch_size)`` and ``fixed_bytes()`` for sizing. Planning uses it when
        the topology does not fit in memory; its batches must equal ``sample``'s byte for byte.
        None (the default): planning samples batch by batch."""
        del window_bytes
        return None

    def state_dict(self) -> dict[str, Any]:
        # Samplers are stateless by default: every random number comes from the key.
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


def parse_fanouts(fanouts: Sequence[int] | str) -> tuple[int, ...]:
    """``"15,10,5"`` or ``[15, 10, 5]`` -> ``(15, 10, 5)``; -1 means every neighbour.

    Example:
        >>> parse_fanouts("15, 10,-1")
        (15, 10, -1)
    """
    items = [s.strip() for s in fanouts.split(",")] if isinstance(fanouts, str) else list(fanouts)
    try:
        out = tuple(int(f) for f in items)
    except (TypeError, ValueError):
        raise SamplerError(f"fan-outs must be integers, got {fanouts!r}") from None
    if not out or any(f == 0 or f < -1 for f in out):
        raise SamplerError(f"fan-outs must be positive or -1 (all neighbours), one per layer; got {fanouts!r}")
    return out
