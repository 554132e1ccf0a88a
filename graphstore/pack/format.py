"""The pack format: where a pack lives, what ``pack.json`` says, and the check every reader runs.

A pack sits beside the plan's epochs::

    PLAN/packs/NAME/epoch-000003/pack.json        segments (batches, rows, run ends per batch, file,
                                                  size, CRC-32), the cache placement's digest, the
                                                  dataset identity, the format name and version
    PLAN/packs/NAME/epoch-000003/positions.npy    int32, aligned with the epoch's nodes.npy: the row
                                                  of each batch node in its segment; -1 = cached,
                                                  -2 = in an unpacked segment
    PLAN/packs/NAME/epoch-000003/fills.npy        int32: per batch, the segment row of each row a
                                                  cache loads at the batch's step (the future-aware
                                                  cache's fills, in its order; -2 = unpacked)
    PLAN/packs/NAME/epoch-000003/fill_index.npy   int64 [B + 1]: where each batch's fills start
    PLAN/packs/NAME/epoch-000003/segment-000000.npy   [rows, D] features (the dataset's dtype)
    PLAN/packs/NAME/placement/                    the cache placement the packs were made for

Example:
    >>> epoch_dir(Path("PLAN"), "default", 3).as_posix()
    'PLAN/packs/default/epoch-000003'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gnn_ooc.errors import ChecksumError, DatasetError
from gnn_ooc.graphstore.io.owned import check_name

PACK_FORMAT = "gnn-ooc-pack"
PACK_VERSION = 3  # 3: the rows caches load per step (fills); 2: rows in order of first use; 1: id order
CACHED, UNPACKED = -1, -2


META_NAME = "pack.json"


def packs_root(plan_path: Path) -> Path:
    """The folder holding every pack of the plan at ``plan_path``, one folder per pack name."""
    return Path(plan_path) / "packs"


def packs_dir(plan_path: Path, name: str) -> Path:
    """The folder of the packs named ``name`` in the plan at ``plan_path``."""
    return packs_root(plan_path) / name


def epoch_dir(plan_path: Path, name: str, epoch: int) -> Path:
    """The folder of epoch ``epoch``'s pack."""
    return packs_dir(plan_path, name) / f"epoch-{epoch:06d}"


def read_meta(folder: Path) -> dict[str, Any]:
    """``folder``'s ``pack.json``, checked for this format and version (``DatasetError`` when the
    pack is missing, of another format or version; ``ChecksumError`` when it is not valid JSON)."""
    path = Path(folder) / META_NAME
    if not path.is_file():
        raise DatasetError(f"{folder}: not packed (no {META_NAME}; run gnn-ooc pack)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise ChecksumError(path, f"not valid JSON ({e}); remove the pack (gnn-ooc clean) and pack again") from None
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT:
        raise DatasetError(f"{path}: not a gnn-ooc pack (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != PACK_VERSION:
        raise DatasetError(f"{path}: pack version {meta.get('version')} (this gnn-ooc reads version {PACK_VERSION}); "
                           "pack the epoch again (gnn-ooc pack --replace, or remove it with gnn-ooc clean)")
    return meta


@dataclass(frozen=True)
class PackSpec:
    """How to pack; the defaults here are the only defaults.

    Example:
        >>> PackSpec(segment_batches=32).segment_batches
        32
    """

    name: str = "default"
    segment_batches: int = 64
    memory_budget: int = 1 << 30
    pack_budget: int | None = None
    read_chunk: int = 8 << 20
    max_open_segments: int = 256

    def __post_init__(self) -> None:
        check_name(self.name, "pack")
        if self.segment_batches < 1:
            raise ValueError(f"segment_batches {self.segment_batches}: expected >= 1 batches per segment")
        if self.pack_budget is not None and self.pack_budget < 0:
            raise ValueError(f"pack_budget {self.pack_budget}: expected >= 0 bytes")

    def identity(self) -> dict[str, Any]:
        """The settings an existing pack must match to be kept."""
        return {"segment_batches": self.segment_batches, "pack_budget": self.pack_budget, "version": PACK_VERSION}
