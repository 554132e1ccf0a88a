"""Numba kernels of the neighbour sampler: counter-based random numbers, per-node draws, relabelling.

Every random number is ``mix(node_key(key, v) + counter)``: a function of (batch key, node,
draw index) only, so a batch is the same whatever the thread count or the order nodes are
visited. Each hop runs in three steps: count (parallel over the frontier), draw (parallel over
the frontier; each node's sampled positions come out sorted, which keeps reads of ``indices``
sequential within a node), relabel (serial; global ids to local ids in edge order through an
open-addressing hash table, so memory follows the sample, not the graph).

The ``*_serial`` variants are the same code compiled without ``parallel`` for callers that
parallelise over batches with threads (numba's default threading layer is not re-entrant), and
for processes forked after numba started its thread pool (see ``parallel_allowed``).

The kernels read a memory-mapped topology that can change on disk during a run, so they check
what they read (an offset range per frontier node, a compare per gathered neighbour) and
``sample_layers`` raises ``CorruptGraphError`` instead of reading out of bounds.
"""

from __future__ import annotations

import os
import types
from typing import Any, Callable

import numba
import numpy as np
from numba import njit, prange

from gnn_ooc.sampler.base import CorruptGraphError

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_EMPTY = np.int64(-1)


@njit(inline="always", cache=True)
def mix(x: int) -> int:
    """splitmix64's finaliser (the same as ``base.splitmix64``)."""
    x = x + GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(inline="always", cache=True)
def node_key(key: int, node: int) -> int:
    return mix(key ^ mix(np.uint64(node)))


@njit(inline="always", cache=True)
def draw(state: int, i: int) -> int:
    """The ``i``-th 64-bit random number of a node's stream."""
    return mix(state + np.uint64(i) * GOLDEN)


@njit(inline="always", cache=True)
def below(r: int, n: int) -> int:
    """A number in [0, n) from 64 random bits (multiply-shift; bias below n / 2**32)."""
    if n < np.int64(1) << np.int64(32):
        return np.int64(((r >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))
    return np.int64(r % np.uint64(n))


@njit(inline="always", cache=True)
def unit(r: int) -> float:
    """A float in (0, 1] from 64 random bits."""
    return (np.float64(r >> np.uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)


# --- per-node draws ---------------------------------------------------------------------------------
@njit(inline="always", cache=True)
def _uniform_positions(state: int, deg: int, k: int, out: np.ndarray, at: int) -> None:
    """Floyd's algorithm: k distinct positions of [0, deg), written sorted into out[at:at+k]."""
    n = np.int64(0)
    for j in range(deg - k, deg):
        t = below(draw(state, j), j + 1)
        lo, hi = np.int64(0), n
        while lo < hi:
            mid = (lo + hi) >> 1
            if out[at + mid] < t:
                lo = mid + 1
            else:
                hi = mid
        if lo < n and out[at + lo] == t:
            out[at + n] = j  # t taken: j is larger than all taken so far, so it goes last
        else:
            for m in range(n, lo, -1):
                out[at + m] = out[at + m - 1]
            out[at + lo] = t
        n += 1


@njit(inline="always", cache=True)
def _positive(weights: np.ndarray, start: int, end: int) -> int:
    c = np.int64(0)
    for p in range(start, end):
        if weights[p] > 0:
            c += 1
    return c


@njit(inline="always", cache=True)
def _weighted_positions(
    state: int, weights: np.ndarray, start: int, deg: int, k: int,
    out: np.ndarray, at: int, heap_key: np.ndarray, heap_pos: np.ndarray,
) -> None:
    """Efraimidis-Spirakis: the k positions with the smallest Exp(1)/w keys, written sorted.

    A max-heap of size k keeps the best keys; zero weights never enter.
    """
    n = np.int64(0)
    for j in range(deg):
        w = weights[start + j]
        if not w > 0:
            continue
        key = -np.log(unit(draw(state, j))) / w
        if n < k:
            i = n
            n += 1
            while i > 0 and heap_key[(i - 1) >> 1] < key:
                heap_key[i], heap_pos[i] = heap_key[(i - 1) >> 1], heap_pos[(i - 1) >> 1]
                i = (i - 1) >> 1
            heap_key[i], heap_pos[i] = key, j
        elif key < heap_key[0]:
            i = np.int64(0)
            while True:
                c = 2 * i + 1
                if c >= k:
                    break
                if c + 1 < k and heap_key[c + 1] > heap_key[c]:
                    c += 1
                if heap_key[c] <= key:
                    break
                heap_key[i], heap_pos[i] = heap_key[c], heap_pos[c]
                i = c
            heap_key[i], heap_pos[i] = key, j
    sel = np.sort(heap_pos[:n])
    for i in range(n):
        out[at + i] = sel[i]


# --- one hop ----------------------------------------------------------------------------------------
def _counts_impl(indptr, num_edges, weights, weighted, frontier, fanout, starts, degs, counts):
    bad = 0
    for i in prange(frontier.shape[0]):
        v = frontier[i]
        start, end = indptr[v], indptr[v + 1]
        # 0 <= start <= end <= num_edges in two unsigned compares (three signed ones cost 1-2 %)
        if np.uint64(start) > np.uint64(num_edges) or np.uint64(end - start) > np.uint64(num_edges - start):
            # a damaged indptr: read nothing of this node; the caller raises (counts[i] < 0 says which)
            starts[i], degs[i], counts[i] = 0, 0, -1
            bad += 1
            continue
        starts[i], degs[i] = start, end - start
        avail = _positive(weights, start, end) if weighted else end - start
        counts[i] = avail if fanout < 0 or avail <= fanout else fanout
    return bad


def _draw_impl(weights, weighted, frontier, key, starts, degs, offsets, pos):
    for i in prange(frontier.shape[0]):
        at, k = offsets[i], offsets[i + 1] - offsets[i]
        start, deg = starts[i], degs[i]
        if k == deg:
            for j in range(k):
                pos[at + j] = start + j
            continue
        if weighted:
            _weighted_draw(weights, key, frontier[i], start, deg, k, pos, at)
        else:
            _uniform_positions(node_key(key, frontier[i]), deg, k, pos, at)
        for j in range(at, at + k):
            pos[j] += start


@njit(inline="always", cache=True)
def _weighted_draw(weights, key, v, start, deg, k, pos, at):
    if _positive(weights, start, start + deg) == k:
        c = at  # no more positive weights than the fan-out: take every one of them
        for j in range(deg):
            if weights[start + j] > 0:
                pos[c] = j
                c += 1
        return
    hk = np.empty(k, np.float64)
    hp = np.empty(k, np.int64)
    _weighted_positions(node_key(key, v), weights, start, deg, k, pos, at, hk, hp)


def _gather_impl(indices, pos, nbr):
    # A tight loop of independent loads lets the CPU keep many cache misses in flight.
    for j in prange(pos.shape[0]):
        nbr[j] = indices[pos[j]]


def _twin(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A copy of ``fn`` under another name: numba's on-disk cache keys by name and line, not by the
    ``parallel`` flag (numba issue #6845), so the serial and parallel builds need distinct names."""
    twin = types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = name
    return twin


_counts_par = njit(parallel=True, cache=True, nogil=True)(_twin(_counts_impl, "_counts_par_impl"))
_counts_ser = njit(cache=True, nogil=True)(_twin(_counts_impl, "_counts_ser_impl"))
_draw_par = njit(parallel=True, cache=True, nogil=True)(_twin(_draw_impl, "_draw_par_impl"))
_draw_ser = njit(cache=True, nogil=True)(_twin(_draw_impl, "_draw_ser_impl"))
_gather_par = njit(parallel=True, cache=True, nogil=True)(_twin(_gather_impl, "_gather_par_impl"))
_gather_ser = njit(cache=True, nogil=True)(_twin(_gather_impl, "_gather_ser_impl"))


# --- relabelling ------------------------------------------------------------------------------------
@njit(inline="always", cache=True)
def _slot(key: int, shift: int) -> int:
    return np.int64((np.uint64(key) * GOLDEN) >> shift)


@njit(cache=True, nogil=True)
def _new_table(nodes: np.ndarray, n: int, need: int) -> tuple[np.ndarray, int]:
    """An open-addressing table of (global id, local id) pairs side by side (one cache line per probe)."""
    bits = 4
    while (np.int64(1) << bits) < need:
        bits += 1
    table = np.full(np.int64(2) << bits, _EMPTY, np.int64)
    shift = np.uint64(64 - bits)
    mask = (np.int64(1) << bits) - 1
    for i in range(n):
        s = _slot(nodes[i], shift)
        while table[2 * s] != _EMPTY:
            s = (s + 1) & mask
        table[2 * s], table[2 * s + 1] = nodes[i], i
    return table, shift


@njit(cache=True, nogil=True)
def _relabel(nbr: np.ndarray, e0: int, table: np.ndarray, shift: int, nodes: np.ndarray,
             n: int, row: np.ndarray, num_nodes: int) -> tuple[int, int, bool]:
    """Local id of neighbours ``e0..`` into ``row``; new ids appended to ``nodes`` in order of first use.

    Stops early (returning the next edge, the node count and False) when the table is half
    full, or at a neighbour id outside ``[0, num_nodes)`` (returning its edge and True).
    """
    mask = (table.shape[0] >> 1) - 1
    full = (mask + 1) >> 1
    limit = np.uint64(num_nodes)
    for e in range(e0, nbr.shape[0]):
        if n >= full:
            return e, n, False
        u = np.int64(nbr[e])
        if np.uint64(u) >= limit:  # one unsigned compare catches negative ids too
            return e, n, True
        s = _slot(u, shift)
        while True:
            k = table[2 * s]
            if k == u:
                row[e] = table[2 * s + 1]
                break
            if k == _EMPTY:
                table[2 * s], table[2 * s + 1] = u, n
                nodes[n] = u
                row[e] = n
                n += 1
                break
            s = (s + 1) & mask
    return nbr.shape[0], n, False


def sample_layers(indptr, indices, weights, seeds, fanouts, key, want_edges, parallel):
    """Sample ``len(fanouts)`` hops from ``seeds``; returns node, row, col, edge, hop node/edge counts.

    Called from Python; the per-hop steps are compiled kernels (parallel over the frontier when
    ``parallel``), so the only Python work is a few calls and allocations per hop.
    """
    parallel = parallel and parallel_allowed()
    counts_k, draw_k, gather_k = (_counts_par, _draw_par, _gather_par) if parallel else (_counts_ser, _draw_ser, _gather_ser)
    num_nodes, num_edges = indptr.shape[0] - 1, indices.shape[0]
    weighted = weights is not None
    w = weights if weighted else np.empty(0, np.float32)
    ukey = np.uint64(key)
    layers = Layers(seeds, num_nodes, want_edges)
    for fanout in fanouts:
        frontier = layers.frontier()
        f = frontier.shape[0]
        starts, degs, cnt = np.empty(f, np.int64), np.empty(f, np.int64), np.empty(f, np.int64)
        if counts_k(indptr, num_edges, w, weighted, frontier, fanout, starts, degs, cnt):
            raise _bad_offsets(indptr, frontier, cnt, num_edges)
        offsets = np.zeros(f + 1, np.int64)
        np.cumsum(cnt, out=offsets[1:])
        pos = np.empty(int(offsets[-1]), np.int64)
        draw_k(w, weighted, frontier, ukey, starts, degs, offsets, pos)
        nbr = np.empty(pos.shape[0], indices.dtype)
        gather_k(indices, pos, nbr)
        layers.add_hop(cnt, pos, nbr, indices)
    return layers.result()


class Layers:
    """One batch's sample built hop by hop: the next frontier, then each hop's draws (``cnt`` per
    frontier node, their positions ``pos`` in ``indices`` and the neighbours ``nbr`` there)
    relabelled into local ids in edge order. The in-memory sampler and the sweeping one
    (``sampler.sweep``) share it, so their batches are the same bytes."""

    def __init__(self, seeds: np.ndarray, num_nodes: int, want_edges: bool) -> None:
        self.nodes = np.empty(max(16, seeds.shape[0] * 2), np.int64)
        self.nodes[: seeds.shape[0]] = seeds
        self.n, self.lo = int(seeds.shape[0]), 0
        self.num_nodes, self.want_edges = num_nodes, want_edges
        self.table: np.ndarray | None
        self.table, self.shift = _new_table(self.nodes, self.n, 4 * self.n)
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.edges: list[np.ndarray] = []
        self.hop_nodes: list[int] = [self.n]
        self.hop_edges: list[int] = []

    def frontier(self) -> np.ndarray:
        """The nodes first reached at the last hop (the seeds before the first)."""
        return self.nodes[self.lo : self.n]

    def add_hop(self, cnt: np.ndarray, pos: np.ndarray, nbr: np.ndarray, indices: np.ndarray) -> None:
        """Relabel one hop; ``indices`` names the file in a ``CorruptGraphError``."""
        ne, n = nbr.shape[0], self.n
        if n + ne > self.nodes.shape[0]:
            grown = np.empty(max(2 * self.nodes.shape[0], n + ne), np.int64)
            grown[:n] = self.nodes[:n]
            self.nodes = grown
        if self.table is None:
            self.table, self.shift = _new_table(self.nodes, n, 4 * max(1, n))
        row = np.empty(ne, np.int64)
        n_before, e = n, 0
        while e < ne:
            e, n, bad = _relabel(nbr, e, self.table, self.shift, self.nodes, n, row, self.num_nodes)
            if bad:
                offsets = np.concatenate([[0], np.cumsum(cnt)])
                node = int(self.nodes[self.lo + np.searchsorted(offsets, e, "right") - 1])
                raise CorruptGraphError.bad_neighbour(indices, int(pos[e]), int(nbr[e]), self.num_nodes, node)
            if e < ne:  # half full: double it and go on
                self.table, self.shift = _new_table(self.nodes, n, self.table.shape[0])
        self.rows.append(row)
        self.cols.append(np.repeat(np.arange(self.lo, n_before, dtype=np.int64), cnt))
        if self.want_edges:
            self.edges.append(pos)
        self.hop_nodes.append(n - n_before)
        self.hop_edges.append(ne)
        self.n, self.lo = n, n_before

    def drop_table(self) -> None:
        """Free the relabelling table between hops (the next ``add_hop`` builds it again from the
        nodes; a table of another size maps the same ids, so the batch is the same)."""
        self.table = None

    def result(self) -> tuple[Any, ...]:
        cat = _concat
        return (self.nodes[: self.n].copy(), cat(self.rows), cat(self.cols),
                cat(self.edges) if self.want_edges else None, tuple(self.hop_nodes), tuple(self.hop_edges))


def _bad_offsets(indptr: np.ndarray, frontier: np.ndarray, cnt: np.ndarray, num_edges: int) -> CorruptGraphError:
    v = int(frontier[np.flatnonzero(cnt < 0)[0]])
    return CorruptGraphError.bad_offsets(indptr, v, int(indptr[v]), int(indptr[v + 1]), num_edges)


@njit(cache=True, nogil=True)
def count_nodes(counts: np.ndarray, nodes: np.ndarray) -> int:
    """``counts[nodes] += 1`` for distinct ``nodes``, without the GIL (numpy's took 0.65 s of an
    epoch's 1.1 s of writing on the 1 B-edge graph); returns the index of the first node outside
    ``counts`` (nothing counted from there on), else -1."""
    n = counts.shape[0]
    for i in range(nodes.shape[0]):
        v = nodes[i]
        if v < 0 or v >= n:
            return i
        counts[v] += 1
    return -1


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


# --- fork safety -------------------------------------------------------------------------------------
# numba resolves its "default" threading layer to GNU OpenMP when TBB is not installed (as here).
# libgomp's thread pool does not survive fork(), so numba's omppool terminates a forked child
# that launches a parallel kernel after its parent started the pool: the child prints
# "Terminating: fork() called from a process already using GNU OpenMP, this is unsafe." and
# raises SIGTERM (a DataLoader worker "killed by signal: Terminated"). A child forked before the
# pool started owns a fresh pool and may run the parallel kernels.
_POOL_INHERITED = False


def _pool_started() -> bool:
    try:
        numba.threading_layer()  # raises ValueError until the pool has been started
    except ValueError:
        return False
    return True


def _after_fork_in_child() -> None:
    global _POOL_INHERITED
    _POOL_INHERITED = _POOL_INHERITED or _pool_started()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_allowed() -> bool:
    """False in a process forked after numba's thread pool started: only the serial kernels run there.

    The samples are the same either way (counter-based draws); every threading layer is treated
    alike, since a forked child is usually one of several workers, each already a core's work.
    """
    return not _POOL_INHERITED


def set_threads(threads: int | None) -> int:
    """Set numba's thread count for this thread; returns the previous count."""
    prev = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(max(1, min(int(threads), int(getattr(numba.config, "NUMBA_NUM_THREADS", 1)))))
    return prev
