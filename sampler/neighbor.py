"""The built-in neighbour sampler: uniform (or weighted) without replacement over the on-disk CSC.

Example:
    >>> import numpy as np
    >>> indptr = np.array([0, 2, 3, 5, 6], dtype=np.int64)      # in-edges: 0<-{1,2}, 1<-{0}, 2<-{0,3}, 3<-{2}
    >>> indices = np.array([1, 2, 0, 0, 3, 2], dtype=np.int32)
    >>> s = NeighborSampler((indptr, indices), fanouts=[1, -1])
    >>> out = s.sample([0], key=SampleKey(seed=0))
    >>> out.num_sampled_edges[0], out.seeds.tolist()
    (1, [0])
    >>> out.node.tolist() == s.sample([0], key=SampleKey(seed=0)).node.tolist()   # same key, same batch
    True
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gnn_ooc.sampler import kernels
from gnn_ooc.sampler.base import (
    CscGraph,
    Reopen,
    SampledSubgraph,
    SampleKey,
    Sampler,
    SamplerError,
    parse_fanouts,
    reopenable,
)

_CHECK_CHUNK = 1 << 24


class NeighborSampler(Sampler):
    """Sample up to ``fanouts[h]`` in-neighbours of every node first reached at hop ``h`` (-1 = all).

    ``fanouts[0]`` applies to the seeds (PyG's ``num_neighbors`` order; DGL lists them from the
    input layer, so reverse a DGL fan-out list). Neighbours are drawn without replacement,
    uniformly or, with ``weights`` (one non-negative float per CSC edge, aligned with
    ``indices``; an array or an ``.npy`` path), with Efraimidis-Spirakis weighted sampling, where
    zero-weight edges are never drawn. ``threads`` caps numba's threads for one call; in a
    process forked after numba's thread pool started (a DataLoader worker), the serial kernels
    run instead (numba's GNU OpenMP pool does not survive fork), giving the same samples.
    A topology damaged during a run (a neighbour id outside the graph, offsets that decrease)
    raises ``CorruptGraphError`` naming the file and position.

    Example:
        >>> import numpy as np
        >>> s = NeighborSampler((np.array([0, 1, 2]), np.array([1, 0], np.int32)), [2, 2])
        >>> s.sample([0], key=1).node.tolist()
        [0, 1]
    """

    check_output = False  # the kernels keep the invariants; tests check them
    thread_safe = True

    def __init__(
        self,
        graph: Any,
        fanouts: Sequence[int] | str,
        *,
        weights: np.ndarray | str | os.PathLike[str] | None = None,
        return_edge_ids: bool = False,
        threads: int | None = None,
    ) -> None:
        self.graph = CscGraph.of(graph)
        super().__init__(num_nodes=self.graph.num_nodes)
        self.fanouts = parse_fanouts(fanouts)
        self.weights = _load_weights(weights, self.graph.num_edges)
        self._weights_stamp = _weights_stamp(weights)
        self.return_edge_ids = bool(return_edge_ids)
        self.threads = threads
        self.parallel = True

    @property
    def num_layers(self) -> int:
        return len(self.fanouts)

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out.update(fanouts=list(self.fanouts), weighted=self.weights is not None,
                   weights=self._weights_stamp, return_edge_ids=self.return_edge_ids)
        return out

    def serial(self) -> NeighborSampler:
        """A copy whose kernels run single-threaded, for callers that sample batches in threads."""
        twin = object.__new__(NeighborSampler)
        twin.__dict__.update(self.__dict__)
        twin.parallel = False
        return twin

    def sweeper(self, *, window_bytes: int) -> Any:
        """Samples groups of batches by sweeping the topology (``sampler.sweep``): the same batches.
        None for a subclass that samples otherwise (its own ``_sample``): the sweep would not be it."""
        from gnn_ooc.sampler.sweep import SweepSampler

        if type(self)._sample is not NeighborSampler._sample:
            return None

        return SweepSampler(self, window_bytes=window_bytes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # the graph pickles its memory maps as file names (CscGraph)
        if self.weights is not None:
            state["weights"] = reopenable(self.weights)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if isinstance(self.weights, Reopen):
            self.weights = self.weights.open()

    def _sample(self, seeds: np.ndarray, key: SampleKey) -> SampledSubgraph:
        # numba's default threading layer is not re-entrant: parallel kernels from the main thread
        # only, and never in a child forked after the pool started (see kernels.parallel_allowed)
        parallel = self.parallel and threading.current_thread() is threading.main_thread() and kernels.parallel_allowed()
        prev = kernels.set_threads(self.threads) if parallel else None
        try:
            node, row, col, edge, hop_nodes, hop_edges = kernels.sample_layers(
                self.graph.indptr, self.graph.indices, self.weights, seeds, self.fanouts,
                key.stream(), self.return_edge_ids, parallel,
            )
        finally:
            if prev is not None:
                kernels.set_threads(prev)
        return SampledSubgraph(node, row, col, hop_nodes, hop_edges, edge=edge)


def _load_weights(weights: np.ndarray | str | os.PathLike[str] | None, num_edges: int) -> np.ndarray | None:
    if weights is None:
        return None
    where = "weights" if isinstance(weights, np.ndarray) else str(weights)
    if not isinstance(weights, np.ndarray):
        try:
            weights = np.load(Path(weights), mmap_mode="r")
        except (OSError, ValueError) as e:
            raise SamplerError(f"{where}: cannot read edge weights ({e})") from None
    assert isinstance(weights, np.ndarray)
    if weights.ndim != 1 or weights.shape[0] != num_edges:
        raise SamplerError(f"{where}: edge weights have shape {weights.shape}, expected ({num_edges},) aligned with indices")
    if weights.dtype not in (np.float32, np.float64):
        raise SamplerError(f"{where}: edge weights are {weights.dtype}, expected float32 or float64 (convert the file)")
    for start in range(0, num_edges, _CHECK_CHUNK):  # in chunks: the weights may be larger than memory
        part = np.asarray(weights[start : start + _CHECK_CHUNK])
        if not (np.isfinite(part).all() and part.min() >= 0):
            bad = start + int(np.flatnonzero(~(np.isfinite(part) & (part >= 0)))[0])
            raise SamplerError(f"{where}: edge {bad}: weight {part[bad - start]} (expected finite and >= 0)")
    return weights


def _weights_stamp(weights: np.ndarray | str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """What identifies a weights file in a plan's settings: where it is, its size and modification time."""
    if weights is None or isinstance(weights, np.ndarray):
        return None
    path = Path(weights).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
