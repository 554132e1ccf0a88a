"""The tiered store: each id served by the fastest tier holding it; hits counted per tier.

Example:
    >>> import torch
    >>> from gnn_ooc.graphstore.features.cache import RowCache
    >>> from gnn_ooc.graphstore.features.stores import MemoryStore
    >>> backing = MemoryStore(torch.arange(12.0).reshape(6, 2))
    >>> store = TieredStore([RowCache.filled("device", [5], backing)], backing)
    >>> store.gather([5, 0]).tolist(), store.stats.hits
    ([[10.0, 11.0], [0.0, 1.0]], {'device': 1, 'memory': 1})
"""

from __future__ import annotations

from typing import Any, Sequence

from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.features.cache import RowCache
from gnn_ooc.graphstore.io.rowops import move_rows, put_rows


class TieredStore(FeatureStore):
    """Caches in order (device, pinned, ...), then a backing store holding every row (mmap or disk)."""

    tier = "tiered"
    counts_own_hits = True

    def __init__(self, caches: Sequence[RowCache], backing: FeatureStore, device: Any = "cpu") -> None:
        super().__init__(backing.num_rows, backing.dim, backing.dtype, device)
        self.caches = list(caches)
        self.backing = backing
        # a future-aware device cache among the tiers: the training source steps it batch by batch
        self.future: Any = None

    def _gather(self, ids: Any, out: Any) -> None:
        import torch

        self._gather_at(ids, out, torch.arange(ids.numel()))

    def _gather_at(self, ids: Any, out: Any, at: Any) -> None:
        pos = at  # rows of ``out`` still to fill, and (``left``) which of ``ids`` they take
        left = ids
        for cache in self.caches:
            slots = cache.lookup(left)
            hit = slots >= 0
            n = int(hit.sum())
            if n:
                move_rows(cache.rows, slots[hit], out, pos[hit])
                pos, left = pos[~hit], left[~hit]
            self.stats.add_hits(cache.tier, n, from_disk=False)
            if pos.numel() == 0:
                return
        before = self.backing.stats.disk_counters()
        put_rows(out, pos, self.backing.gather(left, device=out.device))
        self.stats.add_hits(self.backing.tier, pos.numel(), from_disk=False)
        self.stats.add_disk_since(self.backing.stats, before)

    def close(self) -> None:
        self.backing.close()
