"""The feature store's contract: ``FeatureStore`` (gather rows by global id into an output) and the
``StoreStats`` every store keeps (rows per tier, disk rows, bytes and reads).

Example:
    >>> StoreStats(row_bytes=4).hit_rates()
    {}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from gnn_ooc.errors import InputError


@dataclass
class StoreStats:
    """What a store served: rows and bytes per tier, bytes read from disk, read amplification.

    Example:
        >>> s = StoreStats(row_bytes=512)
        >>> s.add_hits("disk", 10); s.disk_bytes_read = 40960
        >>> s.read_amplification
        8.0
    """

    row_bytes: int = 0
    rows: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    disk_rows: int = 0
    disk_bytes_read: int = 0
    disk_reads: int = 0

    def add_hits(self, tier: str, rows: int, *, from_disk: bool | None = None) -> None:
        self.hits[tier] = self.hits.get(tier, 0) + int(rows)
        self.rows += int(rows)
        if from_disk if from_disk is not None else tier == "disk":
            self.disk_rows += int(rows)

    @property
    def bytes_served(self) -> int:
        return self.rows * self.row_bytes

    @property
    def read_amplification(self) -> float:
        """Bytes read from disk / bytes of the rows served from disk (1.0 is ideal; 0 when none)."""
        served = self.disk_rows * self.row_bytes
        return self.disk_bytes_read / served if served else 0.0

    def hit_rates(self) -> dict[str, float]:
        return {k: v / self.rows for k, v in self.hits.items()} if self.rows else {}

    def disk_counters(self) -> tuple[int, int, int]:
        """(disk rows, disk bytes, disk reads) now: pass it to ``add_disk_since`` after a delegation."""
        return self.disk_rows, self.disk_bytes_read, self.disk_reads

    def add_disk_since(self, backing: StoreStats, before: tuple[int, int, int]) -> None:
        """Count the disk rows, bytes and reads ``backing`` made since ``before`` as this store's
        (a cache's misses go to its backing store; the reads are the cache's to report)."""
        rows, nbytes, reads = backing.disk_counters()
        self.disk_rows += rows - before[0]
        self.disk_bytes_read += nbytes - before[1]
        self.disk_reads += reads - before[2]

    def merge(self, other: StoreStats) -> None:
        self.rows += other.rows
        self.disk_rows += other.disk_rows
        self.disk_bytes_read += other.disk_bytes_read
        self.disk_reads += other.disk_reads
        for k, v in other.hits.items():
            self.hits[k] = self.hits.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "bytes_served": self.bytes_served, "hits": dict(self.hits),
                "hit_rates": self.hit_rates(), "disk_rows": self.disk_rows,
                "disk_bytes_read": self.disk_bytes_read, "disk_reads": self.disk_reads,
                "read_amplification": self.read_amplification}


class FeatureStore(ABC):
    """Rows of an [N, D] feature matrix gathered by global id into a (preallocated) output tensor.

    ``gather`` checks the ids and the output, then calls the one hook ``_gather(ids, out)`` with
    a CPU int64 tensor of ids in range and an output of the right shape, dtype and device.
    Subclasses set ``tier`` (the name hits are counted under) and may override ``close``.

    Example:
        >>> import torch
        >>> from gnn_ooc.graphstore.features.stores import MemoryStore
        >>> store = MemoryStore(torch.arange(12.0).reshape(6, 2))
        >>> store.gather(torch.tensor([4, 1])).tolist()
        [[8.0, 9.0], [2.0, 3.0]]
    """

    tier: str = "store"
    #: Stores made of tiers count their hits per tier themselves; ``gather`` then counts none.
    counts_own_hits: bool = False

    def __init__(self, num_rows: int, dim: int, dtype: Any, device: Any = "cpu") -> None:
        import torch

        self.num_rows, self.dim, self.dtype = int(num_rows), int(dim), dtype
        self.device = torch.device(device)
        self.row_bytes = self.dim * torch.empty(0, dtype=dtype).element_size()
        self.stats = StoreStats(row_bytes=self.row_bytes)

    def gather(self, ids: Any, out: Any = None, *, device: Any = None) -> Any:
        """Rows ``ids`` (any 1-D integer sequence) into ``out`` ([len(ids), D], this dtype) or a new tensor."""
        idx = self._ids(ids)
        out = self._out(idx.shape[0], out, device)
        if idx.shape[0]:
            self._gather(idx, out)
        if not self.counts_own_hits:
            self.stats.add_hits(self.tier, idx.shape[0])
        return out

    def gather_at(self, ids: Any, out: Any, at: Any) -> Any:
        """Rows ``ids`` into rows ``at`` of ``out`` (``out[at[i]] = row ids[i]``): a batch's rows from
        this store placed among rows that came from elsewhere, without a second copy."""
        import torch

        idx = self._ids(ids)
        pos = torch.as_tensor(at, dtype=torch.int64).reshape(-1)
        if pos.shape[0] != idx.shape[0]:
            raise InputError(None, f"{idx.shape[0]} ids for {pos.shape[0]} output rows", expected="as many of each")
        if out.dim() != 2 or out.shape[1] != self.dim or out.dtype != self.dtype:
            raise InputError(None, f"output is {out.dtype}{tuple(out.shape)}", expected=f"{self.dtype}[*, {self.dim}]")
        if idx.shape[0]:
            self._gather_at(idx, out, pos)
        if not self.counts_own_hits:
            self.stats.add_hits(self.tier, idx.shape[0])
        return out

    @abstractmethod
    def _gather(self, ids: Any, out: Any) -> None:
        """Fill ``out`` ([len(ids), D], this store's dtype and device) with rows ``ids`` (CPU int64, in range)."""

    def _gather_at(self, ids: Any, out: Any, at: Any) -> None:
        """``gather_at``'s hook; by default a gather then a scatter (stores that can place rows
        directly override it)."""
        from gnn_ooc.graphstore.io.rowops import put_rows

        rows = self._out(ids.shape[0], None, out.device)
        self._gather(ids, rows)
        put_rows(out, at, rows)

    def _ids(self, ids: Any) -> Any:
        import torch

        idx = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        if idx.dim() != 1 or (idx.numel() and (idx.dtype.is_floating_point or idx.dtype == torch.bool)):
            raise InputError(None, f"ids must be a 1-D integer sequence, got {idx.dtype}{tuple(idx.shape)}")
        idx = idx.to("cpu", torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_rows):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise InputError(None, f"row id {bad} is out of range", expected=f"0 <= id < {self.num_rows}")
        return idx

    def _out(self, n: int, out: Any, device: Any) -> Any:
        import torch

        if out is None:
            return torch.empty((n, self.dim), dtype=self.dtype, device=device or self.device)
        if tuple(out.shape) != (n, self.dim) or out.dtype != self.dtype:
            raise InputError(None, f"output is {out.dtype}{tuple(out.shape)}",
                             expected=f"{self.dtype}{(n, self.dim)}")
        return out

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release files and buffers (a no-op for stores that hold none)."""

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
