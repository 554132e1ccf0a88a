"""Host caches for online sampling, where no plan says what comes next: SIEVE, and CLOCK to compare.

``SieveCache`` is SIEVE (Zhang et al., NSDI'24): a FIFO queue with a visited bit per row. A hit
sets the bit and moves nothing; a miss is inserted at the head, unvisited. To make room, a hand
walks from the tail towards the head, clearing visited bits as it passes, and evicts the first
unvisited row; it stays where it stopped for the next eviction (wrapping to the tail). It keeps
rows that are reused and evicts one-hit rows quickly, at the cost of a bit per row.

``ClockCache`` is CLOCK over the same slots: a circular hand that clears reference bits and
replaces the first unreferenced row in place (new rows start unreferenced, as in SIEVE).

A ``gather`` of a batch is one step of the trace: first every id already cached is marked
(a hit), then the distinct missing ids are inserted in the order they first appear in the batch;
with one id per gather this is exactly the textbook policy. Hits are served from the cache and
misses from ``backing``, all before the cache changes, so a row evicted by a later insertion of
the same batch is still served correctly. Lookups use an open-addressing hash table (memory
follows the cache, not the graph); the bookkeeping runs in numba kernels, rows move vectorised.

Example:
    >>> import torch
    >>> from gnn_ooc.graphstore.stores import MemoryStore
    >>> cache = SieveCache(2, 2, torch.float32, MemoryStore(torch.arange(10.0).reshape(5, 2)))
    >>> cache.gather([1, 2]).tolist()
    [[2.0, 3.0], [4.0, 5.0]]
    >>> _ = cache.gather([1]); _ = cache.gather([3])   # 1 was visited: the hand passes it, evicts 2
    >>> cache.resident_ids().tolist(), cache.stats.hits
    ([1, 3], {'host': 1, 'memory': 3})
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from gnn_ooc.capabilities import cuda_available
from gnn_ooc.graphstore.base import FeatureStore, InputError
from gnn_ooc.graphstore.rowops import move_rows

_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: consecutive ids spread over the table


# --- hash table: id -> slot, linear probing, backward-shift deletion (no tombstones) ---------------
@numba.njit(cache=True, nogil=True)
def _home(key: int, bits: int) -> int:
    return np.int64((np.uint64(key) * np.uint64(_GOLDEN)) >> np.uint64(64 - bits))


@numba.njit(cache=True, nogil=True)
def _find(keys: np.ndarray, vals: np.ndarray, ids: np.ndarray, bits: int) -> np.ndarray:
    """Slot of each id, -1 where absent."""
    mask = keys.shape[0] - 1
    out = np.full(ids.shape[0], -1, dtype=np.int64)
    for n in range(ids.shape[0]):
        i = _home(ids[n], bits)
        while keys[i] != -1:
            if keys[i] == ids[n]:
                out[n] = vals[i]
                break
            i = (i + 1) & mask
    return out


@numba.njit(cache=True, nogil=True)
def _put(keys: np.ndarray, vals: np.ndarray, key: int, val: int, bits: int) -> None:
    mask = keys.shape[0] - 1
    i = _home(key, bits)
    while keys[i] != -1:
        i = (i + 1) & mask
    keys[i] = key
    vals[i] = val


@numba.njit(cache=True, nogil=True)
def _delete(keys: np.ndarray, vals: np.ndarray, key: int, bits: int) -> None:
    """Remove ``key`` (present), shifting later entries of its probe run back into the hole."""
    mask = keys.shape[0] - 1
    i = _home(key, bits)
    while keys[i] != key:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        if keys[j] == -1:
            break
        k = _home(keys[j], bits)
        # an entry whose home lies cyclically in (i, j] must stay; any other may fill the hole
        if i <= j:
            stays = i < k and k <= j
        else:
            stays = k > i or k <= j
        if not stays:
            keys[i] = keys[j]
            vals[i] = vals[j]
            i = j
    keys[i] = -1


# --- policies ----------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _sieve_insert(ids: np.ndarray, keys: np.ndarray, vals: np.ndarray, bits: int, slot_id: np.ndarray,
                  visited: np.ndarray, newer: np.ndarray, older: np.ndarray,
                  state: np.ndarray) -> np.ndarray:
    """Insert ``ids`` (absent) at the head in order; returns each one's slot. state: head, tail, hand, size."""
    head, tail, hand, size = state[0], state[1], state[2], state[3]
    cap = slot_id.shape[0]
    dest = np.full(ids.shape[0], -1, dtype=np.int64)
    if cap == 0:
        return dest
    for n in range(ids.shape[0]):
        if size < cap:
            s = size
            size += 1
        else:
            s = hand if hand != -1 else tail
            while visited[s]:
                visited[s] = 0
                s = newer[s] if newer[s] != -1 else tail
            hand = newer[s]
            if newer[s] != -1:  # unlink s
                older[newer[s]] = older[s]
            else:
                head = older[s]
            if older[s] != -1:
                newer[older[s]] = newer[s]
            else:
                tail = newer[s]
            _delete(keys, vals, slot_id[s], bits)
        slot_id[s], visited[s], newer[s], older[s] = ids[n], 0, -1, head
        if head != -1:
            newer[head] = s
        else:
            tail = s
        head = s
        _put(keys, vals, ids[n], s, bits)
        dest[n] = s
    state[0], state[1], state[2], state[3] = head, tail, hand, size
    return dest


@numba.njit(cache=True, nogil=True)
def _clock_insert(ids: np.ndarray, keys: np.ndarray, vals: np.ndarray, bits: int, slot_id: np.ndarray,
                  referenced: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Insert ``ids`` (absent) in order at the clock hand; returns each one's slot. state: hand, size."""
    hand, size = state[0], state[1]
    cap = slot_id.shape[0]
    dest = np.full(ids.shape[0], -1, dtype=np.int64)
    if cap == 0:
        return dest
    for n in range(ids.shape[0]):
        if size < cap:
            s = size
            size += 1
        else:
            while referenced[hand]:
                referenced[hand] = 0
                hand = (hand + 1) % cap
            s = hand
            hand = (hand + 1) % cap
            _delete(keys, vals, slot_id[s], bits)
        slot_id[s], referenced[s] = ids[n], 0
        _put(keys, vals, ids[n], s, bits)
        dest[n] = s
    state[0], state[1] = hand, size
    return dest



#: bytes per cached row besides the row: the hash table (up to four slots of key and value per
#: row at a load factor of 1/4 to 1/2), the slot's id, the policy's links and bits
SLOT_OVERHEAD = 96

class _HostCache(FeatureStore):
    """Rows of up to ``capacity_rows`` ids in (pinned, under CUDA) host memory, found by a hash table."""

    tier = "host"
    counts_own_hits = True

    def __init__(self, capacity_rows: int, dim: int, dtype: Any, backing: FeatureStore) -> None:
        import torch

        super().__init__(backing.num_rows, dim, dtype, "cpu")
        if (self.dim, self.dtype) != (backing.dim, backing.dtype):
            raise InputError(None, f"cache rows are {dtype}[{dim}], backing rows {backing.dtype}[{backing.dim}]",
                             expected="the backing store's dim and dtype")
        if int(capacity_rows) < 0:
            raise InputError(None, f"capacity {capacity_rows}", expected="rows >= 0")
        self.capacity = int(capacity_rows)
        self.backing = backing
        self.rows = torch.empty((self.capacity, self.dim), dtype=dtype)
        if cuda_available() and self.capacity:
            self.rows = self.rows.pin_memory()  # hits copy to the GPU without a staging copy
        self._bits = max(1, (2 * max(self.capacity, 1) - 1).bit_length())  # load factor <= 1/2
        self._keys = np.full(1 << self._bits, -1, dtype=np.int64)
        self._vals = np.zeros(1 << self._bits, dtype=np.int64)
        self._slot_id = np.full(self.capacity, -1, dtype=np.int64)

    def resident_ids(self) -> np.ndarray:
        """Ids cached now, sorted."""
        return np.sort(self._slot_id[self._slot_id >= 0])

    def _touch(self, slots: np.ndarray) -> None:
        raise NotImplementedError

    def _insert(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gather(self, ids: Any, out: Any) -> None:
        import torch

        uniq, first, inv = np.unique(ids.numpy(), return_index=True, return_inverse=True)
        slots = _find(self._keys, self._vals, uniq, self._bits)
        cached = slots >= 0
        self._touch(slots[cached])
        hit = cached[inv]
        pos = np.flatnonzero(hit)
        if pos.size:
            move_rows(self.rows, torch.from_numpy(slots[inv[pos]]), out, torch.from_numpy(pos))
        self.stats.add_hits(self.tier, pos.size, from_disk=False)
        missing = np.flatnonzero(~cached)  # distinct misses, in id order (sequential for disk stores)
        before = self.backing.stats.disk_counters()
        if missing.size:
            self._miss(uniq[missing], first[missing], np.searchsorted(missing, inv[~hit]), ~hit, out)
        # repeats of a missing id are served once from the backing store: its disk rows count
        self.stats.add_hits(self.backing.tier, int((~hit).sum()), from_disk=False)
        self.stats.add_disk_since(self.backing.stats, before)

    def _miss(self, ids: np.ndarray, first: np.ndarray, row: np.ndarray, miss: np.ndarray, out: Any) -> None:
        """Serve the distinct missing ``ids`` (``row``: which one each missing position wants) from
        the backing store, then insert them in the order they first appear in the batch."""
        import torch

        rows = self.backing.gather(torch.from_numpy(ids))
        move_rows(rows, torch.from_numpy(row), out, torch.from_numpy(np.flatnonzero(miss)))
        order = np.argsort(first, kind="stable")
        dest = self._insert(ids[order])
        # a row evicted by a later insertion of the same batch lost its slot: copy only survivors
        ok = dest >= 0
        ok[ok] = self._slot_id[dest[ok]] == ids[order][ok]
        move_rows(rows, torch.from_numpy(order[ok]), self.rows, torch.from_numpy(dest[ok]))

    def close(self) -> None:
        self.backing.close()


class SieveCache(_HostCache):
    """SIEVE over ``capacity_rows`` host rows in front of ``backing`` (see the module for the policy).

    ``stats`` counts rows served from the cache (``"host"``) and from ``backing.tier``.

    Example:
        >>> import torch
        >>> from gnn_ooc.graphstore.stores import MemoryStore
        >>> cache = SieveCache(1, 1, torch.float32, MemoryStore(torch.arange(3.0)[:, None]))
        >>> cache.gather([2, 2]).flatten().tolist(), cache.resident_ids().tolist(), cache.stats.hits
        ([2.0, 2.0], [2], {'host': 0, 'memory': 2})
    """

    def __init__(self, capacity_rows: int, dim: int, dtype: Any, backing: FeatureStore) -> None:
        super().__init__(capacity_rows, dim, dtype, backing)
        self._visited = np.zeros(self.capacity, dtype=np.uint8)
        self._newer = np.full(self.capacity, -1, dtype=np.int64)  # towards the head (newest)
        self._older = np.full(self.capacity, -1, dtype=np.int64)  # towards the tail (oldest)
        self._state = np.array([-1, -1, -1, 0], dtype=np.int64)  # head, tail, hand, size

    def queue(self) -> np.ndarray:
        """Cached ids from the tail (oldest) to the head (newest): SIEVE's FIFO order."""
        out, s = [], int(self._state[1])
        while s != -1:  # for inspection and tests, not a hot path
            out.append(int(self._slot_id[s]))
            s = int(self._newer[s])
        return np.array(out, dtype=np.int64)

    def _touch(self, slots: np.ndarray) -> None:
        self._visited[slots] = 1

    def _insert(self, ids: np.ndarray) -> np.ndarray:
        return _sieve_insert(ids, self._keys, self._vals, self._bits, self._slot_id, self._visited,
                             self._newer, self._older, self._state)


class ClockCache(_HostCache):
    """CLOCK over ``capacity_rows`` host rows in front of ``backing`` (see the module for the policy).

    Example:
        >>> import torch
        >>> from gnn_ooc.graphstore.stores import MemoryStore
        >>> cache = ClockCache(2, 1, torch.float32, MemoryStore(torch.arange(4.0)[:, None]))
        >>> _ = cache.gather([0, 1]); _ = cache.gather([0]); _ = cache.gather([2])
        >>> cache.resident_ids().tolist()
        [0, 2]
    """

    def __init__(self, capacity_rows: int, dim: int, dtype: Any, backing: FeatureStore) -> None:
        super().__init__(capacity_rows, dim, dtype, backing)
        self._referenced = np.zeros(self.capacity, dtype=np.uint8)
        self._state = np.array([0, 0], dtype=np.int64)  # hand, size

    def _touch(self, slots: np.ndarray) -> None:
        self._referenced[slots] = 1

    def _insert(self, ids: np.ndarray) -> np.ndarray:
        return _clock_insert(ids, self._keys, self._vals, self._bits, self._slot_id, self._referenced,
                             self._state)
