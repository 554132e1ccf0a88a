"""From byte budgets and a plan to a tiered store: how big each cache is, which rows it holds.

The hottest rows by the plan's access counts fill the device cache, the next the pinned host
cache. Budgets are ``gpu_cache`` / ``cpu_cache`` bytes, or derived from ``memory_budget``
(a quarter for the host cache; without CUDA the "device" cache is host memory too and takes
an eighth). The placement is saved beside the packs so that every epoch is packed against the
same caches.

Example:
    >>> CacheBudgets(memory_budget=1 << 30).resolve(cuda=False)
    (134217728, 268435456)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gnn_ooc.graphstore.features.cache import RowCache
from gnn_ooc.graphstore.features.direct import DirectStore
from gnn_ooc.graphstore.features.policies.base import Serving
from gnn_ooc.graphstore.features.policies.future import (
    FUTURE_SLOT_OVERHEAD,
    FutureAwareCache,
    FutureServing,
)
from gnn_ooc.graphstore.features.policies.static import (
    StaticServing,
    place_by_hotness,
    rows_for_budget,
)
from gnn_ooc.graphstore.features.stores import MmapStore
from gnn_ooc.graphstore.features.tiered import TieredStore
from gnn_ooc.graphstore.format.npyfile import write_array
from gnn_ooc.graphstore.io.atomic import Staging


@dataclass(frozen=True)
class CacheBudgets:
    """Cache sizes in bytes; ``None`` derives them from ``memory_budget``."""

    gpu_cache: int | None = None
    cpu_cache: int | None = None
    memory_budget: int = 1 << 30

    def resolve(self, cuda: bool) -> tuple[int, int]:
        """(device cache bytes, pinned host cache bytes)."""
        cpu = self.cpu_cache if self.cpu_cache is not None else self.memory_budget // 4
        if self.gpu_cache is not None:
            return self.gpu_cache, cpu
        if cuda:
            import torch

            free, _total = torch.cuda.mem_get_info()
            return free // 4, cpu
        return self.memory_budget // 8, cpu


@dataclass(frozen=True)
class Placement:
    """Which rows each static cache holds (sorted global ids), and the future-aware device cache
    when there is one (its rows follow the plan: ``future`` says how, for the packer and the store)."""

    device: np.ndarray
    pinned: np.ndarray
    future: FutureServing | None = None

    @property
    def cached(self) -> np.ndarray:
        return np.union1d(self.device, self.pinned)

    @property
    def serving(self) -> Serving:
        """The caches as the packer sees them."""
        return self.future if self.future is not None else StaticServing(self.cached)

    def save(self, folder: Path) -> None:
        """Write both id files into a staged folder renamed into place: never half of a placement."""
        with Staging(folder, what="gnn-ooc pack (placement)") as stage:
            for name in ("device", "pinned"):
                write_array(stage.path / f"{name}.npy", getattr(self, name).astype(np.int64), root=stage.path)
            stage.publish()

    @staticmethod
    def load(folder: Path) -> Placement:
        return Placement(np.load(folder / "device.npy"), np.load(folder / "pinned.npy"))


def place_from_counts(counts: np.ndarray, row_bytes: int, budgets: CacheBudgets, cuda: bool) -> Placement:
    device_bytes, pinned_bytes = budgets.resolve(cuda)
    slot = row_bytes + RowCache.SLOT_OVERHEAD  # a cache's bytes cover its lookup array too
    dev, pin = place_by_hotness(counts, [rows_for_budget(device_bytes, slot), rows_for_budget(pinned_bytes, slot)])
    return Placement(dev, pin)


def place_for_future(counts: np.ndarray, row_bytes: int, budgets: CacheBudgets, cuda: bool, window: int) -> Placement:
    """The future-aware device cache in the device budget, a victim buffer of half the pinned
    budget, and a static pinned cache of the hottest rows in the other half."""
    device_bytes, pinned_bytes = budgets.resolve(cuda)
    slot = row_bytes + RowCache.SLOT_OVERHEAD
    tracked = row_bytes + FUTURE_SLOT_OVERHEAD
    victim = rows_for_budget(pinned_bytes // 2, tracked)
    (pin,) = place_by_hotness(counts, [rows_for_budget(pinned_bytes - pinned_bytes // 2, slot)])
    future = FutureServing(rows_for_budget(device_bytes, tracked), victim, int(counts.shape[0]), window, pinned=pin)
    return Placement(np.empty(0, np.int64), pin, future)


def build_tiered_store(dataset: Any, placement: Placement, *, backing: str = "direct", device: Any = "cpu",
                       threads: int = 8, max_buffer: int = 32 << 20) -> TieredStore:
    """Caches filled from the backing store (sorted reads), then the backing store for the rest
    (direct reads through a buffer of at most ``max_buffer`` bytes)."""
    with DirectStore.of(dataset, threads=threads, max_buffer=max_buffer) as filler:  # its buffers go when filled
        caches: list[Any] = [RowCache.filled("device", placement.device, filler, device=device),
                             RowCache.filled("pinned", placement.pinned, filler)]
    store = (DirectStore.of(dataset, threads=threads, max_buffer=max_buffer) if backing == "direct"
             else MmapStore.of(dataset))
    future = None
    if placement.future is not None:  # its tiers first; it fills itself epoch by epoch
        f = placement.future
        future = FutureAwareCache(f.capacity, store.dim, store.dtype, device, store, None, f.window,
                                  victim_rows=f.victim_rows, serving=f)
        caches = [*future.tiers(), caches[1]]
    tiered = TieredStore(caches, store, device=device)
    tiered.future = future
    return tiered
