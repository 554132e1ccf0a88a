"""Static placement: the hottest rows fill the first tier, the next the second. Hotness is a plan's
access counts (offline) or, with no plan to rank them by (online), the in-degree.

Reads the counts in chunks and keeps only the chosen ids: memory follows the caches, not the graph.
Ties are broken by id (lower first), so placement is deterministic.

Example:
    >>> import numpy as np
    >>> [t.tolist() for t in place_by_hotness(np.array([5, 0, 9, 9, 1]), [2, 1])]
    [[2, 3], [0]]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gnn_ooc.graphstore.features.policies.base import ids_digest, isin_sorted

_NONE = np.empty(0, np.int64)


def rows_for_budget(budget_bytes: int, row_bytes: int) -> int:
    return max(0, int(budget_bytes) // max(1, int(row_bytes)))


def place_by_hotness(counts: np.ndarray, capacities: Sequence[int], *, chunk: int = 1 << 24) -> list[np.ndarray]:
    """Ids for each tier (``capacities`` rows each), hottest first; nodes never accessed are not placed."""
    total = min(int(sum(capacities)), int(counts.shape[0]))
    chosen = _hottest(counts, total, chunk)
    out, at = [], 0
    for cap in capacities:
        out.append(np.sort(chosen[at : at + cap]))
        at += cap
    return out


def _hottest(counts: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """The ``k`` ids with the largest positive counts, hottest first (ties: lower id first)."""
    if k <= 0:
        return np.empty(0, np.int64)
    hist = np.zeros(1, np.int64)
    for s in range(0, counts.shape[0], chunk):
        h = np.bincount(np.asarray(counts[s : s + chunk]).astype(np.int64))
        hist = np.pad(hist, (0, max(0, h.size - hist.size))) + np.pad(h, (0, max(0, hist.size - h.size)))
    above = np.cumsum(hist[::-1])[::-1]  # above[c] = nodes with count >= c
    cut = next((c for c in range(1, hist.size) if above[c] <= k), hist.size)
    ids, ties = [], []
    for s in range(0, counts.shape[0], chunk):
        part = np.asarray(counts[s : s + chunk])
        ids.append(np.flatnonzero(part >= cut) + s)
        if cut - 1 >= 1:
            ties.append(np.flatnonzero(part == cut - 1) + s)
    hot = np.concatenate(ids) if ids else np.empty(0, np.int64)
    hot = hot[np.lexsort((hot, -np.asarray(counts[hot]).astype(np.int64)))] if hot.size else hot
    rest = np.concatenate(ties)[: k - hot.size] if ties and hot.size < k else np.empty(0, np.int64)
    return np.concatenate([hot, rest]).astype(np.int64)


def hottest_by_degree(indptr: np.ndarray, rows: int, *, chunk: int = 1 << 24) -> np.ndarray:
    """The ``rows`` ids of highest in-degree (CSC ``indptr``), ties by id: online mode's device cache.

    Example:
        >>> hottest_by_degree(np.array([0, 1, 4, 4, 6]), 2).tolist()
        [1, 3]
    """
    degree = np.diff(np.asarray(indptr, dtype=np.int64))
    (hot,) = place_by_hotness(degree, [rows], chunk=chunk)
    return hot


class StaticServing:
    """Static placement as the packer sees it (``policies.base.Serving``): the same rows are served
    at every step, and nothing is loaded while the epoch runs.

    Example:
        >>> served, fills = StaticServing(np.array([4])).step(0, np.array([4, 0]))
        >>> served.tolist(), fills.size
        ([True, False], 0)
    """

    def __init__(self, cached_ids: Any) -> None:
        self.cached = np.unique(np.asarray(cached_ids, dtype=np.int64))

    def identity(self) -> dict[str, Any]:
        return {"kind": "static", "cached": ids_digest(self.cached)}

    def begin(self, batches: Any) -> None:
        pass

    def step(self, t: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return isin_sorted(np.asarray(nodes, dtype=np.int64), self.cached), _NONE

    def end(self) -> None:
        pass

    def start_state(self) -> dict[str, np.ndarray]:
        return {}
