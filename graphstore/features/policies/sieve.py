"""SIEVE, the host cache of online sampling, where no plan says what comes next.

``SieveCache`` is SIEVE (Zhang et al., NSDI'24): a FIFO queue with a visited bit per row. A hit
sets the bit and moves nothing; a miss is inserted at the head, unvisited. To make room, a hand
walks from the tail towards the head, clearing visited bits as it passes, and evicts the first
unvisited row; it stays where it stopped for the next eviction (wrapping to the tail). It keeps
rows that are reused and evicts one-hit rows quickly, at the cost of a bit per row.

Example:
    >>> import torch
    >>> from gnn_ooc.graphstore.features.stores import MemoryStore
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

from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.features.policies.hosttable import HostCache, _delete, _put


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



class SieveCache(HostCache):
    """SIEVE over ``capacity_rows`` host rows in front of ``backing`` (see the module for the policy).

    ``stats`` counts rows served from the cache (``"host"``) and from ``backing.tier``.

    Example:
        >>> import torch
        >>> from gnn_ooc.graphstore.features.stores import MemoryStore
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
