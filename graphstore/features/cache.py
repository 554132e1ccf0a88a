"""A cache tier: a fixed set of rows held on a device (GPU memory, or the CPU without one) or in
pinned host memory, looked up by a sorted id array (memory follows the cache, not the graph).

Example:
    >>> import torch
    >>> from gnn_ooc.graphstore.features.stores import MemoryStore
    >>> src = MemoryStore(torch.arange(10.0).reshape(5, 2))
    >>> cache = RowCache.filled("device", torch.tensor([3, 1]), src)
    >>> cache.lookup(torch.tensor([1, 2, 3])).tolist()
    [0, -1, 1]
"""

from __future__ import annotations

from typing import Any

from gnn_ooc.capabilities import cuda_available
from gnn_ooc.graphstore.features.base import FeatureStore


class RowCache:
    """Rows of the ids in ``ids`` (held sorted), on ``device``; ``pinned`` page-locks host rows under CUDA."""

    SLOT_OVERHEAD = 8  # bytes per row besides the row: its id in the sorted lookup array

    def __init__(self, tier: str, ids: Any, rows: Any) -> None:
        import torch

        self.tier = tier
        if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
            order = torch.argsort(ids)
            ids, rows = ids[order], rows[order.to(rows.device)]
        self.ids = ids.contiguous()  # sorted already (as ``filled`` makes them): no second copy
        self.rows = rows.contiguous()
        if tier == "pinned" and cuda_available() and self.rows.device.type == "cpu":
            self.rows = self.rows.pin_memory()
        self._device_ids = self.ids.to(self.rows.device)
        del torch

    @classmethod
    def filled(cls, tier: str, ids: Any, source: FeatureStore, *, device: Any = "cpu",
               chunk_bytes: int = 8 << 20) -> RowCache:
        """A cache of ``ids`` with rows read from ``source`` in chunks of ``chunk_bytes`` (sorted, so
        disk reads are in order and the source's read buffer stays small)."""
        import torch

        chunk = max(1, chunk_bytes // max(1, source.row_bytes))
        ids = torch.as_tensor(ids, dtype=torch.int64).unique()
        rows = torch.empty((ids.numel(), source.dim), dtype=source.dtype, device=device)
        for s in range(0, ids.numel(), chunk):
            source.gather(ids[s : s + chunk], out=rows[s : s + chunk])
        return cls(tier, ids, rows)

    @property
    def num_rows(self) -> int:
        return int(self.ids.numel())

    @property
    def nbytes(self) -> int:
        return int(self.rows.numel() * self.rows.element_size())

    def lookup(self, ids: Any) -> Any:
        """Slot of each id, -1 where the cache does not hold it (CPU int64)."""
        import torch

        if self.ids.numel() == 0:
            return torch.full_like(ids, -1)
        pos = torch.searchsorted(self.ids, ids).clamp_(max=self.ids.numel() - 1)
        return torch.where(self.ids[pos] == ids, pos, torch.full_like(pos, -1))
