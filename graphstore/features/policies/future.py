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
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from gnn_ooc.capabilities import cuda_available
from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.features.base import FeatureStore, StoreStats
from gnn_ooc.graphstore.features.policies.base import ids_digest, isin_sorted
from gnn_ooc.graphstore.io.rowops import move_rows, put_rows

#: bytes per cached row besides the row: its id and slot in the sorted lookup arrays (kept twice
#: while they are rebuilt), the slot's in-use flag
FUTURE_SLOT_OVERHEAD = 40
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

    def held(self, b: int) -> np.ndarray:
        """Batch ``b``'s distinct ids, from the window when it holds them (no second read)."""
        if self._lo <= b < self._lo + len(self._distinct):
            return self._distinct[b - self._lo]
        return self.distinct(b)

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


@dataclass(frozen=True)
class Moves:
    """What one step of the policy changes, in slots, in the order rows must move: entering rows
    from the victim buffer are read first (``victim_src``), then the spills leave the device
    (``spill_dev`` to ``spill_vic``), then every entering row lands (``enter_dev``)."""

    enter: np.ndarray  # ids entering the device: the ones from the victim buffer first
    from_victim: int  # how many of ``enter`` come from the victim buffer
    victim_src: np.ndarray  # their victim slots
    spill_dev: np.ndarray  # device slots of the evicted rows the window still needs
    spill_vic: np.ndarray  # the victim slots they go to
    enter_dev: np.ndarray  # the device slot of each of ``enter``
    spilled: int
    dropped: int  # rows that left both tiers

    @property
    def fills(self) -> np.ndarray:
        """Ids entering from outside the cache (the backing store, or a pack's fill rows)."""
        return self.enter[self.from_victim :]


class FuturePolicy:
    """The policy of the module docstring over ids alone: which id is in which slot of the device
    cache and the victim buffer after each step. ``FutureAwareCache`` moves rows by it; the packer
    runs the same policy to know, batch by batch, which rows the cache will hold.

    Example:
        >>> policy = FuturePolicy(2, 1, 5, [np.array([0, 1]), np.array([2, 1]), np.array([0, 3])], window=2)
        >>> policy.step(0).fills.tolist(), policy.step(1).fills.tolist(), policy.victim_ids().tolist()
        ([0, 1], [2], [0])
    """

    def __init__(self, capacity_rows: int, victim_rows: int, num_rows: int, batches: Batches, window: int,
                 hotness: np.ndarray | None = None, *, bypass: bool = False, start: Any = None) -> None:
        if int(capacity_rows) < 0 or int(victim_rows) < 0:
            raise InputError(None, f"capacities {capacity_rows}, {victim_rows}", expected="rows >= 0")
        if hotness is not None and np.shape(hotness) != (int(num_rows),):
            raise InputError(None, f"hotness has shape {np.shape(hotness)}", expected=f"({int(num_rows)},)")
        self.capacity, self.victim_capacity, self.num_rows = int(capacity_rows), int(victim_rows), int(num_rows)
        # bypass: step t comes after batch t was served (from the tiers as they were, its other rows
        # from its segment) and keeps the best of (device, victim, batch t) by next use after t;
        # else step t comes before batch t and any row the window needs may enter ahead of its use
        self.bypass = bool(bypass)
        self.next_use = NextUse(batches, window)
        self.window = self.next_use.window
        self._hot, self._hot_max, self._rank = self._hotness(hotness)
        self.device, self.victim = _Slots(self.capacity), _Slots(self.victim_capacity)
        if start is not None:  # (device ids, victim ids), or (device slots, victim slots) to carry on with
            self._start(*start)
        self.step_at = -1

    def _hotness(self, hotness: Any) -> tuple[Any, int, np.ndarray | None]:
        """Integer hotness (access counts, possibly memory-mapped) ranks through one int64 key with
        no per-node array; other hotness through a rank array of every node."""
        spread = 1
        hot, rank = None, None
        if hotness is not None and np.issubdtype(np.asarray(hotness[:0]).dtype, np.integer):
            hot = hotness
            spread = int(np.max(hotness)) + 1 if len(hotness) else 1
            if len(hotness) and int(np.min(hotness)) < 0:
                raise InputError(None, "hotness has negative counts", expected="counts >= 0")
        elif hotness is not None:
            rank = hotness_rank(hotness)
        if (self.window + 1) * spread * max(self.num_rows, 1) >= NO_USE:
            raise InputError(None, f"window {self.window} x {self.num_rows} rows overflows the int64 rank")
        return hot, spread - 1, rank

    def _start(self, device: Any, victim: Any) -> None:
        if isinstance(device, _Slots) and isinstance(victim, _Slots):  # the same rows in the same slots
            if (device.used.size, victim.used.size) != (self.capacity, self.victim_capacity):
                raise InputError(None, "slots of another cache size", expected=f"{self.capacity} + {self.victim_capacity}")
            self.device, self.victim = device, victim
            return
        for slots, ids, cap in ((self.device, device, self.capacity), (self.victim, victim, self.victim_capacity)):
            ids = np.unique(np.asarray(ids, dtype=np.int64))
            if ids.size > cap:
                raise InputError(None, f"a start state of {ids.size} rows", expected=f"at most {cap}")
            self._check_ids(ids)
            slots.add(ids)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """(device ids, victim ids) now, sorted: what a next epoch may start from."""
        return self.device.ids.copy(), self.victim.ids.copy()

    def resident_ids(self) -> np.ndarray:
        """Ids on the device now, sorted."""
        return self.device.ids.copy()

    def victim_ids(self) -> np.ndarray:
        """Ids in the victim buffer now, sorted."""
        return self.victim.ids.copy()

    def _keys(self, t: int, ids: np.ndarray, when: np.ndarray) -> np.ndarray:
        """``key_t`` as one int64: (batches until next use, window when none) x N + hotness rank."""
        rel = np.where(when == NO_USE, self.window, when - t)
        if self._hot is not None:  # (sooner, hotter, lower id) as one int: no tie is left
            cold = self._hot_max - np.asarray(self._hot[ids], dtype=np.int64)
            return (rel * (self._hot_max + 1) + cold) * self.num_rows + ids
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

    def step(self, t: int) -> Moves | None:
        """Step to batch ``t`` (forward only; skipping is fine): the moves, or None when already there."""
        t = int(t)
        if t < self.step_at:
            raise InputError(None, f"prefetch({t}) after prefetch({self.step_at})", expected="batches in order")
        if t == self.step_at:
            return None
        if self.bypass:  # ranked by the uses after t; batch t's rows and the victim's may enter
            batch = self.next_use.held(t)  # before the window slides past it
            need, when = self.next_use.table(t + 1) if t + 1 <= len(self.next_use) else (_EMPTY, _EMPTY)
            self._check_ids(batch)
            fresh, at = np.union1d(batch, self.victim.ids), t + 1
        else:  # ranked by the uses from t on; whatever the window needs may enter
            need, when = self.next_use.table(t)
            self._check_ids(need)
            fresh, at = need, t
        enter, leave = self._plan_device(at, need, when, fresh)
        spill, drop = self._plan_victim(at, need, when, enter, leave)
        self.step_at = t
        return self._apply(enter, leave, spill, drop)

    def _check_ids(self, ids: np.ndarray) -> None:
        """``ids`` (sorted) are rows of the store."""
        if ids.size and (ids[0] < 0 or ids[-1] >= self.num_rows):
            bad = ids[0] if ids[0] < 0 else ids[-1]
            raise InputError(None, f"batch id {bad} is out of range", expected=f"0 <= id < {self.num_rows}")

    def _plan_device(self, t: int, need: np.ndarray, when: np.ndarray,
                     fresh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids entering and leaving the device cache (both sorted): the best ``capacity`` of the
        residents and ``fresh`` (sorted, distinct) by ``key_t``, next uses from ``need``/``when``."""
        res = self.device.ids
        missing = fresh[~isin_sorted(fresh, res)]
        if missing.size <= self.capacity - res.size:
            return missing, _EMPTY  # room for all: nothing to evict
        keep = self._best(np.concatenate([self._keys(t, res, _lookup(need, when, res, NO_USE)),
                                          self._keys(t, missing, _lookup(need, when, missing, NO_USE))]),
                          self.capacity)
        return missing[keep[res.size:]], res[~keep[: res.size]]

    def _plan_victim(self, t: int, need: np.ndarray, when: np.ndarray, enter: np.ndarray,
                     leave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evicted ids spilled to the victim buffer, and victim ids dropped to make room for them."""
        if self.victim_capacity == 0 or leave.size == 0:
            return _EMPTY, _EMPTY  # no spill: the victim buffer only loses rows moving to the device
        wanted = leave[_lookup(need, when, leave, NO_USE) != NO_USE]
        stay = self.victim.ids[~np.isin(self.victim.ids, enter, assume_unique=True)]
        cand = np.concatenate([stay, wanted])
        keep = self._best(self._keys(t, cand, _lookup(need, when, cand, NO_USE)), self.victim_capacity)
        return wanted[keep[stay.size:]], stay[~keep[: stay.size]]

    def _apply(self, enter: np.ndarray, leave: np.ndarray, spill: np.ndarray, drop: np.ndarray) -> Moves:
        """Update the slots in the order rows will move: nothing is overwritten before it is read."""
        vslot = self.victim.lookup(enter)
        from_victim = vslot >= 0
        enter = np.concatenate([enter[from_victim], enter[~from_victim]])
        nv = int(from_victim.sum())
        self.victim.remove(enter[:nv])
        self.victim.remove(drop)
        spill_dev = self.device.lookup(spill)
        spill_vic = self.victim.add(spill) if spill.size else _EMPTY
        self.device.remove(leave)
        enter_dev = self.device.add(enter)
        return Moves(enter, nv, vslot[from_victim], spill_dev, spill_vic, enter_dev,
                     int(spill.size), int(leave.size - spill.size + drop.size))


class WithoutIds:
    """``batches`` with the ids of ``held`` (sorted) left out: rows another cache serves anyway."""

    def __init__(self, batches: Batches, held: np.ndarray) -> None:
        self.batches, self.held = batches, np.unique(np.asarray(held, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> np.ndarray:
        ids = np.asarray(self.batches[b], dtype=np.int64)
        return ids[~isin_sorted(ids, self.held)] if self.held.size else ids


class FutureServing:
    """The future-aware device cache (with its victim buffer) and a static pinned cache, as the
    packer sees them (``policies.base.Serving``): at step ``t`` the policy runs over the epoch's
    batches less the pinned rows; a batch's rows on the device, in the victim buffer or pinned are
    served, and the rows the device takes in from outside are the step's fills.

    Example:
        >>> serving = FutureServing(2, 0, 6, window=2, pinned=np.array([5]))
        >>> serving.begin([np.array([0, 5]), np.array([1, 0])])
        >>> [(s.tolist(), f.tolist()) for s, f in (serving.step(0, np.array([0, 5])), serving.step(1, np.array([1, 0])))]
        [([False, True], [0]), ([False, True], [1])]
    """

    def __init__(self, capacity_rows: int, victim_rows: int, num_rows: int, window: int,
                 pinned: np.ndarray | None = None) -> None:
        self.capacity, self.victim_rows, self.num_rows = int(capacity_rows), int(victim_rows), int(num_rows)
        self.window = int(window)
        self.pinned = np.unique(np.asarray(pinned if pinned is not None else _EMPTY, dtype=np.int64))
        self.policy: FuturePolicy | None = None
        # the state the last epoch walked ended in: the next epoch starts from it, as the training
        # cache carries its rows over (packs record their start, so a resumed run finds it)
        self.carry: tuple[np.ndarray, np.ndarray] | None = None
        self.started: tuple[np.ndarray, np.ndarray] = (_EMPTY, _EMPTY)

    def __getstate__(self) -> dict[str, Any]:  # pickled into the background planner: the carry, no policy
        return {**self.__dict__, "policy": None}

    def identity(self) -> dict[str, Any]:
        return {"kind": "future", "fetch": "bypass", "capacity": self.capacity, "victim": self.victim_rows, "window": self.window,
                "pinned": ids_digest(self.pinned), "hotness": "epoch access counts"}

    def begin(self, epoch: Any, start: Any = None) -> None:
        """A new epoch (an ``EpochPlan``, whose access counts break ties, or a list of batches),
        starting from ``start`` ((device ids, victim ids), or slots to carry on with), else from
        where the last epoch walked here ended (``carry``), else empty."""
        counts = getattr(epoch, "access_counts", None)
        batches = PlanBatches(epoch) if hasattr(epoch, "nodes") else epoch
        start = start if start is not None else self.carry
        # bypass: a row enters when the batch using it has been served, from that batch's segment
        # (read anyway), and only if it ranks among the rows worth keeping; loading rows ahead of
        # their batch would pack them ahead, and again if evicted before their use
        self.policy = FuturePolicy(self.capacity, self.victim_rows, self.num_rows, WithoutIds(batches, self.pinned),
                                   self.window, counts() if callable(counts) else None, bypass=True, start=start)
        self.started = self.policy.state()

    def end(self) -> None:
        """The epoch was walked to its end: the next one starts from here."""
        if self.policy is not None:
            self.carry = self.policy.state()

    def start_state(self) -> dict[str, np.ndarray]:
        """What the epoch started from (the packer records it in the pack)."""
        return {"device": self.started[0], "victim": self.started[1]}

    def step(self, t: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``t`` is served by the tiers as the steps before it left them; then the policy's
        step ``t`` takes in some of its rows (``fills``: rows of batch ``t``, packed for it anyway)."""
        assert self.policy is not None, "begin(batches) first"
        nodes = np.asarray(nodes, dtype=np.int64)
        served = (isin_sorted(nodes, self.pinned) | isin_sorted(nodes, self.policy.device.ids)
                  | isin_sorted(nodes, self.policy.victim.ids))
        moves = self.policy.step(t)
        return served, _EMPTY if moves is None else moves.fills


class _TierView:
    """One tier of a ``FutureAwareCache`` as ``TieredStore`` sees a cache: ``tier``, ``rows`` and
    ``lookup(ids) -> slots`` (-1 where absent); ``capacity_rows`` for the memory report."""

    def __init__(self, tier: str, cache: FutureAwareCache, slots: Callable[[], _Slots], rows: Callable[[], Any]) -> None:
        self.tier, self.cache, self._slots, self._rows = tier, cache, slots, rows

    @property
    def rows(self) -> Any:
        return self._rows()

    @property
    def num_rows(self) -> int:
        return int(self._slots().ids.size)

    def lookup(self, ids: Any) -> Any:
        import torch

        self.cache._wait()  # the last prefetch's copy lands before its rows are read
        return torch.from_numpy(self._slots().lookup(np.asarray(ids, dtype=np.int64)))


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
                 batches: Batches | None, window: int, hotness: np.ndarray | None = None,
                 victim_rows: int = 0, *, serving: FutureServing | None = None, bypass: bool = False) -> None:
        import torch

        super().__init__(backing.num_rows, dim, dtype, device)
        if (self.dim, self.dtype) != (backing.dim, backing.dtype):
            raise InputError(None, f"cache rows are {dtype}[{dim}], backing rows {backing.dtype}[{backing.dim}]",
                             expected="the backing store's dim and dtype")
        # with ``serving`` (training), each epoch's policy is the one the packer ran: ``begin(epoch)``
        self.serving = serving
        self._use(FuturePolicy(capacity_rows, victim_rows, self.num_rows, batches if batches is not None else [],
                               window, hotness, bypass=bypass))
        self.capacity, self.victim_capacity = self.policy.capacity, self.policy.victim_capacity
        self.backing = backing
        self.rows = torch.empty((self.capacity, self.dim), dtype=dtype, device=self.device)
        self.victim = torch.empty((self.victim_capacity, self.dim), dtype=dtype)
        if cuda_available() and self.victim_capacity:
            self.victim = self.victim.pin_memory()  # page-locked: device <-> victim copies run at PCIe speed
        self.prefetch_stats = StoreStats(row_bytes=self.row_bytes)
        self.evictions = {"victim": 0, "dropped": 0}
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._ready: Any = None  # CUDA event: the last prefetch's copy into the device cache is done
        self._staging: Any = None  # its source rows, kept alive until then

    @property
    def step(self) -> int:
        return self.policy.step_at

    def _use(self, policy: FuturePolicy) -> None:
        self.policy = policy
        self._dev, self._vic = policy.device, policy.victim
        self.next_use, self.window = policy.next_use, policy.window

    def begin(self, epoch: Any, start: dict[str, np.ndarray] | None = None) -> None:
        """A new epoch (an ``EpochPlan``) under the serving policy, its tiers starting from ``start``
        (the ids its pack records): the rows held now stay where they are when they are the same,
        else the start's rows are read from ``backing`` (a resumed run)."""

        if self.serving is None:
            raise InputError(None, "begin(epoch) needs the cache made with serving=", expected="a FutureServing")
        if (self.serving.capacity, self.serving.victim_rows) != (self.capacity, self.victim_capacity):
            raise InputError(None, f"serving sized {self.serving.capacity} + {self.serving.victim_rows} rows",
                             expected=f"this cache's {self.capacity} + {self.victim_capacity}")
        self._wait()
        want = (start or {}).get("device", _EMPTY), (start or {}).get("victim", _EMPTY)
        carried = np.array_equal(want[0], self._dev.ids) and np.array_equal(want[1], self._vic.ids)
        if carried:
            self.serving.begin(epoch, start=(self._dev, self._vic))  # carry on: same rows, same slots
        else:
            self.serving.begin(epoch, start=want)
        assert self.serving.policy is not None
        self._use(self.serving.policy)
        if not carried:
            self._load_held()

    def skip_to(self, t: int) -> None:
        """Resume at batch ``t``: replay the policy over batches ``0..t-1`` (ids only), then load the
        rows it holds from ``backing``: the same contents as a run that never stopped."""
        for s in range(self.policy.step_at + 1, int(t)):
            self.policy.step(s)
        self._load_held()

    def _load_held(self) -> None:
        """Read every row the policy says the tiers hold from ``backing`` into its slot."""
        import torch

        for held, rows in ((self._dev, self.rows), (self._vic, self.victim)):
            if held.ids.size:
                got = self.backing.gather(torch.from_numpy(held.ids))
                rows[torch.from_numpy(held.slots).to(rows.device)] = got.to(rows.device)

    def tiers(self) -> list[Any]:
        """The device cache and the victim buffer as two tiers of a ``TieredStore`` (lookups by id)."""
        return [_TierView("device", self, lambda: self._dev, lambda: self.rows),
                _TierView("victim", self, lambda: self._vic, lambda: self.victim)]

    # --- what is where ---------------------------------------------------------------------------
    def resident_ids(self) -> np.ndarray:
        """Ids on the device now, sorted."""
        return self.policy.resident_ids()

    def victim_ids(self) -> np.ndarray:
        """Ids in the victim buffer now, sorted."""
        return self.policy.victim_ids()

    # --- stepping ---------------------------------------------------------------------------------
    def prefetch(self, t: int, fill: Callable[[np.ndarray, Any], None] | None = None) -> None:
        """Step the cache to batch ``t``: the device holds what the policy says before ``t`` runs.
        ``fill(ids, out)`` provides the rows entering from outside (a pack's fill rows), else
        ``backing`` does."""
        moves = self.policy.step(t)
        if moves is not None:
            self._move(moves, fill)

    def _move(self, m: Moves, fill: Callable[[np.ndarray, Any], None] | None = None) -> None:
        """Copy rows between tiers in the policy's order: reads of a slot before its reuse."""
        import torch

        self._wait()
        staging = torch.empty((m.enter.size, self.dim), dtype=self.dtype)
        if cuda_available() and self.device.type == "cuda" and m.enter.size:
            staging = staging.pin_memory()  # lets the side stream copy without blocking the host
        if m.from_victim:
            staging[: m.from_victim] = self.victim[torch.from_numpy(m.victim_src)]
        self.prefetch_stats.add_hits("victim", m.from_victim, from_disk=False)
        if fill is not None:
            fill(m.fills, staging[m.from_victim :])
            self.prefetch_stats.add_hits("packed", m.fills.size, from_disk=False)
        else:
            self._read_backing(m.fills, staging[m.from_victim :])
        if m.spilled:  # before their device slots are reused
            dslot = torch.from_numpy(m.spill_dev).to(self.device)
            self.victim[torch.from_numpy(m.spill_vic)] = self.rows[dslot].to("cpu")
        self._copy_in(m.enter_dev, staging)
        self.evictions["victim"] += m.spilled
        self.evictions["dropped"] += m.dropped

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
                     victim_rows: int = 0, *, bypass: bool = False) -> list[tuple[set[int], set[int]]]:
    """The policy simulated with Python sets: (device ids, victim ids) after ``prefetch(t)`` for each t.

    Slow and obvious, for tests: every step ranks every candidate by (next use in the window,
    hotter, lower id) and keeps the best ``capacity`` (with ``bypass`` the step comes after batch
    ``t``: the window is ``t+1..t+W`` and the candidates are the device's, the victim's and batch
    ``t``'s rows); evicted rows the window needs join the
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
        lo = t + 1 if bypass else t
        for s in range(lo, min(lo + window, len(batches))):
            for v in batches[s]:
                nu.setdefault(int(v), s)
        key = _reference_key(nu, hotness)
        entering = {int(v) for v in batches[t]} | victim if bypass else set(nu)
        kept = set(sorted(device | entering, key=key)[:capacity])
        evicted_needed = {v for v in device - kept if v in nu}
        victim = set(sorted((victim | evicted_needed) - kept, key=key)[:victim_rows])
        device = kept
        states.append((set(device), set(victim)))
    return states
