"""Offline epoch plans: every epoch's shuffled batches sampled ahead and stored compactly on disk.

A plan lives in ``DATASET/plans/<name>/``::

    plan.json                  format, version, the dataset's identity, the sampler's settings, batching
    epoch-000003/epoch.json    files with sizes and CRC-32, counts, timings
    epoch-000003/index.npy     int64 [B+1, 3 + (L+1) + L]: node, edge and fan-in offsets of each batch
                               (row B: the ends), then its per-hop node counts (seeds first) and
                               per-hop edge counts
    epoch-000003/nodes.npy     global ids of every batch's nodes, seeds first (dataset index dtype)
    epoch-000003/rows.npy      int32 local source id of every sampled edge
    epoch-000003/fanin.npy     int32 edges into each expanded node (the destinations: ``col`` is
                               ``repeat(arange(n_expanded), fanin)``, so it is not stored)
    epoch-000003/edge_ids.npy  int64 global edge ids                             (when asked for)
    epoch-000003/access.npy    how often each node is in a batch this epoch (smallest uint that fits)
    totals-000004/             access.npy (uint32 [N]) summed over the epochs listed in epochs.json

Batch ``b`` of epoch ``e`` is the sampler's output for the ``b``-th slice of the split shuffled
by ``(seed, e)``, under ``SampleKey(seed, e, b)``: fresh samples every epoch, reproducible one by
one. Every epoch folder is written under a lock and renamed into place; totals are versioned
folders, so a crash never leaves a half epoch or double-counted totals.

Example:
    >>> plan = plan_epochs("data/cora", NeighborSampler(ds, [10, 5]), epochs=range(2))   # doctest: +SKIP
    >>> for sub in plan.epoch(0):                                                       # doctest: +SKIP
    ...     sub.blocks
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from gnn_ooc.errors import ChecksumError, GnnOocError, MemoryBudgetError
from gnn_ooc.graphstore.format.dataset import Dataset, check_file_size
from gnn_ooc.graphstore.format.npyfile import (
    Behind,
    NpyWriter,
    WriteBehind,
    file_checksum,
    write_array,
    write_bytes_entry,
)
from gnn_ooc.graphstore.io.atomic import LockedDir, Staging, _fsync_dir, remove_dir, remove_stale
from gnn_ooc.graphstore.io.owned import PLAN, check_name
from gnn_ooc.memory import allocator_slack
from gnn_ooc.progress import bar
from gnn_ooc.sampler.base import SampledSubgraph, SampleKey, Sampler
from gnn_ooc.sampler.kernels import count_nodes
from gnn_ooc.units import format_size

PLAN_FORMAT = "gnn-ooc-plan"
PLAN_VERSION = 1
PLAN_JSON = "plan.json"
WRITE_BEHIND = 1  # batches of a sweep being written while the next is assembled
#: Bytes per seed while its first-hop index is built: ids, offsets, degrees, the index's own offsets,
#: the windows' bounds and their table (sampler/seed_index.py)
SEED_INDEX_BYTES = 96
FIRST_HOP = "first-hop"  # the seeds' in-edges (sampler/seed_index.py)
EPOCH_JSON = "epoch.json"
WRITER_STAGING = 1 << 20  # per output file (4 files): 1 MiB O_DIRECT writes already run at disk speed


def writer_staging(budget: int) -> int:
    """Staging per plan file: 1 MiB, less under a small budget (four files share a 16th of it)."""
    return max(64 << 10, min(WRITER_STAGING, budget // 64 // (64 << 10) * (64 << 10)))
TOPOLOGY_PATHS = ("auto", "memory", "external")
_EPOCH_RE = re.compile(r"^epoch-(\d{6})$")
_TOTALS_RE = re.compile(r"^totals-(\d{6})$")

Progress = Callable[[str], None]


class PlanError(GnnOocError):
    """A plan is missing, corrupt, or does not belong to this dataset or sampler."""


@dataclass(frozen=True)
class PlanSpec:
    """How batches are formed; the defaults here are the only defaults.

    Example:
        >>> PlanSpec(batch_size=512).batch_size
        512
    """

    name: str = "default"
    batch_size: int = 1024
    split: str = "train"
    seed: int = 0
    drop_last: bool = False
    threads: int | None = None
    memory_budget: int = 1 << 30
    #: how planning reads the topology: ``memory`` (node by node, through the page cache),
    #: ``external`` (groups of batches, one ascending sweep per hop), ``auto`` (external when
    #: the topology is larger than the memory left for the page cache; the log says which)
    topology: str = "auto"

    def __post_init__(self) -> None:
        check_name(self.name, "plan")
        if self.topology not in TOPOLOGY_PATHS:
            raise PlanError(f"topology must be one of {', '.join(TOPOLOGY_PATHS)}, got {self.topology!r}")
        if self.batch_size < 1 or self.seed < 0 or (self.threads is not None and self.threads < 1):
            raise PlanError(f"batch size and threads must be >= 1 and the seed >= 0, got {self.batch_size}, "
                            f"{self.threads}, {self.seed}")

    def batching(self) -> dict[str, Any]:
        """The settings that shape the batches (a plan refuses to grow with other ones)."""
        return {"batch_size": self.batch_size, "split": self.split, "seed": self.seed, "drop_last": self.drop_last}


def dataset_identity(ds: Dataset) -> str:
    """A digest of what a plan depends on: node count and the topology and split files' checksums."""
    keys = sorted(k for k in ds.manifest.files if k in ("indptr", "indices") or k.startswith("split/"))
    items = [f"{k}:{ds.manifest.files[k].size}:{ds.manifest.files[k].checksum}" for k in keys]
    return hashlib.sha256("\n".join([str(ds.num_nodes), *items]).encode()).hexdigest()[:32]


def epoch_order(seeds: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The shuffled seed order of one epoch (a function of seed and epoch only)."""
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(seeds)


# --- reading ---------------------------------------------------------------------------------------
class EpochPlan:
    """One planned epoch: ``len`` batches, each read back as a ``SampledSubgraph`` from memory maps."""

    def __init__(self, path: Path, epoch: int, num_layers: int) -> None:
        self.path = path
        self.epoch = epoch
        self.num_layers = num_layers
        meta = _read_json(path / EPOCH_JSON)
        self.meta = meta
        try:
            for entry in meta["files"].values():
                _check_size(path / entry["name"], entry["size"])
            self.index = np.load(path / "index.npy", mmap_mode="r")
            self._nodes = np.load(path / "nodes.npy", mmap_mode="r")
            self._rows = np.load(path / "rows.npy", mmap_mode="r")
            self._fanin = np.load(path / "fanin.npy", mmap_mode="r")
            self._edges = np.load(path / "edge_ids.npy", mmap_mode="r") if "edge_ids" in meta["files"] else None
        except (ValueError, KeyError, TypeError, OSError) as e:  # a damaged header or epoch.json
            raise PlanError(f"{path}: damaged ({type(e).__name__}: {e}); plan the epoch again "
                            "(gnn-ooc sample reuses only epochs that check out)") from None

    def __len__(self) -> int:
        return int(self.index.shape[0]) - 1

    def __iter__(self) -> Iterator[SampledSubgraph]:
        for b in range(len(self)):
            yield self.batch(b)

    def batch(self, b: int) -> SampledSubgraph:
        if not 0 <= b < len(self):
            raise IndexError(f"{self.path}: batch {b} out of range (the epoch has {len(self)})")
        lo, hi = self.index[b], self.index[b + 1]
        hops = self.num_layers
        hop_nodes = tuple(int(x) for x in lo[3 : 3 + hops + 1])
        hop_edges = tuple(int(x) for x in lo[4 + hops :])
        # copies, not views of the read-only maps: a plan's batch behaves like an online one
        fanin = np.array(self._fanin[lo[2] : hi[2]], dtype=np.int64)
        col = np.repeat(np.arange(fanin.shape[0], dtype=np.int64), fanin)
        edge = None if self._edges is None else np.array(self._edges[lo[1] : hi[1]], dtype=np.int64)
        return SampledSubgraph(
            node=np.array(self._nodes[lo[0] : hi[0]], dtype=np.int64),
            row=np.array(self._rows[lo[1] : hi[1]], dtype=np.int64),
            col=col, num_sampled_nodes=hop_nodes, num_sampled_edges=hop_edges, edge=edge,
        )

    def nodes(self, b: int) -> np.ndarray:
        """Batch ``b``'s node ids (seeds first) without reading its edges."""
        if not 0 <= b < len(self):
            raise IndexError(f"{self.path}: batch {b} out of range (the epoch has {len(self)})")
        return np.array(self._nodes[self.index[b, 0] : self.index[b + 1, 0]], dtype=np.int64)

    def seeds(self, b: int) -> np.ndarray:
        """Batch ``b``'s seed ids without reading its edges."""
        if not 0 <= b < len(self):
            raise IndexError(f"{self.path}: batch {b} out of range (the epoch has {len(self)})")
        start, count = int(self.index[b, 0]), int(self.index[b, 3])
        return np.asarray(self._nodes[start : start + count], dtype=np.int64)

    def access_counts(self) -> np.ndarray:
        """How many batches of this epoch hold each node (memory-mapped, [N])."""
        return np.load(self.path / "access.npy", mmap_mode="r")

    def verify(self) -> None:
        """Recompute every file's checksum; raises ``PlanError`` naming the first corrupt one."""
        for entry in self.meta["files"].values():
            path = self.path / entry["name"]
            _check_size(path, entry["size"])
            if file_checksum(path) != entry["checksum"]:
                raise PlanError(f"{path}: checksum differs from {self.path / EPOCH_JSON}: the planned epoch is "
                                "damaged (gnn-ooc clean removes it; it is planned again when needed)")


class Plan:
    """A plan folder. ``Plan.open`` checks it belongs to the dataset (and, if given, the sampler)."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta

    @staticmethod
    def path_for(dataset: Dataset | str | os.PathLike[str], name: str) -> Path:
        root = dataset.path if isinstance(dataset, Dataset) else Path(dataset)
        return root / "plans" / check_name(name, "plan")

    @classmethod
    def open(cls, dataset: Dataset | str | os.PathLike[str], name: str = "default",
             sampler: Sampler | None = None) -> Plan:
        ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        path = cls.path_for(ds, name)
        if not (path / PLAN_JSON).is_file():
            raise PlanError(f"{path}: no plan here (run gnn-ooc sample {ds.path} --name {name})")
        meta = _read_json(path / PLAN_JSON)
        if meta.get("format") != PLAN_FORMAT or meta.get("version") != PLAN_VERSION:
            raise PlanError(f"{path / PLAN_JSON}: not a version-{PLAN_VERSION} {PLAN_FORMAT}; sample it again")
        plan = cls(path, meta)
        plan.check_dataset(ds)
        if sampler is not None:
            plan.check_sampler(sampler)
        return plan

    def check_dataset(self, ds: Dataset) -> None:
        ident = dataset_identity(ds)
        if self.meta["dataset"]["identity"] != ident:
            raise PlanError(
                f"{self.path}: planned for dataset {self.meta['dataset']['path']} (identity "
                f"{self.meta['dataset']['identity']}), not {ds.path} (identity {ident}); sample it again"
            )

    def check_sampler(self, sampler: Sampler) -> None:
        want = _jsonable(sampler.settings())
        if self.meta["sampler"] != want:
            raise PlanError(f"{self.path}: planned with sampler {self.meta['sampler']}, not {want}")

    @property
    def num_layers(self) -> int:
        return int(self.meta["num_layers"])

    @property
    def num_batches(self) -> int:
        return int(self.meta["num_batches"])

    def epochs(self) -> list[int]:
        """The epochs on disk now, in order."""
        return sorted(int(m.group(1)) for p in self.path.iterdir() if (m := _EPOCH_RE.match(p.name)))

    def epoch(self, e: int) -> EpochPlan:
        path = self.path / _epoch_dir(e)
        if not path.is_dir():
            raise PlanError(f"{path}: epoch {e} is not planned (on disk: {self.epochs()})")
        return EpochPlan(path, e, self.num_layers)

    def totals(self) -> tuple[list[int], np.ndarray]:
        """The epochs counted so far and the summed per-node access counts (uint32 [N])."""
        path = _latest_totals(self.path)
        if path is None:
            raise PlanError(f"{self.path}: no access totals yet")
        return _read_json(path / "epochs.json")["epochs"], np.load(path / "access.npy", mmap_mode="r")

    def release(self, e: int) -> None:
        """Delete epoch ``e`` from disk (its access counts stay in the totals)."""
        remove_dir(self.path / _epoch_dir(e), self.path)

    def verify(self) -> None:
        for e in self.epochs():
            self.epoch(e).verify()
        if self.first_hop_path().is_dir():
            self.verify_first_hop()

    def first_hop_path(self) -> Path:
        return self.path / FIRST_HOP

    def verify_first_hop(self) -> None:
        """Raises ``PlanError`` when the seeds' first-hop index (``sampler/seed_index.py``) is damaged."""
        from gnn_ooc.sampler.seed_index import SeedIndex

        if not SeedIndex.check(self.first_hop_path()):
            raise PlanError(f"{self.first_hop_path()}: the seeds' first-hop index is damaged (planning rebuilds it "
                            "when it next sweeps, or delete that folder)")


# --- writing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpochStats:
    """What planning one epoch did."""

    epoch: int
    batches: int
    nodes: int
    edges: int
    bytes_written: int
    sample_seconds: float
    seconds: float
    sweeps: int = 0  # hops swept over the topology (external planning)
    bytes_read: int = 0  # topology bytes those sweeps read

    @property
    def edges_per_second(self) -> float:
        return self.edges / self.seconds if self.seconds else 0.0


class Planner:
    """Writes epochs of one plan; ``plan_epoch`` is atomic and skips an epoch already on disk.

    Example:
        >>> planner = Planner(ds, NeighborSampler(ds, [15, 10, 5]), PlanSpec(name="p"))  # doctest: +SKIP
        >>> planner.plan_epoch(0).edges_per_second                                           # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset | str | os.PathLike[str], sampler: Sampler, spec: PlanSpec,
                 *, force: bool = False, progress: Progress | None = None, bars: bool = False) -> None:
        self.ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        self.sampler = sampler
        self.spec = spec
        self.say = progress or (lambda _msg: None)
        self.bars = bars  # a progress bar per planned epoch (on a terminal)
        self.seeds = np.asarray(self.ds.split(spec.split), dtype=np.int64)
        if self.seeds.size == 0:
            raise PlanError(f"{self.ds.path}: split {spec.split!r} is empty; nothing to plan")
        self.path = Plan.path_for(self.ds, spec.name)
        # an epoch's per-node counts, in the narrowest type that holds its batch count (uint16 for
        # up to 65,535 batches: half of uint32's memory, which left 1 B edges' draws spilling at 2 GiB)
        self._count_type = np.dtype(_count_dtype(max(1, self.num_batches)))
        self._dense_counts = self._counts_in_memory(spec.memory_budget)
        self._chunk_nodes = max(1 << 16, spec.memory_budget // 32)  # uint32 counts, a few copies
        self.sweep, self.topology_reason = self._choose_topology()
        if self.sweep is not None and spec.topology == "auto":
            self.sweep.drop_cache = True  # chosen because the topology does not fit the page cache
        self.group, self.results_bytes = self._group_size() if self.sweep is not None else (0, None)
        self.threads = self._fit_threads()
        self._first_hop_how: str | None = None  # how the first hops are read, once decided
        self._check_budget()  # before anything is written (or, with force, deleted)
        self.plan = self._create(force)
        self.say(f"planning reads the topology {self.topology_reason}"
                 + (f"; {self.group} batches per group" if self.sweep is not None else ""))
        remove_stale(self.path, ".epoch-", "gnn-ooc sample")  # killed runs' partial epochs (locks free)
        for gone in self.path.glob(".*.removed-*"):
            shutil.rmtree(gone, ignore_errors=True)

    def _choose_topology(self) -> tuple[Any, str]:
        """The sweeping sampler when planning reads the topology externally (else None), and why."""
        want = self.spec.topology
        sweep = self.sampler.sweeper(window_bytes=self._window_bytes()) if want != "memory" else None
        if want == "external" and sweep is None:
            raise PlanError(f"{type(self.sampler).__name__} cannot sample in sweeps (its sweeper() hook returns "
                            "None); plan with --topology memory or auto")
        if sweep is None:
            why = "asked for" if want == "memory" else f"{type(self.sampler).__name__} samples batch by batch only"
            return None, f"node by node through the page cache ({why})"
        size = self._topology_bytes()
        if want == "external":
            return sweep, f"in sweeps over groups of batches (asked for; the topology is {format_size(size)})"
        from gnn_ooc.memory import available_memory

        # half the room: the page cache also streams what the run reads besides (features being
        # packed, plans, segments), and random reads need the topology to stay cached whole
        room = (available_memory() - self.spec.memory_budget) // 2
        if size <= room:
            return None, (f"node by node through the page cache: the topology ({format_size(size)}) fits in half "
                          f"the {format_size(max(0, 2 * room))} of memory left besides the budget")
        return sweep, (f"in sweeps over groups of batches: the topology ({format_size(size)}) is larger than half "
                       f"the {format_size(max(0, 2 * room))} of memory left for the page cache besides the budget")

    def _window_bytes(self, budget: int | None = None) -> int:
        from gnn_ooc.sampler.sweep import WINDOW_BYTES

        budget = self.spec.memory_budget if budget is None else budget
        return max(256 << 10, min(WINDOW_BYTES, budget // 16))

    def _topology_bytes(self) -> int:
        weights = getattr(self.sampler, "weights", None)
        return int(self.ds.indptr.nbytes + self.ds.indices.nbytes + (0 if weights is None else weights.nbytes))

    def _group_size(self) -> tuple[int, int | None]:
        """Batches per sweep group and the bytes of draws put back in order at a time (None: all of a
        hop's, nothing spilled): the whole epoch when the budget holds it, else the largest group
        whose state fits beside an eighth of what is left (at least four batches) for its draws,
        which are spilled beyond that: a spill is one sequential write and read of the draws,
        another group another sweep of the whole topology."""
        state = self.sweep.bytes_per_batch(self.spec.batch_size)
        draws = self.sweep.result_bytes(self.spec.batch_size)
        avail = self.spec.memory_budget - self._sweep_fixed(self.spec.memory_budget)
        if self.num_batches * (state + draws) <= avail:
            return max(1, self.num_batches), None
        results = max(4 * draws, avail // 8)  # spilling costs less than another group's sweeps
        group = (avail - results) // max(1, state)
        if not self._sweep_fits(self.spec.memory_budget):  # group < 1
            least = self._least_sweep_budget()
            raise MemoryBudgetError(
                f"planning in sweeps needs about {format_size(least)} (read windows "
                f"{format_size(self.sweep.fixed_bytes(self._window_bytes(least)))}, one batch and four batches' draws "
                f"{format_size(state + 4 * draws)}, allocator slack {format_size(allocator_slack(least))}, the rest "
                f"{format_size(self._sweep_fixed(least) - self.sweep.fixed_bytes(self._window_bytes(least)) - allocator_slack(least))}); "
                f"the memory budget is {format_size(self.spec.memory_budget)}: raise --memory-budget to at least "
                f"{format_size(least)}, or lower --batch-size or --fanouts")
        if group >= self.num_batches:  # one group: its draws get all that its state leaves (fewer spills)
            group, results = self.num_batches, avail - self.num_batches * state
        return int(max(1, group)), int(results)

    def _sweep_fits(self, budget: int) -> bool:
        """Whether ``budget`` holds a group of at least one batch beside its draws (at least four
        batches' worth or an eighth of what is left), or the whole epoch with its draws."""
        state = self.sweep.bytes_per_batch(self.spec.batch_size)
        draws = self.sweep.result_bytes(self.spec.batch_size)
        avail = budget - self._sweep_fixed(budget)
        return self.num_batches * (state + draws) <= avail or avail - max(4 * draws, avail // 8) >= state

    def _sweep_fixed(self, budget: int) -> int:
        """What sweeping at ``budget`` holds besides the group's state and draws (it grows with the
        budget: read windows, writers, allocator slack, in-memory access counts)."""
        draws = self.sweep.result_bytes(self.spec.batch_size)
        return (sum(self._fixed_estimate(budget).values()) + self.sweep.fixed_bytes(self._window_bytes(budget))
                + WRITE_BEHIND * draws)

    def _least_sweep_budget(self) -> int:
        """The least whole-MiB budget that sweeps (what it must hold grows with it: read windows,
        writers, slack), by bisection: the test is monotone in the budget."""
        lo = self.spec.memory_budget >> 20  # refused
        hi = max(1, lo)
        while not self._sweep_fits(hi << 20):
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._sweep_fits(mid << 20) else (mid, hi)
        return hi << 20

    def warm_up(self) -> None:
        """Sample one seed: loads the sampler's compiled kernels (memory that is not the budget's)."""
        self.sampler.sample(self.seeds[:1], SampleKey(self.spec.seed, 0, 0))
        if self.sweep is not None:
            list(self.sweep.sample_group([self.seeds[:1]], [SampleKey(self.spec.seed, 0, 0)]))
        if self.threads > 1:
            self.sampler.serial().sample(self.seeds[:1], SampleKey(self.spec.seed, 0, 0))

    @property
    def num_batches(self) -> int:
        full, rest = divmod(self.seeds.size, self.spec.batch_size)
        return full + (1 if rest and not self.spec.drop_last else 0)

    def _fit_threads(self) -> int:
        """``spec.threads``, else as many cores as the budget's batches in flight allow."""
        if self.sweep is not None:  # the sweep's kernels are parallel over the group's frontier
            return self.spec.threads or max(1, os.cpu_count() or 1)
        if not self.sampler.thread_safe:
            return 1
        if self.spec.threads is not None:
            return self.spec.threads
        threads = max(1, os.cpu_count() or 1)
        while threads > 1 and sum(self.memory_estimate(threads).values()) > self.spec.memory_budget:
            threads -= 1
        return threads

    def memory_estimate(self, threads: int | None = None) -> dict[str, int]:
        """Bytes planning holds besides the memory-mapped topology (which the page cache manages)."""
        threads = threads or self.threads
        if self.sweep is not None:
            bs = self.spec.batch_size
            draws = self.results_bytes if self.results_bytes is not None else self.group * self.sweep.result_bytes(bs)
            return {**self._fixed_estimate(), "read windows": self.sweep.fixed_bytes(),
                    f"groups of {self.group} batches": self.group * self.sweep.bytes_per_batch(bs),
                    "draws put back in order": draws,
                    "batches being written": WRITE_BEHIND * self.sweep.result_bytes(bs)}
        per_edge = 48  # position, neighbour, row, col and copies while a batch is built and written
        return {**self._fixed_estimate(), "batches in flight": (2 * threads + 3) * per_edge * self._edges_bound()}

    def _counts_in_memory(self, budget: int) -> bool:
        """Whether an epoch's access counts are kept in memory (else counted in a pass per id range
        over the epoch's nodes: at 1 B edges four passes of 74 MB, far less than the sweep that
        the counts' memory would cost a smaller group)."""
        return self._count_type.itemsize * self.ds.num_nodes <= budget // 8

    def _fixed_estimate(self, budget: int | None = None) -> dict[str, int]:
        budget = self.spec.memory_budget if budget is None else budget
        counts = self._count_type.itemsize * self.ds.num_nodes if self._counts_in_memory(budget) else 0
        return {
            "epoch order": 16 * int(self.seeds.size),
            # the seeds' ids, offsets and window bounds while their first-hop index is built
            "seed index": SEED_INDEX_BYTES * int(self.seeds.size) if self._builds_index() else 0,
            "access counts": counts,
            "writers": 4 * writer_staging(budget),
            "allocator slack": allocator_slack(budget),
        }

    def _builds_index(self) -> bool:
        from gnn_ooc.sampler.seed_index import worth_building

        return self.sweep is not None and worth_building(int(self.seeds.size), self.ds.num_nodes)

    def _edges_bound(self) -> int:
        """A bound on one batch's edges: from the fan-outs (-1 counts as 4x the mean degree), else
        the sampler's own ``max_edges`` hook, else the mean degree per node and layer."""
        mean = max(1.0, self.ds.num_edges / max(1, self.ds.num_nodes))
        fanouts = self.sampler.settings().get("fanouts")
        if fanouts is None:
            bound = self.sampler.max_edges(self.spec.batch_size, mean)
            if bound is None:
                bound = self.spec.batch_size * mean * (self.sampler.num_layers or 1)
            return int(min(bound, self.ds.num_edges))
        frontier, total = float(self.spec.batch_size), 0.0
        for f in fanouts:
            frontier *= 4 * mean if f < 0 else f
            total += frontier
        return int(min(total, self.ds.num_edges))

    def _check_budget(self) -> None:
        parts = self.memory_estimate()
        need = sum(parts.values())
        if need > self.spec.memory_budget:
            detail = ", ".join(f"{k} {format_size(v)}" for k, v in parts.items())
            raise MemoryBudgetError(
                f"planning needs about {format_size(need)} ({detail}); the memory budget is "
                f"{format_size(self.spec.memory_budget)}: raise --memory-budget, or lower --batch-size or --threads"
            )

    def _meta(self) -> dict[str, Any]:
        from gnn_ooc import __version__

        return {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "created_by": f"gnn-ooc {__version__}",
            "dataset": {"identity": dataset_identity(self.ds), "fingerprint": self.ds.fingerprint,
                        "path": str(self.ds.path.absolute()), "num_nodes": self.ds.num_nodes},
            "sampler": _jsonable(self.sampler.settings()), "batching": self.spec.batching(),
            "num_layers": self._num_layers(), "num_batches": self.num_batches,
            "num_seeds": int(self.seeds.size), "node_dtype": str(self.ds.indices.dtype),
        }

    def _num_layers(self) -> int:
        layers = self.sampler.num_layers
        if layers is None:
            raise PlanError(f"{type(self.sampler).__name__}.num_layers is None; a planned sampler needs a fixed hop count")
        return int(layers)

    def _create(self, force: bool) -> Plan:
        meta = self._meta()
        if (self.path / PLAN_JSON).is_file() and not force:
            old = Plan(self.path, _read_json(self.path / PLAN_JSON))
            for key in ("dataset", "sampler", "batching", "num_layers", "format", "version"):
                if _cmp(old.meta.get(key)) != _cmp(meta[key]):
                    raise PlanError(
                        f"{self.path}: exists with other {key} ({old.meta.get(key)} vs {meta[key]}); "
                        "use another --name or --force to replace it"
                    )
            return old
        # replaces only a plan (plan.json): a folder of the user's under plans/ is refused
        with Staging(self.path, what="gnn-ooc sample", kind=PLAN, flag="--name") as stage:
            write_bytes_entry(stage.path / PLAN_JSON, stage.path, json.dumps(meta, indent=2).encode())
            stage.publish()
        return Plan(self.path, meta)

    def plan_epoch(self, epoch: int) -> EpochStats | None:
        """Sample and write epoch ``epoch`` unless it is on disk already and checks out (a damaged
        one is planned again: the batches are a function of the seed, so the same bytes come back);
        returns what it did, None when the epoch was kept."""
        target = self.path / _epoch_dir(epoch)
        remove_stale(self.path, f".{_epoch_dir(epoch)}.partial-", "gnn-ooc sample")
        if target.is_dir():
            try:
                EpochPlan(target, epoch, self._num_layers()).verify()
            except PlanError as e:
                self.say(f"epoch {epoch} on disk is damaged ({e}); planning it again")
                remove_dir(target, self.path)
            else:
                self._count(epoch)
                return None
        stage = LockedDir(self.path / f".{_epoch_dir(epoch)}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            stats = self._write_epoch(epoch, stage.path)
            try:
                os.rename(stage.path, target)
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(stage.path, ignore_errors=True)  # another planner published it first
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(stage.path, ignore_errors=True)
            raise
        finally:
            stage.release()
        self._count(epoch)
        self.say(f"epoch {epoch}: {stats.batches} batches, {stats.edges:,} edges, "
                 f"{stats.edges_per_second / 1e6:.1f} M edges/s, {stats.bytes_written / 2**20:.0f} MiB"
                 + ("" if self.sweep is None else f"; {stats.sweeps} sweeps read {format_size(stats.bytes_read)}"))
        return stats

    def _topology_meta(self, before: Any) -> dict[str, Any]:
        if self.sweep is None:
            return {"path": "memory"}
        st = self.sweep.stats
        return {"path": "external", "group_batches": self.group, "sweeps": st.sweeps - before.sweeps,
                "windows": st.windows - before.windows, "bytes_read": st.bytes_read - before.bytes_read,
                "spilled_bytes": st.spilled_bytes - before.spilled_bytes}

    def _write_epoch(self, epoch: int, out: Path) -> EpochStats:
        t0 = time.perf_counter()
        before = dataclasses.replace(self.sweep.stats) if self.sweep is not None else None
        writer = _EpochWriter(out, self.ds, self._num_layers(), self.sampler.settings().get("return_edge_ids", False),
                              self._count_type if self._dense_counts else None, self._chunk_nodes,
                              writer_staging(self.spec.memory_budget))
        # after a sweep, batches come out faster than one thread writes them: writing overlaps
        # assembling the next (in the batch-by-batch path the sampling threads overlap it already)
        behind = Behind(writer.add, WRITE_BEHIND if self.sweep is not None else 0, name="gnn-ooc-plan-write")
        try:
            sample_s = 0.0
            with bar(self.num_batches, f"planning epoch {epoch}", enabled=self.bars, unit="batch") as shown:
                for sub, dt in self._batches(epoch, out / "scratch"):
                    behind(sub)
                    sample_s += dt
                    shown.update(1)
                behind.drain()
            shutil.rmtree(out / "scratch", ignore_errors=True)  # the sweeps' spill files, if any
            meta = writer.close(epoch)
        except BaseException:
            behind.drain(raising=False)
            writer.abort()
            raise
        meta.update(sample_seconds=sample_s, seconds=time.perf_counter() - t0, topology=self._topology_meta(before))
        write_bytes_entry(out / EPOCH_JSON, out, json.dumps(meta, indent=2).encode())
        topo = meta["topology"]
        return EpochStats(epoch, meta["batches"], meta["nodes"], meta["edges"], meta["bytes"],
                          sample_s, meta["seconds"], topo.get("sweeps", 0), topo.get("bytes_read", 0))

    def _batches(self, epoch: int, scratch: Path) -> Iterator[tuple[SampledSubgraph, float]]:
        """The epoch's batches in order, sampled ``threads`` at a time (serial kernels per thread),
        or ``group`` at a time in sweeps over the topology."""
        if self.sweep is not None:
            yield from self._swept_batches(epoch, scratch)
            return
        order = epoch_order(self.seeds, self.spec.seed, epoch)
        bs, nb = self.spec.batch_size, self.num_batches
        threads = self.threads
        sampler = self.sampler.serial() if threads > 1 else self.sampler

        def one(b: int) -> tuple[SampledSubgraph, float]:
            t = time.perf_counter()
            sub = sampler.sample(order[b * bs : (b + 1) * bs], SampleKey(self.spec.seed, epoch, b))
            return sub, time.perf_counter() - t

        if threads == 1:
            yield from (one(b) for b in range(nb))
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="gnn-ooc-sample") as pool:
            pending: deque[Future[tuple[SampledSubgraph, float]]] = deque()
            for b in range(nb):
                pending.append(pool.submit(one, b))
                if len(pending) > 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _swept_batches(self, epoch: int, scratch: Path) -> Iterator[tuple[SampledSubgraph, float]]:
        from gnn_ooc.sampler.kernels import set_threads

        self._first_hop()
        order = epoch_order(self.seeds, self.spec.seed, epoch)
        bs, nb, group = self.spec.batch_size, self.num_batches, max(1, self.group)
        for g0 in range(0, nb, group):
            batches = range(g0, min(nb, g0 + group))
            t = time.perf_counter()
            prev = set_threads(self.threads)
            try:
                subs = self.sweep.sample_group([order[b * bs : (b + 1) * bs] for b in batches],
                                               [SampleKey(self.spec.seed, epoch, b) for b in batches],
                                               results_bytes=self.results_bytes, scratch=scratch)
                for sub in subs:  # each batch as it is done, written before the next is assembled
                    dt, t = time.perf_counter() - t, time.perf_counter()
                    yield sub, dt
            finally:
                set_threads(prev)

    def _first_hop(self) -> None:
        """Read every epoch's first hop from an index of the seeds' in-edges (built by the first
        epoch, kept in the plan folder) rather than sweeping the topology for it."""
        if self._first_hop_how is not None:
            return
        from gnn_ooc.sampler.seed_index import SeedIndex

        index, self._first_hop_how = SeedIndex.open_or_build(self.path / FIRST_HOP, self.sweep, self.seeds,
                                                             staging=writer_staging(self.spec.memory_budget))
        self.sweep.first_hop = index
        self.say(f"first hops are {self._first_hop_how}")

    def _count(self, epoch: int) -> None:
        """Add the epoch's access counts to the totals (a new versioned folder; once per epoch)."""
        latest = _latest_totals(self.path)
        counted: list[int] = _read_json(latest / "epochs.json")["epochs"] if latest else []
        if epoch in counted:
            return
        seq = 0 if latest is None else int(latest.name.split("-")[1]) + 1
        added = np.load(self.path / _epoch_dir(epoch) / "access.npy", mmap_mode="r")
        previous = None if latest is None else np.load(latest / "access.npy", mmap_mode="r")
        n, chunk = self.ds.num_nodes, self._chunk_nodes
        with Staging(self.path / f"totals-{seq:06d}", what="gnn-ooc sample") as stage:
            with NpyWriter(stage.path / "access.npy", np.uint32, (n,), staging=writer_staging(self.spec.memory_budget)) as w:
                for lo in range(0, n, chunk):
                    part = added[lo : lo + chunk].astype(np.uint32)
                    if previous is not None:
                        part += previous[lo : lo + chunk]
                    w.write(part)
            write_bytes_entry(stage.path / "epochs.json", stage.path,
                              json.dumps({"epochs": sorted([*counted, epoch])}).encode())
            stage.publish()
        for old in self.path.glob("totals-*"):
            if old.name != f"totals-{seq:06d}" and _TOTALS_RE.match(old.name):
                remove_dir(old, self.path)

    def keep_latest(self, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` epochs; returns the deleted ones."""
        if keep < 1:
            raise PlanError(f"keep-epochs must be >= 1, got {keep}")
        gone = self.plan.epochs()[:-keep] if keep > 0 else []
        for e in gone:
            self.plan.release(e)
        return gone


class _EpochWriter:
    """Appends batches to an epoch's files; counts accesses in memory or in a pass afterwards."""

    def __init__(self, out: Path, ds: Dataset, layers: int, with_edges: bool, dense: np.dtype | None, chunk_nodes: int,
                 staging: int = WRITER_STAGING) -> None:
        self.out, self.layers, self.n, self.chunk_nodes = out, layers, ds.num_nodes, chunk_nodes
        self.node_dtype = ds.indices.dtype
        self.staging = st = staging
        self.nodes = NpyWriter(out / "nodes.npy", self.node_dtype, (None,), staging=st)
        self.rows = WriteBehind(NpyWriter(out / "rows.npy", np.int32, (None,), staging=st))
        self.fanin = NpyWriter(out / "fanin.npy", np.int32, (None,), staging=st)
        self.edges = WriteBehind(NpyWriter(out / "edge_ids.npy", np.int64, (None,), staging=st)) if with_edges else None
        self.index: list[np.ndarray] = [np.zeros(3 + 2 * layers + 1, np.int64)]
        self.at = np.zeros(3, np.int64)
        self.counts = np.zeros(self.n, dense) if dense is not None else None
        self.max_count_seen = 0

    def add(self, sub: SampledSubgraph) -> None:
        if sub.num_layers != self.layers:
            raise PlanError(f"the sampler returned {sub.num_layers} hops, the plan has {self.layers}")
        if self.counts is not None:
            bad = count_nodes(self.counts, sub.node)  # node ids are unique within a batch
            if bad >= 0:
                raise PlanError(f"the sampler returned node id {int(sub.node[bad])}, outside the graph's "
                                f"{self.n} nodes: fix the sampler")
        expanded = sub.num_nodes - sub.num_sampled_nodes[-1]
        row, edge = sub.row, sub.edge
        if sub.num_edges and np.any(np.diff(sub.col) < 0):
            # stored edges are grouped by destination (so ``col`` need not be stored); hops stay in order
            order = np.argsort(sub.col, kind="stable")
            row, edge = row[order], None if edge is None else edge[order]
        fanin = np.bincount(sub.col, minlength=expanded).astype(np.int32)
        self.nodes.write(sub.node.astype(self.node_dtype, copy=False))
        self.rows.write(row.astype(np.int32))
        self.fanin.write(fanin)
        if self.edges is not None:
            self.edges.write(edge if edge is not None else np.full(sub.num_edges, -1, np.int64))
        self.at += (sub.num_nodes, sub.num_edges, expanded)
        self.index.append(np.concatenate([self.at, sub.num_sampled_nodes, sub.num_sampled_edges]))

    def close(self, epoch: int) -> dict[str, Any]:
        entries = {"nodes": self.nodes.close(), "fanin": self.fanin.close()}
        self.rows.drain()
        entries["rows"] = self.rows.writer.close()
        if self.edges is not None:
            self.edges.drain()
            entries["edge_ids"] = self.edges.writer.close()
        index = _shift_counts(np.stack(self.index))
        entries["index"] = write_array(self.out / "index.npy", index, root=self.out)
        entries["access"] = _write_counts(self.out / "access.npy", self.counts, self.out / "nodes.npy", self.n,
                                          _count_dtype(len(index) - 1), self.chunk_nodes, self.staging)
        files = {k: asdict(v) for k, v in entries.items()}
        return {"epoch": epoch, "batches": len(index) - 1, "nodes": int(self.at[0]), "edges": int(self.at[1]),
                "bytes": sum(int(v.size) for v in entries.values()), "files": files}

    def abort(self) -> None:
        for w in (self.nodes, self.fanin):
            w.abort()
        for wb in (self.rows, self.edges):
            if wb is not None:
                try:
                    wb.drain()
                finally:
                    wb.writer.abort()


def _shift_counts(index: np.ndarray) -> np.ndarray:
    """Row b holds batch b's start offsets and its own counts (the appended rows hold ends)."""
    out = np.zeros_like(index)
    out[:, :3] = index[:, :3]
    out[:-1, 3:] = index[1:, 3:]
    return out


def _write_counts(path: Path, counts: np.ndarray | None, nodes_path: Path, n: int, dtype: type,
                  chunk_nodes: int, staging: int = WRITER_STAGING) -> Any:
    """Write one epoch's access counts, from memory or by id range with one pass over ``nodes.npy`` each."""
    with NpyWriter(path, dtype, (n,), root=path.parent, staging=staging) as w:
        for lo in range(0, n, chunk_nodes):
            hi = min(n, lo + chunk_nodes)
            part = counts[lo:hi] if counts is not None else _count_range(nodes_path, lo, hi, min(1 << 22, chunk_nodes))
            w.write(part.astype(dtype))
    return w.entry


def _count_range(nodes_path: Path, lo: int, hi: int, block: int) -> np.ndarray:
    nodes = np.load(nodes_path, mmap_mode="r")
    out = np.zeros(hi - lo, np.uint32)
    for s in range(0, nodes.shape[0], block):
        part = np.asarray(nodes[s : s + block])
        part = part[(part >= lo) & (part < hi)]
        out += np.bincount(part - lo, minlength=hi - lo).astype(np.uint32)
    return out


def _count_dtype(batches: int) -> type:
    for dt in (np.uint8, np.uint16, np.uint32):
        if batches <= np.iinfo(dt).max:
            return dt
    return np.uint64


# --- the Python entry point ------------------------------------------------------------------------
def plan_epochs(dataset: Dataset | str | os.PathLike[str], sampler: Sampler, epochs: Sequence[int] | int,
                spec: PlanSpec | None = None, *, keep_epochs: int | None = None, force: bool = False,
                progress: Progress | None = None) -> Plan:
    """Plan ``epochs`` (a count or a sequence of epoch numbers); returns the plan.

    Example:
        >>> plan = plan_epochs("data/cora", NeighborSampler(Dataset.open("data/cora"), [10, 5]), 3)  # doctest: +SKIP
    """
    spec = spec or PlanSpec()
    planner = Planner(dataset, sampler, spec, force=force, progress=progress)
    for e in range(epochs) if isinstance(epochs, int) else epochs:
        planner.plan_epoch(int(e))
        if keep_epochs is not None:
            planner.keep_latest(keep_epochs)
    return planner.plan


# --- helpers ---------------------------------------------------------------------------------------
def _epoch_dir(e: int) -> str:
    if e < 0:
        raise PlanError(f"epoch numbers start at 0, got {e}")
    return f"epoch-{e:06d}"


def _latest_totals(path: Path) -> Path | None:
    found = sorted(p for p in path.iterdir() if _TOTALS_RE.match(p.name) and (p / "epochs.json").is_file())
    return found[-1] if found else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise PlanError(f"{path}: expected a JSON object")
    return out


def _check_size(path: Path, size: int) -> None:
    try:
        check_file_size(path, size, EPOCH_JSON)
    except ChecksumError as e:
        raise PlanError(str(e)) from None


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d))


def _cmp(d: Any) -> Any:
    # the dataset's path may differ (moved folder); its identity may not
    if isinstance(d, dict) and "identity" in d:
        return d["identity"]
    return d
