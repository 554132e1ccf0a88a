"""Shared fixtures: small raw graphs written in the raw layout, a reference CSC, and the real
Cora and CiteSeer raw folders rebuilt from the copies vendored in tests/data."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.vendored import materialise

#: the originals of tests/data/*.npz; a fresh clone lacks it, and only the parity test reads it
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def reference_csc(src: np.ndarray, dst: np.ndarray, n: int, *, undirected: bool = False,
                  drop_self_loops: bool = False, dedup: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CSC built in memory the obvious way: sources grouped by destination, sorted."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    if drop_self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    if undirected:
        rev = src != dst
        src, dst = np.concatenate([src, dst[rev]]), np.concatenate([dst, src[rev]])
    if dedup and src.size:
        pairs = np.unique(np.stack([dst, src], axis=1), axis=0)
        dst, src = pairs[:, 0], pairs[:, 1]
    order = np.lexsort((src, dst))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return indptr, src[order]


def write_raw(root: Path, src: np.ndarray, dst: np.ndarray, *, features: np.ndarray | None = None,
              labels: np.ndarray | None = None, splits: dict[str, np.ndarray] | None = None,
              row_group_size: int | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    table = pa.table({"src": np.asarray(src, np.int64), "dst": np.asarray(dst, np.int64)})
    pq.write_table(table, root / "edges.parquet", row_group_size=row_group_size)
    if features is not None:
        np.save(root / "node_features.npy", features)
    if labels is not None:
        np.save(root / "node_labels.npy", labels)
    if splits:
        (root / "split").mkdir(exist_ok=True)
        for name, ids in splits.items():
            np.save(root / "split" / f"{name}.npy", ids)
    return root


def random_graph(rng: np.random.Generator, n: int, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Skewed destinations, self loops, duplicates, isolated nodes (ids above n // 2 are rarer)."""
    src = rng.integers(0, max(1, n // 2), e)
    dst = np.minimum(rng.zipf(1.6, e) - 1, n - 1)
    dup = rng.integers(0, e, e // 10)
    src[: len(dup)], dst[: len(dup)] = src[dup], dst[dup]
    loops = rng.integers(0, e, e // 20)
    dst[loops] = src[loops]
    return src, dst


@pytest.fixture(scope="session")
def real_raw(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``real_raw("cora")``: the raw folder (edges.parquet, node_features.npy, node_labels.npy,
    split/) of a real dataset, rebuilt once per session from tests/data/<name>.npz. A missing
    vendored file fails the test that asks for it; nothing reads ../shared."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = materialise(name, tmp_path_factory.mktemp(f"raw-{name}"))
        return made[name]

    return get


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def listing(path: Path) -> list[str]:
    """Every entry below ``path`` (hidden ones included), relative."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []
