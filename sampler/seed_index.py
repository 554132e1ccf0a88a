"""The in-edges of a plan's seed nodes, cut out of the topology once: every epoch's first hop.

Sweeping a hop costs one pass over the topology however few nodes its frontier holds: the
training nodes are a small share of the graph (1 % in the scale benchmark) but spread over all
of it, so the first hop of every epoch read the whole ``indices`` file for them. The first
hop's frontier is always the plan's seeds, the same nodes every epoch in another order, so
``SeedIndex.build`` cuts their in-neighbour lists (and weights) out in one sweep and writes them
as a small CSC of their own inside the plan folder; later first hops read it in one short
sequential pass. The draws do not change (they are a function of key, node and draw index, and
the lists are the same bytes), and edge ids are mapped back to positions in the topology.

It is built only when it is small next to the topology (at most ``MAX_SHARE`` of its edges),
checked like every file gnn-ooc reads back (sizes and CRC-32 at open), and published atomically;
a damaged or stale one is rebuilt.

Files (``first-hop/``): ``nodes.npy`` (sorted seed ids), ``indptr.npy`` (their offsets in the
index), ``starts.npy`` (their offsets in the topology), ``indices.npy`` and, for weighted
sampling, ``weights.npy``; ``first-hop.json`` lists them with their checksums.

Example:
    >>> index = SeedIndex.open_or_build(plan_dir / "first-hop", sweep, seeds)   # doctest: +SKIP
    >>> sweep.first_hop = index                                                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import uuid
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from gnn_ooc.errors import GnnOocError
from gnn_ooc.graphstore.format.npyfile import (
    FileEntry,
    NpyWriter,
    file_checksum,
    write_array,
    write_bytes_entry,
)
from gnn_ooc.graphstore.io.atomic import Staging
from gnn_ooc.sampler.sweep import Source, SweepSampler

INDEX_JSON = "first-hop.json"
FORMAT, VERSION = "gnn-ooc-first-hop", 1
#: Build only when the seeds' in-edges are at most this share of the topology's: reading the
#: index must cost much less than a sweep, and its disk space stays small.
MAX_SHARE = 0.125


def worth_building(seeds: int, num_nodes: int, max_share: float = MAX_SHARE) -> bool:
    """Whether ``seeds`` seed nodes are few enough for an index (their edges are checked when built)."""
    return seeds <= max_share * num_nodes


class SeedIndex(Source):
    """A ``Source`` over the seeds' in-neighbour lists (module docstring)."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        files = meta["files"]

        def load(name: str) -> np.ndarray:
            return np.load(path / files[name]["name"], mmap_mode="r")

        super().__init__(f"first-hop:{uuid.uuid4().hex}:", load("indptr"), load("indices"),  # readers of its own
                         load("weights") if "weights" in files else None, int(meta["edges"]))
        self.path, self.digest = path, str(meta["digest"])
        self.nodes, self._starts = load("nodes"), load("starts")

    def rows(self, v: np.ndarray) -> np.ndarray | None:
        nodes = self.nodes
        rows = np.searchsorted(nodes, v)
        if rows.size and (int(rows[-1]) >= nodes.shape[0] or not np.array_equal(nodes[rows], v)):
            return None
        return rows

    def starts(self, rows: np.ndarray) -> np.ndarray | None:
        return np.asarray(self._starts[rows], dtype=np.int64)

    # --- building and opening ---------------------------------------------------------------------
    @classmethod
    def open_or_build(cls, path: Path, sweep: SweepSampler, seeds: np.ndarray, *, staging: int = 8 << 20,
                      max_share: float = MAX_SHARE) -> tuple[SeedIndex | None, str]:
        """The index of ``seeds`` at ``path`` (built when missing, damaged or of other seeds), or
        None when it would hold more than ``max_share`` of the nodes or edges; and what was done,
        for the log."""
        nodes = np.unique(np.asarray(seeds, dtype=np.int64))
        digest = _digest(nodes, sweep)
        got = cls._open(path, digest, staging)
        if got is not None:
            return got, "read from its index"
        if not worth_building(nodes.shape[0], sweep.num_nodes, max_share):
            return None, f"swept over the topology (the seeds are more than {max_share:.1%} of the nodes: no index)"
        if path.exists() and not (path / INDEX_JSON).is_file():  # not an index gnn-ooc wrote: left alone
            return None, f"swept over the topology ({path} is not a seeds' index: left as it is)"
        with ExitStack() as stack:
            try:  # a folder of our plan with a name of ours: replaced whole (Staging, kind None)
                stage = stack.enter_context(Staging(path, what="gnn-ooc sample"))
            except GnnOocError:  # another planner of this plan is building it now: it only saves time
                return None, "swept over the topology (another planner is building the seeds' index)"
            start, end = sweep.offsets(nodes)
            edges = int((end - start).sum())
            if edges > max_share * sweep.num_edges:
                return None, (f"swept over the topology (the seeds' {edges:,} in-edges are more than "
                              f"{max_share:.1%} of the graph's: no index)")
            try:
                _write(stage.path, sweep, nodes, start, end, edges, digest, staging)
                stage.publish()
            except OSError as e:  # a full disk, or another planner published first
                index = cls._open(path, digest, staging)
                if index is not None:
                    return index, "read from its index (built by another planner)"
                return None, f"swept over the topology (the seeds' index could not be written: {e})"
        index = cls._open(path, digest, staging)
        if index is None:  # replaced by another planner between publishing and opening
            return None, "swept over the topology (the seeds' index changed while it was opened)"
        return index, f"read from an index of the seeds' {edges:,} in-edges (built now, one sweep)"

    @classmethod
    def _open(cls, path: Path, digest: str, block: int = 8 << 20) -> SeedIndex | None:
        """The index at ``path`` when it is of these seeds and every file checks out (read in blocks
        of ``block`` bytes, the budget's writer staging), else None."""
        try:
            meta = json.loads((path / INDEX_JSON).read_text())
            if meta.get("format") != FORMAT or meta.get("version") != VERSION or meta.get("digest") != digest:
                return None
            for entry in meta["files"].values():
                file = path / entry["name"]
                if file.stat().st_size != entry["size"] or file_checksum(file, block) != entry["checksum"]:
                    return None
            return cls(path, meta)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def check(path: Path) -> bool:
        """Whether the index at ``path`` is whole: every file of its ``first-hop.json`` with its size and checksum."""
        try:
            digest = json.loads((path / INDEX_JSON).read_text())["digest"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return SeedIndex._open(path, digest) is not None


def _digest(nodes: np.ndarray, sweep: SweepSampler) -> str:
    """What the index depends on: the seeds, the topology's size, whether it is weighted."""
    h = hashlib.sha256(memoryview(np.ascontiguousarray(nodes)).cast("B"))  # type: ignore[arg-type]
    h.update(f"{sweep.num_nodes}:{sweep.num_edges}:{sweep.indices.dtype}:{sweep.weights is not None}".encode())
    return h.hexdigest()[:32]


def _write(out: Path, sweep: SweepSampler, nodes: np.ndarray, start: np.ndarray, end: np.ndarray, edges: int,
           digest: str, staging: int) -> None:
    deg = end - start
    local = np.zeros(nodes.shape[0] + 1, np.int64)
    np.cumsum(deg, out=local[1:])
    entries: dict[str, FileEntry] = {
        "nodes": write_array(out / "nodes.npy", nodes, root=out, staging=staging),
        "indptr": write_array(out / "indptr.npy", local, root=out, staging=staging),
        "starts": write_array(out / "starts.npy", start, root=out, staging=staging),
    }
    del local
    weighted = sweep.weights is not None
    writers = [NpyWriter(out / "indices.npy", sweep.indices.dtype, (edges,), root=out, staging=staging)]
    if weighted:
        writers.append(NpyWriter(out / "weights.npy", sweep.weights.dtype, (edges,), root=out, staging=staging))
    try:
        for (i0, i1, lo, _hi), bufs in sweep.ranges(sweep.topology, start, deg, np.zeros(deg.shape[0], np.int64)):
            first, count = start[i0:i1] - lo, deg[i0:i1]
            for w, buf in zip(writers, bufs):
                ranges = np.empty(int(count.sum()), buf.dtype)  # the window's ranges, back to back
                _copy_ranges(buf, first, count, ranges)
                w.write(ranges)
        for name, w in zip(("indices", "weights"), writers):
            entries[name] = w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    meta = {"format": FORMAT, "version": VERSION, "digest": digest, "nodes": int(nodes.shape[0]), "edges": edges,
            "files": {k: asdict(v) for k, v in entries.items()}}
    write_bytes_entry(out / INDEX_JSON, out, json.dumps(meta, indent=2).encode())
    sweep.stats.sweeps += 1


@njit(cache=True, nogil=True)
def _copy_ranges(buf: np.ndarray, first: np.ndarray, count: np.ndarray, out: np.ndarray) -> None:
    """``out = concat(buf[f : f + c] for f, c in zip(first, count))``."""
    at = 0
    for i in range(first.shape[0]):
        f, c = first[i], count[i]
        out[at : at + c] = buf[f : f + c]
        at += c
