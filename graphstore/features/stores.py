"""Whole-matrix feature stores: rows in RAM (the reference) and rows in a memory map.

Example:
    >>> import numpy as np, torch
    >>> store = MemoryStore(torch.ones(4, 3))
    >>> store.gather([3, 0]).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.io.rowops import move_rows, put_rows


def torch_dtype(name: str) -> Any:
    """The torch dtype of a dataset's ``feature_dtype`` name."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class MemoryStore(FeatureStore):
    """Every row in a tensor (RAM or a device): the reference, and ``--mode memory``'s store."""

    tier = "memory"

    def __init__(self, rows: Any) -> None:
        import torch

        t = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rows))
        super().__init__(t.shape[0], t.shape[1], t.dtype, t.device)
        self.rows = t

    @classmethod
    def of(cls, dataset: Any) -> MemoryStore:
        """A dataset's features read into RAM with sequential reads (no memory map kept resident), their
        CRC-32 checked on the way (``ChecksumError`` when they differ from the manifest)."""
        import torch

        from gnn_ooc.graphstore.format.integrity import read_verified

        mapped = dataset.features
        rows = np.empty(mapped.shape, mapped.dtype)
        entry = dataset.manifest.files["features"]
        read_verified(dataset.path / entry.name, entry, int(mapped.offset), rows)  # checked as it loads
        t = torch.from_numpy(rows)
        return cls(t.view(torch.bfloat16) if dataset.feature_dtype == "bfloat16" else t)

    def _gather(self, ids: Any, out: Any) -> None:
        import torch

        if out.device == self.rows.device:
            torch.index_select(self.rows, 0, ids.to(self.rows.device), out=out)
        else:
            out.copy_(self.rows[ids.to(self.rows.device)])

    def _gather_at(self, ids: Any, out: Any, at: Any) -> None:
        move_rows(self.rows, ids, out, at)


class MmapStore(FeatureStore):
    """Rows read through a memory map of the dataset's features (page faults; MADV_RANDOM).

    The naive out-of-core path: every missing row costs a 4 KiB page and a round trip. Ids are
    read in file order, then put back in request order.
    """

    tier = "mmap"

    def __init__(self, features: np.ndarray, dtype: Any) -> None:
        super().__init__(features.shape[0], features.shape[1], dtype)
        self.features = features

    @classmethod
    def of(cls, dataset: Any) -> MmapStore:
        return cls(dataset.features, torch_dtype(dataset.feature_dtype))

    def _gather(self, ids: Any, out: Any) -> None:
        import torch

        idx = ids.numpy()
        order = np.argsort(idx, kind="stable")
        rows = torch.from_numpy(np.ascontiguousarray(self.features[idx[order]]))
        if rows.dtype != self.dtype:
            rows = rows.view(self.dtype)  # bfloat16 is stored as its uint16 bit patterns
        put_rows(out, torch.from_numpy(order), rows)
