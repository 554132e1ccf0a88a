"""What a packer needs to know of a cache policy: which of each batch's rows the caches will
serve when that batch runs, and which rows the caches load at that step (``fills``: the packer
stores them in the batch's run, so the cache loads them from the segment instead of by random
reads). A row the caches serve is never packed for that batch.

``Serving`` walks one epoch forward, batch by batch: ``begin(batches)`` then ``step(t, nodes)``
for ``t = 0, 1, ...``. Static placement (``static.StaticServing``) serves the same rows at every
step and fills nothing; the future-aware cache (``future.FutureServing``) runs its policy.

Example:
    >>> import numpy as np
    >>> from gnn_ooc.graphstore.features.policies.static import StaticServing
    >>> serving = StaticServing(np.array([2, 5]))
    >>> serving.begin([np.array([5, 1])])
    >>> served, fills = serving.step(0, np.array([5, 1]))
    >>> served.tolist(), fills.tolist()
    ([True, False], [])
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import numpy as np


class Serving(Protocol):
    """A cache policy as the packer sees it (see the module)."""

    def identity(self) -> dict[str, Any]:
        """What a pack made for this policy must match to be kept (sizes, window, digests)."""

    def begin(self, batches: Any) -> None:
        """Start an epoch whose batch ``b``'s node ids are ``batches[b]``."""

    def step(self, t: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``t`` (``nodes``, its node ids): a mask of the nodes the caches serve, and the ids
        the caches load from outside at this step (sorted, distinct)."""

    def end(self) -> None:
        """The epoch's last step was taken (a cache that carries its rows over remembers them)."""

    def start_state(self) -> dict[str, np.ndarray]:
        """Id arrays the epoch's caches started from, recorded in the pack (empty: none)."""


def isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for a sorted, distinct ``sorted_set`` (binary search).

    Example:
        >>> isin_sorted(np.array([3, 1, 7]), np.array([1, 7])).tolist()
        [False, True, True]
    """
    if sorted_set.size == 0:
        return np.zeros(values.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[pos] == values


def ids_digest(ids: np.ndarray) -> str:
    """A short digest of a set of ids (order and repeats do not matter): which rows a cache holds."""
    return hashlib.sha256(np.ascontiguousarray(np.unique(np.asarray(ids, dtype=np.int64))).tobytes()).hexdigest()[:32]
