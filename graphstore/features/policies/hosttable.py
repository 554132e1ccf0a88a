"""What the online host caches share: an id -> slot hash table in numba (linear probing,
backward-shift deletion, no tombstones) and ``HostCache``, the store around it whose policy
subclasses (``sieve``, ``clock``) say which row a miss replaces.

A ``gather`` of a batch is one step of the trace: first every id already cached is marked
(a hit), then the distinct missing ids are inserted in the order they first appear in the batch;
with one id per gather this is exactly the textbook policy. Hits are served from the cache and
misses from ``backing``, all before the cache changes, so a row evicted by a later insertion of
the same batch is still served correctly. Lookups use an open-addressing hash table (memory
follows the cache, not the graph); the bookkeeping runs in numba kernels, rows move vectorised.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from gnn_ooc.capabilities import cuda_available
from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.io.rowops import move_rows

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


#: bytes per cached row besides the row: the hash table (up to four slots of key and value per
#: row at a load factor of 1/4 to 1/2), the slot's id, the policy's links and bits
SLOT_OVERHEAD = 96

class HostCache(FeatureStore):
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


