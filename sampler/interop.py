"""Converters between our sampled subgraphs and PyG / DGL, and sampler adapters both ways.

Everything that touches ``torch_geometric`` or ``dgl`` lives here, and imports them inside the
functions that need them: importing this module costs neither library.

* ``to_pyg_sampler_output`` / ``to_pyg_data``: a ``SampledSubgraph`` as PyG's ``SamplerOutput``
  or as a mini-batch ``Data`` (``edge_index = [row, col]``, ``n_id``, ``e_id``, ``batch_size``).
* ``to_dgl_blocks``: the same subgraph as DGL message flow graphs, input layer first.
* ``to_pyg_sampler`` / ``PygSamplerAdapter``: one of our samplers as a PyG ``BaseSampler``, for
  ``torch_geometric.loader.NodeLoader``.
* ``from_pyg_sampler`` / ``FromPygSampler``: a PyG ``BaseSampler`` as one of our samplers; an
  output without per-hop counts is re-layered by ``layer_by_hops``.

Example (``layer_by_hops`` needs only NumPy): a subgraph in arbitrary order, seed 7, becomes our
layout, seeds first and nodes by the hop where first reached:

    >>> node = np.array([3, 9, 7, 5])          # 9 -> 3 -> 7 and 5 -> 7 (local row -> col)
    >>> row, col = np.array([1, 0, 3]), np.array([0, 2, 2])
    >>> sub = layer_by_hops(np.array([7]), node, row, col, num_layers=2)
    >>> sub.node.tolist(), sub.num_sampled_nodes, sub.num_sampled_edges
    ([7, 3, 5, 9], (1, 2, 1), (2, 1))
    >>> sub.row.tolist(), sub.col.tolist()
    ([1, 2, 3], [0, 0, 1])

With PyG installed (``data`` a ``torch_geometric.data.Data``, ``sampler`` one of ours):

    >>> loader = NodeLoader(data, node_sampler=to_pyg_sampler(sampler, seed=0),
    ...                     input_nodes=train_ids, batch_size=1024)  # doctest: +SKIP
    >>> batch = next(iter(loader))  # doctest: +SKIP
    >>> batch.x.shape[0] == batch.n_id.numel()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from gnn_ooc.sampler.base import SampledSubgraph, SampleKey, Sampler, SamplerError, as_key

if TYPE_CHECKING:
    import torch

__all__ = [
    "FromPygSampler",
    "from_pyg_sampler",
    "from_pyg_sampler_output",
    "layer_by_hops",
    "to_dgl_blocks",
    "to_pyg_data",
    "to_pyg_sampler",
    "to_pyg_sampler_output",
]

_MASK63 = (1 << 63) - 1


# --- small helpers ---------------------------------------------------------------------------------
def _tensor(a: np.ndarray) -> torch.Tensor:
    """An int64 torch tensor sharing ``a``'s memory when it already is contiguous, writable int64."""
    import torch

    arr = np.ascontiguousarray(a, dtype=np.int64)
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only memory, and may write to it
        arr = arr.copy()
    return torch.from_numpy(arr)


def _numpy(t: Any) -> np.ndarray:
    """A 1-D int64 numpy array from a torch tensor, a numpy array or a list."""
    if type(t).__module__.startswith("torch"):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(t).reshape(-1), dtype=np.int64)


def _gather(values: Any, node: np.ndarray) -> torch.Tensor:
    """``values[node]`` as a tensor, for numpy arrays, memory maps, tensors or anything indexable."""
    import torch

    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            return values[torch.from_numpy(node).to(values.device)]
        return _sorted_take(lambda i: values[torch.from_numpy(i)], node, torch)
    if isinstance(values, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(_sorted_take(lambda i: values[i], node, np)))
    return torch.as_tensor(np.asarray(values[node]))


def _sorted_take(take: Callable[[np.ndarray], Any], node: np.ndarray, lib: Any) -> Any:
    # Reading rows in id order turns random page faults on memory-mapped features into one forward
    # sweep; the rows are put back in node order afterwards.
    order = np.argsort(node, kind="stable")
    rows = take(node[order])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return rows[lib.from_numpy(inverse) if lib is not np else inverse]


# --- our output -> PyG -----------------------------------------------------------------------------
def to_pyg_sampler_output(sub: SampledSubgraph, input_id: Any = None, seed_time: Any = None) -> Any:
    """``sub`` as ``torch_geometric.sampler.SamplerOutput``.

    ``metadata`` is ``(input_id, seed_time)``: PyG's ``NodeLoader.filter_fn`` reads the batch's
    input ids (and so ``batch_size``) and seed times from it.
    """
    from torch_geometric.sampler import SamplerOutput

    return SamplerOutput(
        node=_tensor(sub.node),
        row=_tensor(sub.row),
        col=_tensor(sub.col),
        edge=None if sub.edge is None else _tensor(sub.edge),
        num_sampled_nodes=list(sub.num_sampled_nodes),
        num_sampled_edges=list(sub.num_sampled_edges),
        metadata=(input_id, seed_time),
    )


def to_pyg_data(sub: SampledSubgraph, x: Any = None, y: Any = None) -> Any:
    """``sub`` as a mini-batch ``torch_geometric.data.Data``, with ``x``/``y`` rows of its nodes.

    ``x``/``y`` may be numpy arrays, memory maps (a ``Dataset``'s features; pass
    ``features_torch()`` for bfloat16) or tensors; they are indexed by ``sub.node``. The first
    ``batch_size`` nodes are the seeds, as in PyG's loaders.
    """
    from torch_geometric.data import Data

    data = Data(edge_index=_edge_index(sub))
    # Stated, not inferred: isolated nodes (seeds without in-edges) must count whatever is attached.
    data.num_nodes = sub.num_nodes
    data.n_id = _tensor(sub.node)
    if sub.edge is not None:
        data.e_id = _tensor(sub.edge)
    data.num_sampled_nodes = list(sub.num_sampled_nodes)
    data.num_sampled_edges = list(sub.num_sampled_edges)
    data.batch_size = sub.num_seeds
    if x is not None:
        data.x = _gather(x, sub.node)
    if y is not None:
        data.y = _gather(y, sub.node)
    return data


def _edge_index(sub: SampledSubgraph) -> torch.Tensor:
    import torch

    return torch.stack([_tensor(sub.row), _tensor(sub.col)])


# --- our output -> DGL -----------------------------------------------------------------------------
def to_dgl_blocks(sub: SampledSubgraph, device: Any = None) -> list[Any]:
    """``sub`` as DGL blocks (message flow graphs), input layer first, as DGL's loaders give them.

    Block ``i`` has ``srcdata[dgl.NID]`` / ``dstdata[dgl.NID]`` holding global node ids (the
    destinations are a prefix of the sources, as DGL expects) and ``edata[dgl.EID]`` the global
    edge ids when ``sub`` carries them.
    """
    import dgl
    import torch

    blocks = []
    for b in sub.blocks:
        block = dgl.create_block(
            (_tensor(b.row), _tensor(b.col)),
            num_src_nodes=int(b.num_src),  # DGL asserts a Python int here
            num_dst_nodes=int(b.num_dst),
            idtype=torch.int64,
            device=device,
        )
        block.srcdata[dgl.NID] = _on(_tensor(sub.node[: b.num_src]), device)
        block.dstdata[dgl.NID] = _on(_tensor(sub.node[: b.num_dst]), device)
        if b.edge is not None:
            block.edata[dgl.EID] = _on(_tensor(b.edge), device)
        blocks.append(block)
    return blocks


def _on(t: torch.Tensor, device: Any) -> torch.Tensor:
    return t if device is None else t.to(device)


# --- our sampler -> PyG ----------------------------------------------------------------------------
class _AdapterCore:
    """The body of ``PygSamplerAdapter``; PyG's ``BaseSampler`` is mixed in lazily (see there)."""

    def __init__(
        self,
        sampler: Sampler,
        key_fn: Callable[[int], Any] | None = None,
        seed: int | None = None,
        edge_permutation: Any = None,
    ) -> None:
        if not isinstance(sampler, Sampler):
            raise SamplerError(f"expected a gnn_ooc Sampler, got {type(sampler).__name__}")
        self.sampler = sampler
        self.key_fn = key_fn
        self.seed = as_key(seed).seed  # None draws a fresh seed once, fixed for this adapter
        self.epoch = 0
        self._count = 0
        self._edge_permutation = edge_permutation
        self._worker_sampler: Sampler | None = None

    def set_epoch(self, epoch: int) -> None:
        """Key the next batches ``SampleKey(seed, epoch, 0), (seed, epoch, 1), ...``.

        Call it at the start of every epoch when the loader has worker processes that are not
        persistent: each epoch's workers start from a copy of this adapter, counter included.
        Batches are the same whatever ``num_workers`` (fork or spawn) only so: persistent workers
        never see ``set_epoch`` (their counters run on), and ``in_order=False`` deals batches to
        workers out of turn, which breaks the per-worker count of ``next_key``.
        """
        self.epoch = int(epoch)
        self._count = 0

    def next_key(self) -> SampleKey:
        """The key of the next batch (advances the batch counter)."""
        from torch.utils.data import get_worker_info

        n, self._count = self._count, self._count + 1
        info = get_worker_info()
        # A DataLoader deals batches to its workers round-robin, so worker w's n-th batch is the
        # loader's batch n * W + w: every batch gets its own key, whatever the worker count.
        batch = n if info is None else n * info.num_workers + info.id
        if self.key_fn is not None:
            return as_key(self.key_fn(batch))
        return SampleKey(self.seed, self.epoch, batch)

    def sample_from_nodes(self, index: Any, **kwargs: Any) -> Any:
        """Sample around ``index.node`` with ``next_key()``; returns a PyG ``SamplerOutput``."""
        if index.input_type is not None:
            raise SamplerError("gnn_ooc samplers sample homogeneous graphs; got a typed input (HeteroData)")
        if index.time is not None:
            raise NotImplementedError("gnn_ooc samplers are not temporal: build the loader without input_time")
        sub = self._sampler_here().sample(index.node, self.next_key())
        return to_pyg_sampler_output(sub, index.input_id, index.time)

    def _sampler_here(self) -> Sampler:
        """The sampler itself, or inside a DataLoader worker its single-threaded twin (``serial()``).

        Each worker is already a core's work (torch sets one thread per worker for the same
        reason), and numba's parallel kernels cannot run in a worker forked after the parent
        started numba's pool. The samples are the same either way.
        """
        from torch.utils.data import get_worker_info

        if get_worker_info() is None:
            return self.sampler
        if self._worker_sampler is None:
            self._worker_sampler = self.sampler.serial()
        return self._worker_sampler

    def sample_from_edges(self, index: Any, neg_sampling: Any = None) -> Any:
        raise NotImplementedError(
            "gnn_ooc samplers sample from seed nodes only: use NodeLoader, not LinkLoader "
            "(link prediction: sample from the edges' endpoints with NodeLoader)"
        )

    @property
    def edge_permutation(self) -> Any:
        """Maps our edge ids (positions in the CSC) to positions in the loader's ``data.edge_index``.

        ``NodeLoader`` indexes edge attributes and ``e_id`` through it; None means they coincide.
        """
        return self._edge_permutation


@functools.lru_cache(maxsize=None)
def _pyg_adapter_class() -> type:
    # Built on first use so that importing this module never imports torch_geometric; cached so
    # the class is one object (pickle finds it again through the module's __getattr__).
    from torch_geometric.sampler import BaseSampler

    cls = type("PygSamplerAdapter", (_AdapterCore, BaseSampler), {"__doc__": _ADAPTER_DOC})
    cls.__module__ = __name__
    return cls


_ADAPTER_DOC = """One of our samplers as a PyG ``BaseSampler``, for ``NodeLoader(node_sampler=...)``.

Batch ``b`` is sampled under ``SampleKey(seed, epoch, b)`` (or ``key_fn(b)``), so the same seed
gives the same sequence of batches; see ``set_epoch`` for loaders with worker processes.
"""


def to_pyg_sampler(
    sampler: Sampler,
    key_fn: Callable[[int], Any] | None = None,
    seed: int | None = None,
    edge_permutation: Any = None,
) -> Any:
    """``sampler`` wrapped as a ``PygSamplerAdapter`` (a ``torch_geometric.sampler.BaseSampler``).

    ``key_fn(batch)`` (anything ``as_key`` accepts) replaces the default keys
    ``SampleKey(seed, epoch, batch)``; ``seed=None`` draws one. ``edge_permutation`` maps our edge
    ids to ``data.edge_index`` positions when the loader's ``data`` orders edges differently.
    """
    return _pyg_adapter_class()(sampler, key_fn=key_fn, seed=seed, edge_permutation=edge_permutation)


def __getattr__(name: str) -> Any:
    # PygSamplerAdapter is served lazily (and kept out of __all__, so a star import stays cheap).
    if name == "PygSamplerAdapter":
        return _pyg_adapter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- PyG sampler -> ours ---------------------------------------------------------------------------
class FromPygSampler(Sampler):
    """A PyG ``BaseSampler`` (homogeneous, not disjoint) used as one of our samplers.

    Outputs with ``num_sampled_nodes``/``num_sampled_edges`` are taken as laid out (and cut to
    ``num_layers`` hops when given); others are re-layered by ``layer_by_hops``, which needs
    ``num_layers``. Torch's global RNG is seeded from the key around each call, so a PyG sampler
    drawing from it is deterministic under our keys (its own generators are not covered).
    Edge ids are the PyG graph's (``edge_permutation`` applied, as in ``NodeLoader``).
    """

    def __init__(self, pyg_sampler: Any, num_layers: int | None = None, num_nodes: int | None = None) -> None:
        if not callable(getattr(pyg_sampler, "sample_from_nodes", None)):
            raise SamplerError(f"expected a PyG BaseSampler, got {type(pyg_sampler).__name__}")
        if num_layers is not None and (isinstance(num_layers, bool) or int(num_layers) < 1):
            raise SamplerError(f"num_layers must be a positive integer, got {num_layers!r}")
        super().__init__(num_nodes=num_nodes)
        self.pyg_sampler = pyg_sampler
        self._num_layers = None if num_layers is None else int(num_layers)

    @property
    def num_layers(self) -> int | None:
        return self._num_layers

    def settings(self) -> dict[str, Any]:
        cls = type(self.pyg_sampler)
        return {**super().settings(), "pyg_sampler": f"{cls.__module__}.{cls.__qualname__}", "num_layers": self._num_layers}

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        import torch
        from torch_geometric.sampler import NodeSamplerInput

        index = NodeSamplerInput(input_id=None, node=torch.from_numpy(seeds))
        with _torch_rng_from(key):
            out = self.pyg_sampler.sample_from_nodes(index)
        return from_pyg_sampler_output(out, seeds, self._num_layers, getattr(self.pyg_sampler, "edge_permutation", None))


def from_pyg_sampler(pyg_sampler: Any, num_layers: int | None = None, num_nodes: int | None = None) -> FromPygSampler:
    """``pyg_sampler`` as one of our samplers; see ``FromPygSampler``."""
    return FromPygSampler(pyg_sampler, num_layers=num_layers, num_nodes=num_nodes)


@contextmanager
def _torch_rng_from(key: SampleKey) -> Iterator[None]:
    import torch

    seed = key.stream() & _MASK63
    # Only CUDA devices already initialised are forked and seeded: seeding CUDA before its
    # initialisation queues a lazy seed that would outlive the fork and reseed the user's RNG later.
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        if cuda:
            torch.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        yield


def from_pyg_sampler_output(
    out: Any, seeds: Any, num_layers: int | None = None, edge_permutation: Any = None
) -> SampledSubgraph:
    """A PyG ``SamplerOutput`` for ``seeds`` as a ``SampledSubgraph`` (see ``FromPygSampler``)."""
    from torch_geometric.sampler import SamplerOutput

    if not isinstance(out, SamplerOutput):
        raise SamplerError(f"expected a homogeneous PyG SamplerOutput, got {type(out).__name__}")
    if out.batch is not None:
        raise SamplerError("disjoint PyG sampling (SamplerOutput.batch) repeats nodes; our layout cannot hold it")
    node, row, col = _numpy(out.node), _numpy(out.row), _numpy(out.col)
    edge = None if out.edge is None else _numpy(out.edge)
    if edge is not None and edge_permutation is not None:
        edge = _numpy(edge_permutation)[edge]
    if out.num_sampled_nodes is None or out.num_sampled_edges is None:
        if num_layers is None:
            raise SamplerError(
                "the PyG sampler gave no num_sampled_nodes/num_sampled_edges: pass num_layers= "
                "to re-layer its subgraph by hop distance from the seeds"
            )
        return layer_by_hops(_numpy(seeds), node, row, col, num_layers, edge)
    sub = SampledSubgraph(
        node=node, row=row, col=col, edge=edge,
        num_sampled_nodes=tuple(int(n) for n in out.num_sampled_nodes),
        num_sampled_edges=tuple(int(n) for n in out.num_sampled_edges),
    )
    return sub if num_layers is None or num_layers >= sub.num_layers else _first_hops(sub, num_layers)


def _first_hops(sub: SampledSubgraph, hops: int) -> SampledSubgraph:
    # Hop h only adds nodes and edges after those of hops < h, so a prefix is a valid subgraph.
    nn, ne = sum(sub.num_sampled_nodes[: hops + 1]), sum(sub.num_sampled_edges[:hops])
    return SampledSubgraph(
        node=sub.node[:nn], row=sub.row[:ne], col=sub.col[:ne],
        edge=None if sub.edge is None else sub.edge[:ne],
        num_sampled_nodes=sub.num_sampled_nodes[: hops + 1], num_sampled_edges=sub.num_sampled_edges[:hops],
    )


def layer_by_hops(
    seeds: np.ndarray,
    node: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    num_layers: int,
    edge: np.ndarray | None = None,
) -> SampledSubgraph:
    """Lay out any subgraph (``node`` global ids, local ``row -> col`` edges) in our hop order.

    A node's hop is its distance from the seeds following edges backwards (``col -> row``), an
    edge's hop is its destination's plus one; nodes beyond ``num_layers`` hops and edges beyond
    ``num_layers`` are dropped. Nodes and edges are sorted stably by hop (the seeds first, in the
    given order; seeds missing from ``node`` are added as isolated nodes) and renumbered.
    """
    seeds, node, row, col = (np.asarray(a, np.int64) for a in (seeds, node, row, col))
    if isinstance(num_layers, bool) or int(num_layers) < 1:
        raise SamplerError(f"num_layers must be a positive integer, got {num_layers!r}")
    if row.shape != col.shape or (edge is not None and np.shape(edge) != row.shape):
        raise SamplerError(f"row, col (and edge) differ in length: {row.shape}, {col.shape}")
    if np.unique(seeds).size != seeds.size:
        raise SamplerError("seeds hold a node id twice (expected unique seeds)")
    node, seed_local = _with_seeds(node, seeds)
    if row.size and (min(row.min(), col.min()) < 0 or max(row.max(), col.max()) >= node.size):
        raise SamplerError(f"row/col hold a local index outside the subgraph's {node.size} nodes")
    hop = _hop_distances(node.size, seed_local, row, col, int(num_layers))
    return _relabel(node, row, col, edge, hop, seed_local, int(num_layers))


def _with_seeds(node: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``node`` with any missing seed appended, and each seed's local index."""
    order = np.argsort(node, kind="stable")
    ordered = node[order]
    if ordered.size > 1 and np.any(ordered[1:] == ordered[:-1]):
        raise SamplerError("the subgraph holds a node id twice (disjoint sampling is not supported)")
    pos = np.minimum(np.searchsorted(ordered, seeds), max(ordered.size - 1, 0))
    found = (ordered[pos] == seeds) if ordered.size else np.zeros(seeds.size, bool)
    local = np.empty(seeds.size, np.int64)
    local[found] = order[pos[found]]
    local[~found] = node.size + np.arange(int((~found).sum()))
    return np.concatenate([node, seeds[~found]]), local


def _hop_distances(n: int, seed_local: np.ndarray, row: np.ndarray, col: np.ndarray, layers: int) -> np.ndarray:
    """Backward BFS distance from the seeds (-1 when beyond ``layers``), one vectorised pass per hop."""
    hop = np.full(n, -1, np.int64)
    hop[seed_local] = 0
    for h in range(1, layers + 1):
        src = row[hop[col] == h - 1]
        fresh = src[hop[src] < 0]
        if fresh.size == 0:
            break
        hop[fresh] = h
    return hop


def _relabel(
    node: np.ndarray, row: np.ndarray, col: np.ndarray, edge: np.ndarray | None,
    hop: np.ndarray, seed_local: np.ndarray, layers: int,
) -> SampledSubgraph:
    within = np.arange(node.size)
    within[seed_local] = np.arange(seed_local.size)  # hop 0 keeps the seeds' given order
    kept = np.flatnonzero(hop >= 0)
    kept = kept[np.lexsort((within[kept], hop[kept]))]
    new_id = np.full(node.size, -1, np.int64)
    new_id[kept] = np.arange(kept.size)
    edge_hop = hop[col] + 1
    keep_e = np.flatnonzero((edge_hop >= 1) & (edge_hop <= layers))
    keep_e = keep_e[np.argsort(edge_hop[keep_e], kind="stable")]
    return SampledSubgraph(
        node=node[kept],
        row=new_id[row[keep_e]],
        col=new_id[col[keep_e]],
        edge=None if edge is None else np.asarray(edge, np.int64)[keep_e],
        num_sampled_nodes=tuple(np.bincount(hop[kept], minlength=layers + 1).tolist()),
        num_sampled_edges=tuple(np.bincount(edge_hop[keep_e] - 1, minlength=layers).tolist()),
    )
