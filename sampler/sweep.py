"""Sampling a group of batches by sweeping the topology: for graphs whose CSC does not fit in memory.

Node-wise sampling reads ``indptr`` and ``indices`` at random, one node at a time: once the
topology is larger than the page cache, every read is a disk seek (0.2 M sampled edges/s).
``SweepSampler`` samples a *group* of batches hop by hop instead: it gathers the frontier of
every batch in the group, sorts it by node id, reads the ``indptr`` entries and the
``indices`` (and weights) ranges it needs in ascending order with large reads (a gap of less
than ``gap_bytes`` is read through rather than sought over), and draws every node's neighbours in
the window that holds them, writing them straight to their places in batch order. One hop of a
group costs at most one sequential pass over the topology.

The draws are the in-memory kernels' own (``kernels``: every random number is a function of the
batch key, the node and the draw index, so the order nodes are visited in does not matter) and
each batch is relabelled by the same code (``kernels.Layers``): a group's batches are the same
bytes as ``NeighborSampler.sample`` gives one by one, uniform, weighted and ``-1`` alike.

A group's hops are swept whole (its frontier entries, sorted, are in memory). When a hop's draws
fit ``results_bytes`` written in place (``IN_PLACE_PER_EDGE``), each entry's room in batch order
is reserved by its bound and the sweep writes there: nothing is put back afterwards (before:
1.8 s of a 1 B-edge epoch's 8). Else the sweep spills them by *sub-group* to scratch files, each
read back once and put back in batch order. Memory: per batch of the group, its earlier hops and
its last frontier (``bytes_per_batch``); a hop's draws in place, or one sub-group's put back
(``results_bytes``); two read windows and one window's draws (``fixed_bytes``). A node whose
in-edges alone are larger than a window gets one of its own size.

Example:
    >>> import numpy as np
    >>> from gnn_ooc.sampler import NeighborSampler, SampleKey
    >>> g = (np.array([0, 2, 3, 5, 6]), np.array([1, 2, 0, 0, 3, 2], np.int32))
    >>> s = NeighborSampler(g, [1, -1])
    >>> sweep = SweepSampler(s)
    >>> keys = [SampleKey(0, 0, 0), SampleKey(0, 0, 1)]
    >>> outs = list(sweep.sample_group([np.array([0]), np.array([3, 1])], keys))
    >>> [o.node.tolist() == s.sample(seeds, k).node.tolist() for o, seeds, k in zip(outs, [[0], [3, 1]], keys)]
    [True, True]
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from numba import njit, prange

from gnn_ooc.errors import DiskSpaceError
from gnn_ooc.graphstore.io.directio import PAGE, open_read, write_all
from gnn_ooc.sampler import kernels
from gnn_ooc.sampler.base import (
    CorruptGraphError,
    SampledSubgraph,
    SampleKey,
    SamplerError,
    as_seeds,
    reopenable,
)
from gnn_ooc.units import format_size

#: Bytes per draw while a spilled sub-group's hop is put back in order and relabelled (the
#: bucket, its batch-order copy, rows, cols, edge ids, the emitted batch's copies); a batch's
#: draws being relabelled and written count at this rate too.
BYTES_PER_EDGE = 80
#: Bytes per draw and per frontier entry when a hop's draws are written straight to their places
#: in batch order (positions, neighbours; each entry's bound, room, place and count).
IN_PLACE_PER_EDGE, IN_PLACE_PER_ENTRY = 16, 32
#: Bytes per frontier entry while a hop is swept (node, order, batch, offsets, bound, and the
#: temporaries of finding the windows).
BYTES_PER_ENTRY = 72
#: Bytes a batch keeps per edge and per node of its earlier hops between sweeps.
STATE_PER_EDGE, STATE_PER_NODE = 24, 16
#: Bytes per draw of the window being sampled (positions, neighbours, their packed copy).
WINDOW_RESULT_BYTES = 32
#: Read through a gap smaller than this rather than seek over it (a seek costs about 100 us,
#: the time a disk reads 64-256 KiB in).
GAP_BYTES = 256 << 10
WINDOW_BYTES = 32 << 20
#: What a sweep holds besides its arrays: the reading thread's allocator arena, Python objects
#: per batch and per window (measured: 0.5-1 MiB on the test graph).
SWEEP_OVERHEAD = 1 << 20
#: Concurrent reads per window, each at least ``PIECE_BYTES``. One: under a memory cap that
#: includes the page cache, one buffered stream read 0.99 GB/s here, two 0.98, four 0.63-0.74
#: (reclaiming the cache is the limit); one stream that drops what it read (``POSIX_FADV_DONTNEED``)
#: 1.87 GB/s alone, O_DIRECT 1.68 (two streams 1.59, four 1.07) but at half the system time (0.39
#: vs 0.81 s for 4 GB), so a sweep beside its kernels took 0.45 s less of a 7.2 s epoch direct.
READ_STREAMS, PIECE_BYTES = 1, 4 << 20


@dataclass
class SweepStats:
    """What sweeping read: bytes, reads (windows) and hops swept, across calls."""

    bytes_read: int = 0
    windows: int = 0
    sweeps: int = 0
    entries: int = 0
    spilled_bytes: int = 0
    index_passes: int = 0  # first hops read from a seed index instead of the topology


class Source:
    """Where a hop's in-neighbour lists are read: the topology, or a ``SeedIndex`` standing in for
    it (``rows`` maps sorted node ids to its rows; ``starts`` gives each row's offset in the
    topology, for edge ids). ``key`` names its readers."""

    def __init__(self, key: str, indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None,
                 num_edges: int) -> None:
        self.key, self.indptr, self.indices, self.weights, self.num_edges = key, indptr, indices, weights, num_edges

    def rows(self, v: np.ndarray) -> np.ndarray | None:
        """The rows of sorted nodes ``v`` (None: some node is not here)."""
        return v

    def starts(self, rows: np.ndarray) -> np.ndarray | None:
        """Each row's first edge in the topology (None: the rows' own offsets are the topology's)."""
        return None


class RangeReader:
    """Reads ranges ``[lo, hi)`` of a 1-D array: with ``pread`` from its ``.npy`` file when the array
    is a memory map of one (no page-cache mapping grows with the graph), else by slicing. With
    ``drop`` (the pages would be gone before the next sweep reads them), reads bypass the page
    cache (O_DIRECT, aligned) where the filesystem allows, else drop what was read from it."""

    def __init__(self, arr: np.ndarray, *, drop: bool = False) -> None:
        self.arr, self.dtype, self.item = arr, arr.dtype, arr.dtype.itemsize
        self.drop = drop
        where = reopenable(arr)
        self.fd: int | None = None
        self.direct = False
        self.name = getattr(where, "filename", None)
        if self.name is not None:
            self.fd, self.direct = open_read(self.name, direct=drop)
            self.base = int(np.load(self.name, mmap_mode="r").offset)
            if not self.direct:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def start(self, pool: ThreadPoolExecutor, lo: int, n: int, pieces: int) -> tuple[np.ndarray, list[Future[None]]]:
        """Begin reading elements ``[lo, lo + n)`` in ``pieces`` concurrent reads of at least
        ``PIECE_BYTES``: the array they fill and the reads to wait for."""
        if not self.direct:
            out = np.empty(n, self.dtype)
            piece = max(PIECE_BYTES // self.item, -(-n // pieces))
            return out, [pool.submit(self._read_buffered, out[a : a + piece], lo + a) for a in range(0, n, piece)]
        first = self.base + lo * self.item
        a0 = first - first % PAGE
        a1 = -(-(first + n * self.item) // PAGE) * PAGE
        raw = _aligned(a1 - a0)
        step = max(PIECE_BYTES, -(-(a1 - a0) // pieces // PAGE) * PAGE)
        end = first + n * self.item
        futs = [pool.submit(self._read_direct, raw[a : a + step], a0 + a, min(step, end - a0 - a))
                for a in range(0, a1 - a0, step)]
        return raw[first - a0 : end - a0].view(self.dtype), futs

    def _read_direct(self, buf: np.ndarray, offset: int, need: int) -> None:
        """Whole pages into ``buf`` from ``offset``, of which the first ``need`` bytes must exist
        (the last page may run past the file's end)."""
        assert self.fd is not None
        view, done = memoryview(buf), 0  # type: ignore[arg-type]
        while done < view.nbytes:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            done += max(0, got)
            if got <= 0 or done % PAGE:  # the file's end (a direct read goes on at page offsets only)
                break
        if done < need:
            raise CorruptGraphError(f"{self.name}: ends at byte {offset + done}, expected "
                                    f"{offset + need} (the file is truncated)")

    def _read_buffered(self, out: np.ndarray, lo: int) -> None:
        """Elements ``[lo, lo + len(out))`` into ``out`` (any thread: ``pread`` keeps no position)."""
        if self.fd is None:
            out[:] = self.arr[lo : lo + out.shape[0]]
            return
        view, offset, done = memoryview(out).cast("B"), self.base + lo * self.item, 0  # type: ignore[arg-type]
        while done < view.nbytes:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise CorruptGraphError(f"{self.name}: ends at byte {offset + done}, expected "
                                        f"{self.base + (lo + out.shape[0]) * self.item} (the file is truncated)")
            done += got
        if self.drop:
            os.posix_fadvise(self.fd, offset, done, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _aligned(nbytes: int) -> np.ndarray:
    """``nbytes`` of uninitialised bytes at a page-aligned address (O_DIRECT's buffers)."""
    raw = np.empty(nbytes + PAGE, np.uint8)
    skip = -raw.ctypes.data % PAGE
    return raw[skip : skip + nbytes]


class SweepSampler:
    """Samples groups of batches of a ``NeighborSampler`` by sweeping its topology (module docstring).

    Example:
        >>> sweep = SweepSampler(NeighborSampler(ds, [10, 5]))                      # doctest: +SKIP
        >>> subs = list(sweep.sample_group([seeds_0, seeds_1], [key_0, key_1]))   # doctest: +SKIP
    """

    def __init__(self, sampler: Any, *, window_bytes: int = WINDOW_BYTES, gap_bytes: int = GAP_BYTES,
                 parallel: bool = True) -> None:
        self.sampler = sampler
        g = sampler.graph
        self.indptr, self.indices, self.weights = g.indptr, g.indices, sampler.weights
        self.num_nodes, self.num_edges = g.num_nodes, g.num_edges
        self.fanouts, self.want_edges = sampler.fanouts, sampler.return_edge_ids
        self.window_bytes, self.gap_bytes = int(window_bytes), int(gap_bytes)
        self.parallel = parallel
        #: drop the topology's pages from the page cache once read (set when it does not fit there)
        self.drop_cache = False
        self.stats = SweepStats()
        self._readers: dict[str, RangeReader] = {}
        self.topology = Source("", self.indptr, self.indices, self.weights, self.num_edges)
        #: read the first hop from here when it holds every node of the frontier (``SeedIndex``)
        self.first_hop: Source | None = None

    # --- sizing ----------------------------------------------------------------------------------
    def _hops_bound(self, batch_size: int) -> list[tuple[float, float]]:
        """Per hop, a bound on one batch's (frontier entries, sampled edges)."""
        mean = max(1.0, self.num_edges / max(1, self.num_nodes))
        frontier, out = float(batch_size), []
        for f in self.fanouts:
            edges = frontier * (4 * mean if f < 0 else f)
            out.append((frontier, min(edges, float(self.num_edges))))
            frontier = edges
        return out

    def bytes_per_batch(self, batch_size: int) -> int:
        """What one batch holds in a group between sweeps: the hops before the last (nodes, edges)
        and the last hop's frontier entries (the last hop's edges go through ``results``)."""
        hops = self._hops_bound(batch_size)
        state = sum(STATE_PER_EDGE * e + STATE_PER_NODE * e for _, e in hops[:-1])
        return int(STATE_PER_NODE * batch_size + state + BYTES_PER_ENTRY * max(f for f, _ in hops))

    def result_bytes(self, batch_size: int) -> int:
        """One batch's largest hop of draws while it is put back in order and relabelled."""
        return int(BYTES_PER_EDGE * max(e for _, e in self._hops_bound(batch_size)))

    def fixed_bytes(self, window_bytes: int | None = None) -> int:
        """Two read windows (indices, and weights when weighted), one window's draws, overhead (for
        windows of ``window_bytes``, default this sampler's)."""
        wb = self.window_bytes if window_bytes is None else int(window_bytes)
        item = self.indices.dtype.itemsize
        per_edge = item + (0 if self.weights is None else self.weights.dtype.itemsize)
        return 2 * (wb // item) * per_edge + self._window_results(wb) * WINDOW_RESULT_BYTES + SWEEP_OVERHEAD

    def _window_results(self, window_bytes: int | None = None) -> int:
        return max(1 << 12, (self.window_bytes if window_bytes is None else window_bytes) // WINDOW_RESULT_BYTES)

    # --- sampling --------------------------------------------------------------------------------
    def sample_group(self, seeds: Sequence[np.ndarray], keys: Sequence[SampleKey], *,
                     results_bytes: int | None = None, scratch: Path | None = None) -> Iterator[SampledSubgraph]:
        """The batches ``sampler.sample(seeds[i], keys[i])`` would give, in order, one sweep per hop.

        A hop's draws are put back into batch order a sub-group at a time, each sub-group's draws at
        most ``results_bytes`` (default: no limit); with more than one sub-group, the sweep spills
        them to files in ``scratch`` (required then), read back once."""
        if len(seeds) != len(keys):
            raise SamplerError(f"{len(seeds)} seed arrays but {len(keys)} keys")
        layers = [kernels.Layers(as_seeds(s, self.num_nodes), self.num_nodes, self.want_edges) for s in seeds]
        for lay in layers:
            lay.drop_table()  # built when the batch's first hop is relabelled, not for the whole group at once
        ukeys = np.array([k.stream() for k in keys], dtype=np.uint64)
        last = len(self.fanouts) - 1
        for h, fanout in enumerate(self.fanouts):
            frontiers = [lay.frontier() for lay in layers]
            src = self.first_hop if h == 0 and self.first_hop is not None else self.topology
            # relabelled one batch at a time: two threads took longer (add_hop is GIL-bound in part)
            for b, (cnt, pos, nbr) in self._hop(src, frontiers, ukeys, fanout, results_bytes, scratch):
                layers[b].add_hop(cnt, pos, nbr, self.indices)
                if h == last:
                    yield SampledSubgraph(*_fields(layers[b].result()))
                    layers[b] = None  # emitted: its memory goes now
                else:
                    layers[b].drop_table()  # rebuilt at the next hop: tables are most of a batch's state

    def _hop(self, src: Source, frontiers: list[np.ndarray], ukeys: np.ndarray, fanout: int,
             results_bytes: int | None, scratch: Path | None) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
        sizes = np.array([f.shape[0] for f in frontiers], dtype=np.int64)
        entry_off = np.concatenate([[0], np.cumsum(sizes)])
        nodes = np.concatenate(frontiers) if frontiers else np.empty(0, np.int64)
        order = stable_argsort(nodes, self.num_nodes)
        v = nodes[order]
        del nodes
        rows = src.rows(v)
        if rows is None:  # the index does not hold this frontier: the topology does
            src, rows = self.topology, v
        bid = np.repeat(np.arange(len(frontiers), dtype=np.int32), sizes)[order]  # each entry's batch
        start, end = self._offsets(src, v, rows)
        deg = np.subtract(end, start, out=end)
        bound = deg if fanout < 0 else np.minimum(deg, fanout)
        starts = src.starts(rows)
        shift = None if starts is None else np.subtract(starts, start, out=starts)  # index row -> topology offset
        del rows
        subgroups = _subgroups(bound, order, entry_off, results_bytes)
        sink: _InPlace | _Buckets
        if len(subgroups) == 2:  # one sub-group: the draws go straight to their batch-order places
            sink = _InPlace(bound, order, self.indices.dtype)
        else:
            sink = _Buckets(entry_off[subgroups], scratch, self.indices.dtype)
        with sink:
            self._sweep(src, v, ukeys, bid, start, deg, bound, shift, fanout, order, sink)
            del v, bid, start, deg, bound, shift
            if src is self.topology:
                self.stats.sweeps += 1
            else:
                self.stats.index_passes += 1
            self.stats.entries += int(order.shape[0])
            del order
            self.stats.spilled_bytes += sink.bytes_written
            yield from sink.batches(entry_off, subgroups)

    def offsets(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``indptr[v]`` and ``indptr[v + 1]`` for sorted ``v``, read in ascending windows; checked."""
        return self._offsets(self.topology, v, v)

    def _offsets(self, src: Source, v: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``src.indptr[rows]`` and ``src.indptr[rows + 1]`` for sorted ``rows`` (of nodes ``v``); checked."""
        start, end = np.empty(v.shape[0], np.int64), np.empty(v.shape[0], np.int64)
        reader = self._reader(src.key + "indptr", src.indptr)
        zeros = np.zeros(v.shape[0], np.int64)
        for (i0, i1, lo, _hi), (buf,) in self._windows(reader, rows, rows + 2, zeros, []):
            start[i0:i1] = buf[rows[i0:i1] - lo]
            end[i0:i1] = buf[rows[i0:i1] + 1 - lo]
        # sorted nodes have non-decreasing offsets in a sound graph: the windows rely on it
        down = np.zeros(v.shape[0], bool)
        down[1:] = start[1:] < start[:-1]
        bad = np.flatnonzero((start < 0) | (end < start) | (end > src.num_edges) | down)
        if bad.size:
            i = int(bad[0])
            raise CorruptGraphError.bad_offsets(src.indptr, int(v[i]), int(start[i]), int(end[i]), src.num_edges)
        return start, end

    def ranges(self, src: Source, start: np.ndarray, deg: np.ndarray, results: np.ndarray) -> Iterator[
            tuple[tuple[int, int, int, int], list[np.ndarray]]]:
        """Windows ``(first, last + 1, lo, hi)`` over the sorted ranges ``[start, start + deg)`` of
        ``src.indices`` (and its weights), each with what was read: ``[indices[lo:hi], weights[lo:hi]]``."""
        readers = [self._reader(src.key + "indices", src.indices)]
        if self.weights is not None:
            assert src.weights is not None
            readers.append(self._reader(src.key + "weights", src.weights))
        return self._windows(readers[0], start, start + deg, results, readers[1:])

    def _sweep(self, src: Source, v: np.ndarray, ukeys: np.ndarray, bid: np.ndarray, start: np.ndarray,
               deg: np.ndarray, bound: np.ndarray, shift: np.ndarray | None, fanout: int, order: np.ndarray,
               sink: _InPlace | _Buckets) -> None:
        """One ascending pass: each window's draws, handed to the sink."""
        weighted = self.weights is not None
        # numba's default threading layer is not re-entrant: parallel kernels from the main thread only
        main = threading.current_thread() is threading.main_thread()
        kernel = _window_par if self.parallel and main and kernels.parallel_allowed() else _window_ser
        empty_w, no_shift = np.empty(0, np.float32), np.empty(0, np.int64)
        for (i0, i1, lo, _hi), bufs in self.ranges(src, start, deg, bound):
            off, pos, nbr = sink.targets(i0, i1, bound[i0:i1])
            cnt = np.zeros(i1 - i0, np.int64)
            # an index's positions are shifted to edge ids (positions in the topology)
            kernel(v[i0:i1], ukeys[bid[i0:i1]], start[i0:i1], deg[i0:i1], lo, bufs[0],
                   bufs[1] if weighted else empty_w, weighted, fanout, off, cnt, pos, nbr,
                   no_shift if shift is None else shift[i0:i1], shift is not None)
            sink.add(order[i0:i1], cnt, off, pos, nbr)

    def _windows(self, reader: RangeReader, lo: np.ndarray, hi: np.ndarray, results: np.ndarray,
                 also: list[RangeReader]) -> Iterator[tuple[tuple[int, int, int, int], list[np.ndarray]]]:
        """Windows over sorted ranges ``[lo[i], hi[i])`` (at most ``_window_results`` draws each, by
        ``results``), each read (by ``reader`` and the ``also`` readers, same ranges) one window
        ahead while the caller works on the last, in ``READ_STREAMS`` concurrent pieces."""
        item = reader.item
        bounds = _plan_windows(lo, hi, results, max(1, self.gap_bytes // item), max(1, self.window_bytes // item),
                               self._window_results())
        wins = [tuple(int(x) for x in row) for row in bounds]
        if not wins:
            return
        readers = [reader, *also]
        with ThreadPoolExecutor(READ_STREAMS, thread_name_prefix="gnn-ooc-sweep") as pool:

            def start(w: tuple[int, ...]) -> tuple[list[np.ndarray], list[Future[None]]]:
                started = [r.start(pool, w[2], w[3] - w[2], READ_STREAMS) for r in readers]
                return [buf for buf, _ in started], [f for _, futs in started for f in futs]

            ahead = start(wins[0])
            for k, w in enumerate(wins):
                bufs, futs = ahead
                for f in futs:
                    f.result()
                self.stats.bytes_read += sum(b.nbytes for b in bufs)
                self.stats.windows += 1
                if k + 1 < len(wins):
                    ahead = start(wins[k + 1])
                yield w, bufs  # type: ignore[misc]

    def _reader(self, name: str, arr: np.ndarray) -> RangeReader:
        if name not in self._readers:
            # the topology's pages would be gone before the next sweep reads them: drop them now (a
            # seed index is read every epoch and small: it stays)
            self._readers[name] = RangeReader(arr, drop=self.drop_cache and not name.startswith("first-hop"))
        return self._readers[name]

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __del__(self) -> None:
        self.close()


def _subgroups(bound: np.ndarray, order: np.ndarray, entry_off: np.ndarray, results_bytes: int | None) -> np.ndarray:
    """Batch boundaries of the sub-groups whose draws (``bound`` per sorted entry) fit ``results_bytes``:
    one when the hop's draws fit written in place, else as many as spilling them takes."""
    nb = entry_off.shape[0] - 1
    in_place = IN_PLACE_PER_EDGE * int(bound.sum()) + IN_PLACE_PER_ENTRY * bound.shape[0]
    if results_bytes is None or in_place <= results_bytes:
        return np.array([0, nb], np.int64)
    per_entry = np.empty_like(bound)
    per_entry[order] = bound
    cum = np.concatenate([[0], np.cumsum(per_entry)])
    per_batch = cum[entry_off[1:]] - cum[entry_off[:-1]]  # empty batches (no frontier left) hold 0
    used, out = 0, [0]
    limit = max(1, results_bytes // BYTES_PER_EDGE)
    for b in range(nb):  # per batch, not per item: a few thousand steps at most
        e = int(per_batch[b])
        if used and used + e > limit:
            out.append(b)
            used = 0
        used += e
    out.append(nb)
    return np.array(out, np.int64)


class _InPlace:
    """One sub-group's draws, written by the sweep straight to their places in batch order: each
    entry's room is reserved by its bound, so nothing is put back afterwards (a weighted node with
    fewer positive weights than its bound leaves a gap that ``batches`` closes)."""

    bytes_written = 0

    def __init__(self, bound: np.ndarray, order: np.ndarray, node_dtype: np.dtype) -> None:
        self.bound = np.empty_like(bound)
        self.bound[order] = bound  # per entry in batch order
        self.off = np.zeros(bound.shape[0] + 1, np.int64)
        np.cumsum(self.bound, out=self.off[1:])
        self.dst = self.off[:-1][order]  # each sorted entry's place
        self.cnt = np.zeros(bound.shape[0], np.int64)
        self.pos = np.empty(int(self.off[-1]), np.int64)
        self.nbr = np.empty(self.pos.shape[0], node_dtype)

    def __enter__(self) -> _InPlace:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def targets(self, i0: int, i1: int, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the window of sorted entries ``[i0, i1)`` writes its draws: (offsets, pos, nbr)."""
        return self.dst[i0:i1], self.pos, self.nbr

    def add(self, orig: np.ndarray, cnt: np.ndarray, off: np.ndarray, pos: np.ndarray, nbr: np.ndarray) -> None:
        self.cnt[orig] = cnt

    def batches(self, entry_off: np.ndarray, subgroups: np.ndarray) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
        off = self.off
        if not np.array_equal(self.cnt, self.bound):
            off = np.zeros_like(self.off)
            np.cumsum(self.cnt, out=off[1:])
            _close_gaps(self.off, off, self.cnt, self.pos, self.nbr)
        del self.dst, self.bound
        yield from _by_batch(self.cnt, off, self.pos, self.nbr, entry_off, 0, entry_off.shape[0] - 1)


class _Buckets:
    """One hop's draws by sub-group, appended to four files per sub-group in ``scratch`` (entries'
    batch-order index and count, positions, neighbours), each read back once, put back in batch
    order and deleted. A full disk is a ``DiskSpaceError`` naming the file."""

    def __init__(self, cuts: np.ndarray, scratch: Path | None, node_dtype: np.dtype) -> None:
        self.cuts, self.node_dtype = cuts, node_dtype  # the sub-groups' first entries (batch order)
        if scratch is None:
            raise SamplerError(f"{cuts.shape[0] - 1} sub-groups need a scratch folder to spill to")
        self.dir = Path(scratch) / f"hop-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        self.bytes_written = 0

    def __enter__(self) -> _Buckets:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def targets(self, i0: int, i1: int, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Room for a window's draws: (offsets, pos, nbr) of its own."""
        off = np.zeros(i1 - i0 + 1, np.int64)
        np.cumsum(bound, out=off[1:])
        return off, np.empty(int(off[-1]), np.int64), np.empty(int(off[-1]), self.node_dtype)

    def add(self, orig: np.ndarray, cnt: np.ndarray, off: np.ndarray, pos: np.ndarray, nbr: np.ndarray) -> None:
        """One window's draws (entries in node order, ``off`` their bound offsets), by sub-group."""
        sub_of = np.searchsorted(self.cuts, orig, "right") - 1
        by = np.argsort(sub_of, kind="stable")
        subs, first = np.unique(sub_of[by], return_index=True)
        starts = np.append(first, by.shape[0])
        c = cnt[by]
        dst = np.zeros(by.shape[0] + 1, np.int64)
        np.cumsum(c, out=dst[1:])
        pos_c, nbr_c = np.empty(int(dst[-1]), np.int64), np.empty(int(dst[-1]), nbr.dtype)
        _compact(by, off, c, dst, pos, nbr, pos_c, nbr_c)
        for k, s in enumerate(subs.tolist()):
            i0, i1 = int(starts[k]), int(starts[k + 1])
            self._put(s, (orig[by[i0:i1]], c[i0:i1], pos_c[dst[i0] : dst[i1]], nbr_c[dst[i0] : dst[i1]]))

    def _put(self, s: int, parts: tuple[np.ndarray, ...]) -> None:
        for part, a in zip(_PARTS, parts):
            path = self.dir / f"{s}.{part}"
            try:
                _append(path, a)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskSpaceError(f"{path}: the disk filled while spilling sampled edges "
                                         f"({format_size(self.bytes_written)} written); free space there, or raise "
                                         "--memory-budget (fewer spills)") from None
                raise
            self.bytes_written += a.nbytes

    def load(self, s: int) -> tuple[np.ndarray, ...]:
        """Sub-group ``s``'s entries and draws, in the order the sweep produced them."""
        dtypes: tuple[Any, ...] = (np.dtype(np.int64), np.dtype(np.int64), np.dtype(np.int64), self.node_dtype)
        paths = [self.dir / f"{s}.{part}" for part in _PARTS]
        out = tuple(np.fromfile(p, dtype=dt) if p.exists() else np.empty(0, dt) for p, dt in zip(paths, dtypes))
        for p in paths:
            if p.exists():
                os.unlink(p)
        return out

    def batches(self, entry_off: np.ndarray, subgroups: np.ndarray) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
        for s in range(subgroups.shape[0] - 1):
            yield from _put_back(self.load(s), entry_off, int(subgroups[s]), int(subgroups[s + 1]))


def _put_back(bucket: tuple[np.ndarray, ...], entry_off: np.ndarray, b0: int,
              b1: int) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """One sub-group's draws (in node order) back in each batch's frontier order."""
    orig, cnt, pos, nbr = bucket
    e0 = int(entry_off[b0])
    local = orig - e0
    cnt_o = np.zeros(int(entry_off[b1]) - e0, np.int64)
    cnt_o[local] = cnt
    off_o = np.zeros(cnt_o.shape[0] + 1, np.int64)
    np.cumsum(cnt_o, out=off_o[1:])
    src = np.zeros(cnt.shape[0] + 1, np.int64)
    np.cumsum(cnt, out=src[1:])
    pos_o, nbr_o = np.empty(pos.shape[0], np.int64), np.empty(nbr.shape[0], nbr.dtype)
    _unsort(local, cnt, src, off_o, pos, nbr, pos_o, nbr_o)
    del bucket, orig, cnt, pos, nbr, local, src
    yield from _by_batch(cnt_o, off_o, pos_o, nbr_o, entry_off - e0, b0, b1)


def _by_batch(cnt: np.ndarray, off: np.ndarray, pos: np.ndarray, nbr: np.ndarray, entry_off: np.ndarray, b0: int,
              b1: int) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """Batches ``b0..b1``'s slices of draws in batch order (``entry_off`` relative to these arrays)."""
    for b in range(b0, b1):
        lo, hi = int(entry_off[b]), int(entry_off[b + 1])
        yield b, (cnt[lo:hi], pos[off[lo] : off[hi]], nbr[off[lo] : off[hi]])


def _append(path: Path, a: np.ndarray) -> None:
    """Append ``a``'s bytes to ``path``: opened per call (one descriptor at a time, however many
    sub-groups), unbuffered (a full disk is raised here, not at a later flush or close)."""
    view = memoryview(np.ascontiguousarray(a)).cast("B")  # type: ignore[arg-type]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        write_all(lambda data: os.write(fd, data), view)
    finally:
        os.close(fd)


_PARTS = ("orig", "cnt", "pos", "nbr")


def _fields(result: tuple[Any, ...]) -> tuple[Any, ...]:
    node, row, col, edge, hop_nodes, hop_edges = result
    return node, row, col, hop_nodes, hop_edges, edge


# --- kernels -----------------------------------------------------------------------------------------
def stable_argsort(keys: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for integers in ``[0, bound)``: a radix sort in at most two
    passes of half the bits each (numpy's stable sort of a 5 M-node frontier took 0.4 s, this 0.05)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    bits = max(1, int(max(1, bound) - 1).bit_length())
    if keys.shape[0] < 1 << 12 or bits > 40:  # small, or digits too wide for the count tables
        return np.argsort(keys, kind="stable")
    width = bits if bits <= 16 else -(-bits // 2)
    return _radix_argsort(keys, width, bits)


@njit(cache=True, nogil=True)
def _radix_argsort(keys: np.ndarray, width: int, bits: int) -> np.ndarray:
    n = keys.shape[0]
    idx, key = np.arange(n), keys.copy()
    idx_t, key_t = np.empty(n, np.int64), np.empty(n, np.int64)
    mask = (1 << width) - 1
    shift = 0
    while shift < bits:  # least significant digit first: each pass keeps the last pass's order
        counts = np.zeros((1 << width) + 1, np.int64)
        for i in range(n):
            counts[((key[i] >> shift) & mask) + 1] += 1
        for d in range(1 << width):
            counts[d + 1] += counts[d]
        for i in range(n):
            d = (key[i] >> shift) & mask
            at = counts[d]
            idx_t[at], key_t[at] = idx[i], key[i]
            counts[d] = at + 1
        idx, idx_t, key, key_t = idx_t, idx, key_t, key
        shift += width
    return idx



@njit(cache=True, nogil=True)
def _plan_windows(lo: np.ndarray, hi: np.ndarray, results: np.ndarray, gap: int, size: int, max_results: int) -> np.ndarray:
    """Group sorted ranges into windows ``(first, last + 1, window lo, window hi)``: a range joins
    the window unless the gap before it is ``gap`` or more, the window would pass ``size``
    elements or ``max_results`` draws (a range larger than either gets a window of its own)."""
    n = lo.shape[0]
    out = np.empty((n, 4), np.int64)
    w = 0
    i = 0
    while i < n:
        first, wlo, whi, r = i, lo[i], hi[i], results[i]
        i += 1
        while i < n and lo[i] - whi < gap and max(whi, hi[i]) - wlo <= size and r + results[i] <= max_results:
            whi = max(whi, hi[i])
            r += results[i]
            i += 1
        out[w, 0], out[w, 1], out[w, 2], out[w, 3] = first, i, wlo, whi
        w += 1
    return out[:w].copy()  # not a view: the n-row scratch array goes now


def _window_impl(v, keys, start, deg, wlo, ibuf, wbuf, weighted, fanout, off, cnt, pos, nbr, shift, shifted):
    for i in prange(v.shape[0]):
        s, d = start[i] - wlo, deg[i]  # the node's range within the window
        avail = kernels._positive(wbuf, s, s + d) if weighted else d
        k = avail if fanout < 0 or avail <= fanout else fanout
        cnt[i] = k
        at = off[i]
        if k == d:
            for j in range(k):
                pos[at + j] = s + j
        elif weighted:
            kernels._weighted_draw(wbuf, keys[i], v[i], s, d, k, pos, at)
            for j in range(at, at + k):
                pos[j] += s
        else:
            kernels._uniform_positions(kernels.node_key(keys[i], v[i]), d, k, pos, at)
            for j in range(at, at + k):
                pos[j] += s
        to = wlo + shift[i] if shifted else wlo
        for j in range(at, at + k):
            nbr[j] = ibuf[pos[j]]
            pos[j] += to


def _compact_impl(by, off, cnt, dst, pos, nbr, pos_c, nbr_c):
    """Entry ``by[i]``'s draws (at ``off[by[i]]``) to ``dst[i]``: a window's draws by sub-group, packed."""
    for i in prange(by.shape[0]):
        a, b = off[by[i]], dst[i]
        for j in range(cnt[i]):
            pos_c[b + j] = pos[a + j]
            nbr_c[b + j] = nbr[a + j]


def _unsort_impl(local, cnt, src, off_o, pos, nbr, pos_o, nbr_o):
    """Entry ``k``'s draws (at ``src[k]``) to its batch-order place ``off_o[local[k]]``."""
    for k in prange(local.shape[0]):
        a, b = src[k], off_o[local[k]]
        for j in range(cnt[k]):
            pos_o[b + j] = pos[a + j]
            nbr_o[b + j] = nbr[a + j]


_window_par = njit(parallel=True, cache=True, nogil=True)(kernels._twin(_window_impl, "_window_par_impl"))
_window_ser = njit(cache=True, nogil=True)(kernels._twin(_window_impl, "_window_ser_impl"))
_compact = njit(cache=True, nogil=True)(_compact_impl)
_unsort = njit(cache=True, nogil=True)(_unsort_impl)


@njit(cache=True, nogil=True)
def _close_gaps(room: np.ndarray, off: np.ndarray, cnt: np.ndarray, pos: np.ndarray, nbr: np.ndarray) -> None:
    """Move each entry's ``cnt`` draws from ``room[k]`` down to ``off[k]`` (``off <= room``), in place."""
    for k in range(cnt.shape[0]):
        a, b = room[k], off[k]
        if a != b:
            for j in range(cnt[k]):
                pos[b + j] = pos[a + j]
                nbr[b + j] = nbr[a + j]
