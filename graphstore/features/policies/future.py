"""Future-aware feature caching for planned epochs (Ginex, LSM-GNN): Belady over a look-ahead window.

When an epoch's batches are known ahead (an ``EpochPlan``), the device cache need not guess.
Before batch ``t``, ``FutureAwareCache.prefetch(t)`` brings in the rows batches ``t..t+W-1``
need, evicting the row whose next use in that window is furthest; a row it evicts that the
window still needs is spilled to a victim buffer in pinned host memory. Only rows that change
tier are copied; under CUDA the copy into the device cache runs on a side stream, so
``prefetch(t + 1)`` overlaps batch ``t``'s work and ``gather`` waits for it.

The policy, exactly (``T`` batches, window ``W``, device capacity ``C``, victim capacity ``V``):

* next use ``nu_t(v)``: the first batch ``s`` in ``[t, min(t + W, T))`` holding ``v``, else infinity;
* rank ``key_t(v) = (nu_t(v), -hotness[v], v)``: sooner first, then hotter, then lower id;
* device after ``prefetch(t)``: the ``C`` best-ranked rows of (device before) | (ids of the window).
  So batch ``t``'s rows are all resident whenever it has at most ``C`` distinct ids, a row the
  window does not need is evicted only to make room for one it does, coldest first;
* victim after ``prefetch(t)``: the ``V`` best-ranked rows of (victim before) | (rows just evicted
  that the window needs), less the rows now on the device (the tiers are exclusive). Rows
  evicted with no use in the window are dropped; a victim row whose use left the window stays
  until a better-ranked row needs its slot;
* a row entering the device comes from the victim buffer when there, else from ``backing``.

``reference_belady`` is the same policy written the obvious way (sets and sorts), for tests.

Example:
    >>> import numpy as np, torch
    >>> from gnn_ooc.graphstore.features.stores import MemoryStore
    >>> backing = MemoryStore(torch.arange(10.0).reshape(5, 2))
    >>> batches = [np.array([0, 1]), np.array([2, 1]), np.array([0, 3])]
    >>> cache = FutureAwareCache(2, 2, torch.float32, "cpu", backing, batches, window=2, victim_rows=1)
    >>> cache.gather(batches[0], batch=0).tolist()           # prefetch(0), then serve from the device
    [[0.0, 1.0], [2.0, 3.0]]
    >>> cache.prefetch(1); cache.resident_ids().tolist(), cache.victim_ids().tolist()  # 0 is used at 2
    ([1, 2], [0])
    >>> cache.prefetch(2); cache.resident_ids().tolist(), cache.prefetch_stats.hits
    ([0, 3], {'victim': 1, 'memory': 4})
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Protocol

import numpy as np

from gnn_ooc.capabilities import cuda_available
from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.features.base import FeatureStore, StoreStats
from gnn_ooc.graphstore.io.rowops import move_rows, put_rows

NO_USE = int(np.iinfo(np.int64).max)  # "no use inside the window": ranks after every real batch index
_EMPTY = np.empty(0, np.int64)


class Batches(Protocol):
    """What a cache needs of an epoch: its length and each batch's node ids (a list of arrays will do)."""

    def __len__(self) -> int: ...

    def __getitem__(self, b: int) -> Any: ...


class PlanBatches:
    """The node ids of an ``EpochPlan``'s batches, read lazily (only the window is ever in memory).

    Example:
        >>> class Plan:                         # anything with len() and batch(b).node
        ...     def __len__(self): return 1
        ...     def batch(self, b): return type("Sub", (), {"node": np.array([7, 3])})()
        >>> PlanBatches(Plan())[0].tolist()
        [7, 3]
    """

    def __init__(self, plan: Any) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> np.ndarray:
        nodes = getattr(self.plan, "nodes", None)  # EpochPlan.nodes skips reading the edges
        return np.asarray(nodes(b) if callable(nodes) else self.plan.batch(b).node, dtype=np.int64)


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray, default: int) -> np.ndarray:
    """``values[i]`` where ``keys[i] == q`` (``keys`` sorted, unique), ``default`` where absent."""
    if keys.size == 0:
        return np.full(queries.shape, default, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, queries), keys.size - 1)
    return np.where(keys[pos] == queries, values[pos], default)


class NextUse:
    """Next use of ids within a look-ahead window of ``window`` batches.

    ``nu(t, ids)`` is, for each id, the first batch ``s`` in ``[t, t + window)`` that uses it, or
    ``NO_USE``; the next use strictly after batch ``t`` is ``nu.after(t, ids)`` (batches
    ``t+1..t+window``). Only the window's batches are held (each as its sorted distinct ids), so
    memory follows the window, not the epoch; stepping forward reads one new batch.

    Example:
        >>> nu = NextUse([np.array([1, 2]), np.array([2, 3]), np.array([1])], window=2)
        >>> nu(0, np.array([1, 2, 3, 4])).tolist() == [0, 0, 1, NO_USE]
        True
        >>> nu.after(0, np.array([1, 2, 3])).tolist() == [2, 1, 1]
        True
    """

    def __init__(self, batches: Batches, window: int) -> None:
        if int(window) < 1:
            raise InputError(None, f"look-ahead window {window}", expected="window >= 1")
        self.batches = batches
        self.window = int(window)
        self._lo = 0
        self._distinct: deque[np.ndarray] = deque()  # distinct ids of batches _lo, _lo + 1, ...
        self._at = -1
        self._table = (_EMPTY, _EMPTY)

    def __len__(self) -> int:
        return len(self.batches)

    def distinct(self, b: int) -> np.ndarray:
        """Batch ``b``'s distinct ids, sorted."""
        ids = np.asarray(self.batches[b])
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise InputError(None, f"batch {b} is {ids.dtype}{ids.shape}", expected="1-D integer node ids")
        return np.unique(ids.astype(np.int64, copy=False))

    def table(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Every id batches ``t..t+window-1`` use (sorted, distinct) and the first batch using it."""
        if not 0 <= t <= len(self.batches):
            raise IndexError(f"batch {t} out of range (the epoch has {len(self.batches)})")
        if t != self._at:
            self._slide(t)
            runs = list(self._distinct)
            ids = np.concatenate(runs) if runs else _EMPTY
            when = np.repeat(np.arange(self._lo, self._lo + len(runs)), [r.size for r in runs])
            # the runs are sorted, so a stable sort is a merge, and keeps the earliest batch first
            order = np.argsort(ids, kind="stable")
            ids, when = ids[order], when[order]
            first = np.ones(ids.size, dtype=bool)
            first[1:] = ids[1:] != ids[:-1]
            self._table, self._at = (ids[first], when[first]), t
        return self._table

    def _slide(self, t: int) -> None:
        """Hold exactly batches ``t..min(t + window, T) - 1``, reusing the ones already held."""
        if not self._lo <= t <= self._lo + len(self._distinct):
            self._lo, self._distinct = t, deque()
        while self._lo < t:
            self._distinct.popleft()
            self._lo += 1
        hi = min(t + self.window, len(self.batches))
        while self._lo + len(self._distinct) < hi:
            self._distinct.append(self.distinct(self._lo + len(self._distinct)))

    def __call__(self, t: int, ids: np.ndarray) -> np.ndarray:
        keys, when = self.table(t)
        return _lookup(keys, when, np.asarray(ids, dtype=np.int64), NO_USE)

    def after(self, t: int, ids: np.ndarray) -> np.ndarray:
        """First batch in ``t+1..t+window`` using each id, ``NO_USE`` where none."""
        return self(t + 1, ids)


def hotness_rank(hotness: np.ndarray) -> np.ndarray:
    """Each id's place in (hotter first, then lower id) order: one int ranks the tie-breaks.

    Example:
        >>> hotness_rank(np.array([5, 9, 5, 0])).tolist()
        [1, 0, 2, 3]
    """
    order = np.argsort(-np.asarray(hotness, dtype=np.float64), kind="stable")  # float: no uint wrap
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank


class _Slots:
    """Which id each slot of a fixed-size row buffer holds: ids kept sorted for searchsorted lookups."""

    def __init__(self, capacity: int) -> None:
        self.ids = _EMPTY
        self.slots = _EMPTY
        self.used = np.zeros(capacity, dtype=bool)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where absent."""
        return _lookup(self.ids, self.slots, ids, -1)

    def remove(self, ids: np.ndarray) -> None:
        """Free the slots of ``ids`` (all present)."""
        if ids.size:
            pos = np.searchsorted(self.ids, ids)
            self.used[self.slots[pos]] = False
            keep = np.ones(self.ids.size, dtype=bool)
            keep[pos] = False
            self.ids, self.slots = self.ids[keep], self.slots[keep]

    def add(self, ids: np.ndarray) -> np.ndarray:
        """Give each of ``ids`` (absent, distinct, at most the free slots) a free slot; returns them."""
        slots = np.flatnonzero(~self.used)[: ids.size]
        self.used[slots] = True
        order = np.argsort(ids)
        pos = np.searchsorted(self.ids, ids[order])
        self.ids = np.insert(self.ids, pos, ids[order])  # sorted insertions keep the array sorted
        self.slots = np.insert(self.slots, pos, slots[order])
        return slots


class FutureAwareCache(FeatureStore):
    """A device cache whose contents follow an epoch's batches (see the module for the policy).

    ``prefetch(t)`` steps the cache to batch ``t`` (steps only go forward; skipping is fine);
    ``gather(ids, out, batch=t)`` prefetches ``t`` if needed, then serves each id from the device
    cache, else the victim buffer, else ``backing``. ``stats`` counts served rows per tier
    (``"device"``, ``"victim"``, ``backing.tier``); ``prefetch_stats`` counts rows moved into the
    device cache per source (``"victim"``, ``backing.tier``) and the disk bytes that took;
    ``evictions`` counts evicted rows spilled to the victim buffer and dropped.

    A training loop gathers batch ``t``, then prefetches ``t + 1`` before computing on ``t``: the
    rows batch ``t`` needs are already in its output, and under CUDA the side stream starts only
    after that gather, so the copies for ``t + 1`` overlap ``t``'s compute::

        for t in range(len(batches)):
            x = cache.gather(batches[t], batch=t)    # waits for prefetch(t)'s copy
            if t + 1 < len(batches):
                cache.prefetch(t + 1)
            train_step(x)

    Example:
        >>> import torch
        >>> from gnn_ooc.graphstore.features.stores import MemoryStore
        >>> backing = MemoryStore(torch.arange(8.0).reshape(4, 2))
        >>> cache = FutureAwareCache(1, 2, torch.float32, "cpu", backing, [np.array([3])], window=1)
        >>> cache.gather([3, 0], batch=0).tolist(), cache.stats.hits
        ([[6.0, 7.0], [0.0, 1.0]], {'device': 1, 'victim': 0, 'memory': 1})
    """

    tier = "future"
    counts_own_hits = True

    def __init__(self, capacity_rows: int, dim: int, dtype: Any, device: Any, backing: FeatureStore,
                 batches: Batches, window: int, hotness: np.ndarray | None = None,
                 victim_rows: int = 0) -> None:
        import torch

        super().__init__(backing.num_rows, dim, dtype, device)
        if (self.dim, self.dtype) != (backing.dim, backing.dtype):
            raise InputError(None, f"cache rows are {dtype}[{dim}], backing rows {backing.dtype}[{backing.dim}]",
                             expected="the backing store's dim and dtype")
        if int(capacity_rows) < 0 or int(victim_rows) < 0:
            raise InputError(None, f"capacities {capacity_rows}, {victim_rows}", expected="rows >= 0")
        if hotness is not None and np.shape(hotness) != (self.num_rows,):
            raise InputError(None, f"hotness has shape {np.shape(hotness)}", expected=f"({self.num_rows},)")
        self.capacity, self.victim_capacity = int(capacity_rows), int(victim_rows)
        self.backing = backing
        self.next_use = NextUse(batches, window)
        self.window = self.next_use.window
        if (self.window + 1) * max(self.num_rows, 1) >= NO_USE:
            raise InputError(None, f"window {window} x {self.num_rows} rows overflows the int64 rank")
        self._rank = None if hotness is None else hotness_rank(hotness)
        self.rows = torch.empty((self.capacity, self.dim), dtype=dtype, device=self.device)
        self.victim = torch.empty((self.victim_capacity, self.dim), dtype=dtype)
        if cuda_available() and self.victim_capacity:
            self.victim = self.victim.pin_memory()  # page-locked: device <-> victim copies run at PCIe speed
        self._dev, self._vic = _Slots(self.capacity), _Slots(self.victim_capacity)
        self.step = -1
        self.prefetch_stats = StoreStats(row_bytes=self.row_bytes)
        self.evictions = {"victim": 0, "dropped": 0}
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._ready: Any = None  # CUDA event: the last prefetch's copy into the device cache is done
        self._staging: Any = None  # its source rows, kept alive until then

    # --- what is where ---------------------------------------------------------------------------
    def resident_ids(self) -> np.ndarray:
        """Ids on the device now, sorted."""
        return self._dev.ids.copy()

    def victim_ids(self) -> np.ndarray:
        """Ids in the victim buffer now, sorted."""
        return self._vic.ids.copy()

    def _keys(self, t: int, ids: np.ndarray, when: np.ndarray) -> np.ndarray:
        """``key_t`` as one int64: (batches until next use, window when none) x N + hotness rank."""
        rel = np.where(when == NO_USE, self.window, when - t)
        rank = ids if self._rank is None else self._rank[ids]
        return rel * self.num_rows + rank

    def _best(self, keys: np.ndarray, k: int) -> np.ndarray:
        """Mask of the ``k`` smallest keys (keys are distinct, so the choice is exact)."""
        keep = np.zeros(keys.size, dtype=bool)
        if keys.size <= k:
            keep[:] = True
        elif k > 0:
            keep[np.argpartition(keys, k - 1)[:k]] = True
        return keep

    # --- stepping ---------------------------------------------------------------------------------
    def prefetch(self, t: int) -> None:
        """Step the cache to batch ``t``: the device holds what the policy says before ``t`` runs."""
        t = int(t)
        if t < self.step:
            raise InputError(None, f"prefetch({t}) after prefetch({self.step})", expected="batches in order")
        if t == self.step:
            return
        need, when = self.next_use.table(t)
        if need.size and (need[0] < 0 or need[-1] >= self.num_rows):
            bad = need[0] if need[0] < 0 else need[-1]
            raise InputError(None, f"batch id {bad} is out of range", expected=f"0 <= id < {self.num_rows}")
        enter, leave = self._plan_device(t, need, when)
        spill, drop = self._plan_victim(t, need, when, enter, leave)
        self._move(enter, leave, spill, drop)
        self.step = t

    def _plan_device(self, t: int, need: np.ndarray, when: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids entering and leaving the device cache at step ``t`` (both sorted)."""
        res = self._dev.ids
        pos = np.searchsorted(res, need)
        held = pos < res.size
        held[held] = res[pos[held]] == need[held]
        missing, missing_when = need[~held], when[~held]
        if missing.size <= self.capacity - res.size:
            return missing, _EMPTY  # room for all: nothing to evict
        res_when = np.full(res.size, NO_USE, dtype=np.int64)
        res_when[pos[held]] = when[held]
        keep = self._best(np.concatenate([self._keys(t, res, res_when),
                                          self._keys(t, missing, missing_when)]), self.capacity)
        return missing[keep[res.size:]], res[~keep[: res.size]]

    def _plan_victim(self, t: int, need: np.ndarray, when: np.ndarray, enter: np.ndarray,
                     leave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evicted ids spilled to the victim buffer, and victim ids dropped to make room for them."""
        if self.victim_capacity == 0 or leave.size == 0:
            return _EMPTY, _EMPTY  # no spill: the victim buffer only loses rows moving to the device
        wanted = leave[_lookup(need, when, leave, NO_USE) != NO_USE]
        stay = self._vic.ids[~np.isin(self._vic.ids, enter, assume_unique=True)]
        cand = np.concatenate([stay, wanted])
        keep = self._best(self._keys(t, cand, _lookup(need, when, cand, NO_USE)), self.victim_capacity)
        return wanted[keep[stay.size:]], stay[~keep[: stay.size]]

    def _move(self, enter: np.ndarray, leave: np.ndarray, spill: np.ndarray, drop: np.ndarray) -> None:
        """Copy rows between tiers in an order that never overwrites a row before it is read."""
        import torch

        self._wait()
        vslot = self._vic.lookup(enter)
        from_victim = vslot >= 0
        enter = np.concatenate([enter[from_victim], enter[~from_victim]])
        nv = int(from_victim.sum())
        staging = torch.empty((enter.size, self.dim), dtype=self.dtype)
        if cuda_available() and self.device.type == "cuda" and enter.size:
            staging = staging.pin_memory()  # lets the side stream copy without blocking the host
        if nv:
            staging[:nv] = self.victim[torch.from_numpy(vslot[from_victim])]
        self.prefetch_stats.add_hits("victim", nv, from_disk=False)
        self._read_backing(enter[nv:], staging[nv:])
        self._vic.remove(enter[:nv])
        self._vic.remove(drop)
        if spill.size:  # before their device slots are reused
            dslot = torch.from_numpy(self._dev.lookup(spill)).to(self.device)
            self.victim[torch.from_numpy(self._vic.add(spill))] = self.rows[dslot].to("cpu")
        self._dev.remove(leave)
        self._copy_in(self._dev.add(enter), staging)
        self.evictions["victim"] += spill.size
        self.evictions["dropped"] += leave.size - spill.size + drop.size

    def _read_backing(self, ids: np.ndarray, out: Any) -> None:
        import torch

        before = self.backing.stats.disk_counters()
        if ids.size:
            self.backing.gather(torch.from_numpy(ids), out=out)
        self.prefetch_stats.add_hits(self.backing.tier, ids.size, from_disk=False)
        self.prefetch_stats.add_disk_since(self.backing.stats, before)

    def _copy_in(self, slots: np.ndarray, staging: Any) -> None:
        """rows[slots] = staging: on a side CUDA stream (``gather`` waits for it), else in place."""
        import torch

        if slots.size == 0:
            return
        idx = torch.from_numpy(slots)
        if self._stream is None:
            self.rows.index_copy_(0, idx.to(self.device), staging.to(self.device))
            return
        # the side stream must not overwrite slots before earlier reads of them (spills, gathers)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            rows = staging.to(self.device, non_blocking=True)
            self.rows.index_copy_(0, idx.to(self.device, non_blocking=True), rows)
            self._ready = torch.cuda.Event()
            self._ready.record(self._stream)
        self._staging = staging

    def _wait(self) -> None:
        """Make the current stream wait for the last prefetch's copy (no-op off CUDA)."""
        import torch

        if self._ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self._ready)
            self._ready = self._staging = None

    # --- serving -----------------------------------------------------------------------------------
    def gather(self, ids: Any, out: Any = None, *, device: Any = None, batch: int | None = None) -> Any:
        """Rows ``ids`` into ``out`` (see ``FeatureStore.gather``); ``batch=t`` prefetches ``t`` first."""
        if batch is not None:
            self.prefetch(batch)
        return super().gather(ids, out, device=device)

    def _gather(self, ids: Any, out: Any) -> None:
        import torch

        self._wait()
        ids_np = ids.numpy()
        pos = np.arange(ids_np.size)
        for tier, slots_of, rows in (("device", self._dev, self.rows), ("victim", self._vic, self.victim)):
            slots = slots_of.lookup(ids_np[pos])
            hit = slots >= 0
            if hit.any():
                src = torch.from_numpy(slots[hit]).to(rows.device)
                move_rows(rows, src, out, torch.from_numpy(pos[hit]))
                pos = pos[~hit]
            self.stats.add_hits(tier, int(hit.sum()), from_disk=False)
        before = self.backing.stats.disk_counters()
        if pos.size:
            rows = self.backing.gather(ids[torch.from_numpy(pos)], device=out.device)
            put_rows(out, torch.from_numpy(pos), rows)
        self.stats.add_hits(self.backing.tier, pos.size, from_disk=False)
        self.stats.add_disk_since(self.backing.stats, before)

    def close(self) -> None:
        self.backing.close()


# --- the reference ---------------------------------------------------------------------------------
def _reference_key(nu: dict[int, int], hotness: np.ndarray | None) -> Callable[[int], tuple[float, float, int]]:
    def key(v: int) -> tuple[float, float, int]:
        return (nu.get(v, math.inf), 0.0 if hotness is None else -float(hotness[v]), v)

    return key


def reference_belady(batches: Batches, capacity: int, window: int, hotness: np.ndarray | None = None,
                     victim_rows: int = 0) -> list[tuple[set[int], set[int]]]:
    """The policy simulated with Python sets: (device ids, victim ids) after ``prefetch(t)`` for each t.

    Slow and obvious, for tests: every step ranks every candidate by (next use in the window,
    hotter, lower id) and keeps the best ``capacity``; evicted rows the window needs join the
    victim candidates, which keep the best ``victim_rows``.

    Example:
        >>> reference_belady([[0, 1], [2, 1], [0, 3]], 2, 2, victim_rows=1)
        [({0, 1}, set()), ({1, 2}, {0}), ({0, 3}, set())]
    """
    device: set[int] = set()
    victim: set[int] = set()
    states = []
    for t in range(len(batches)):
        nu: dict[int, int] = {}
        for s in range(t, min(t + window, len(batches))):
            for v in batches[s]:
                nu.setdefault(int(v), s)
        key = _reference_key(nu, hotness)
        kept = set(sorted(device | set(nu), key=key)[:capacity])
        evicted_needed = {v for v in device - kept if v in nu}
        victim = set(sorted((victim | evicted_needed) - kept, key=key)[:victim_rows])
        device = kept
        states.append((set(device), set(victim)))
    return states
