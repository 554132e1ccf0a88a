"""CLOCK over the host cache's slots, to compare with SIEVE: a circular hand clears reference
bits and replaces the first unreferenced row in place (new rows start unreferenced, as in SIEVE).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.features.policies.hosttable import HostCache, _delete, _put


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


class ClockCache(HostCache):
    """CLOCK over ``capacity_rows`` host rows in front of ``backing`` (see the module for the policy).

    Example:
        >>> import torch
        >>> from gnn_ooc.graphstore.features.stores import MemoryStore
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
