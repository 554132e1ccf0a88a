"""The feature-store contract, written once and run against every store; tiers, placement, direct reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.features.cache import RowCache
from gnn_ooc.graphstore.features.direct import DirectStore
from gnn_ooc.graphstore.features.policies.static import place_by_hotness
from gnn_ooc.graphstore.features.stores import MemoryStore, MmapStore
from gnn_ooc.graphstore.features.tiered import TieredStore
from gnn_ooc.graphstore.format.npyfile import write_array
from gnn_ooc.testing import ContractError, check_feature_store

N, D = 3000, 40  # 160-byte rows: several per page, some straddle two pages


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
    path = tmp_path_factory.mktemp("feat") / "features.npy"
    write_array(path, x, root=path.parent)
    return x, path


def tiered(x: np.ndarray, path: Path) -> FeatureStore:
    backing = DirectStore(path, torch.float32, threads=3)
    device = RowCache.filled("device", np.arange(0, N, 7), backing)
    pinned = RowCache.filled("pinned", np.arange(1, N, 5), backing)
    return TieredStore([device, pinned], backing)


def future(x: np.ndarray, path: Path) -> FeatureStore:
    from gnn_ooc.graphstore.features.policies.future import FutureAwareCache

    backing = DirectStore(path, torch.float32)
    batches = [np.arange(i, N, 97) for i in range(5)]
    cache = FutureAwareCache(200, D, torch.float32, "cpu", backing, batches, window=2, victim_rows=50)
    cache.prefetch(0)
    return cache


def direct_uring(x: np.ndarray, path: Path) -> FeatureStore:
    from gnn_ooc.capabilities import io_uring_available

    if not io_uring_available():
        pytest.skip("io_uring is unavailable here")
    store = DirectStore(path, torch.float32, io="io_uring", queue_depth=4, max_run=8192)  # many waves
    assert store.io == "io_uring"
    return store


def online(kind: str) -> Callable[[np.ndarray, Path], FeatureStore]:
    def make(x: np.ndarray, path: Path) -> FeatureStore:
        from gnn_ooc.graphstore.features.policies.clock import ClockCache
        from gnn_ooc.graphstore.features.policies.sieve import SieveCache

        cls = SieveCache if kind == "sieve" else ClockCache
        return cls(100, D, torch.float32, MmapStore(np.load(path, mmap_mode="r"), torch.float32))

    return make


STORES: dict[str, Callable[[np.ndarray, Path], FeatureStore]] = {
    "future": future,
    "sieve": online("sieve"),
    "clock": online("clock"),
    "memory": lambda x, p: MemoryStore(torch.from_numpy(x)),
    "mmap": lambda x, p: MmapStore(np.load(p, mmap_mode="r"), torch.float32),
    "direct": lambda x, p: DirectStore(p, torch.float32, threads=4, max_run=8192, io="threads"),
    "direct-uring": direct_uring,
    "buffered": lambda x, p: DirectStore(p, torch.float32, direct=False),
    "tiered": tiered,
}


@pytest.mark.parametrize("name", sorted(STORES))
def test_contract(name: str, features: tuple[np.ndarray, Path]) -> None:
    x, path = features
    with STORES[name](x, path) as store:
        assert (store.num_rows, store.dim, store.dtype, store.row_bytes) == (N, D, torch.float32, 4 * D)
        check_feature_store(store, x)  # the checks gnn_ooc.testing ships to users
        assert store.stats.rows == 505
        with pytest.raises(InputError, match=f"row id {N} is out of range"):
            store.gather([0, N])
        with pytest.raises(InputError, match="row id -1"):
            store.gather([-1])
        with pytest.raises(InputError, match="output is"):
            store.gather([1, 2], out=torch.empty(3, D))
        with pytest.raises(InputError, match="integer"):
            store.gather(torch.tensor([0.5]))
        into = torch.full((6, D), -1.0)
        assert store.gather_at([7, N - 1, 7], into, torch.tensor([4, 0, 2])) is into  # rows placed, others kept
        assert torch.equal(into[[4, 0, 2]], torch.from_numpy(x[[7, N - 1, 7]]))
        assert bool((into[[1, 3, 5]] == -1).all())
        with pytest.raises(InputError, match="2 ids for 3 output rows"):
            store.gather_at([1, 2], into, [0, 1, 2])
        with pytest.raises(IndexError):
            store.gather_at([1], into, [6])


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, N - 1), max_size=300), cached=st.lists(st.integers(0, N - 1), max_size=200))
def test_tiered_equals_memory(features: tuple[np.ndarray, Path], ids: list[int], cached: list[int]) -> None:
    x, path = features
    backing = MmapStore(np.load(path, mmap_mode="r"), torch.float32)
    cache = RowCache.filled("device", cached, backing)
    store = TieredStore([cache], backing)
    assert torch.equal(store.gather(ids), torch.from_numpy(x[ids]))
    into = torch.zeros(len(ids) + 1, D)
    store.gather_at(ids, into, torch.arange(len(ids), 0, -1))
    assert torch.equal(into[1:].flip(0), torch.from_numpy(x[ids]).reshape(-1, D))
    held = set(cached)
    assert store.stats.hits.get("device", 0) == 2 * sum(i in held for i in ids)
    assert store.stats.rows == 2 * len(ids)


def test_hits_bytes_and_amplification(features: tuple[np.ndarray, Path]) -> None:
    x, path = features
    store = tiered(x, path)
    ids = np.arange(0, 700)
    store.gather(ids)
    s = store.stats
    device, pinned = len(range(0, 700, 7)), len([i for i in range(1, 700, 5) if i % 7])
    assert s.hits == {"device": device, "pinned": pinned, "disk": 700 - device - pinned}
    assert s.disk_rows == 700 - device - pinned
    # the misses are read as one run over rows 0..699 (28 pages), cached rows' bytes included
    assert s.disk_reads == 1 and s.disk_bytes_read == 28 * 4096
    assert s.read_amplification == pytest.approx(28 * 4096 / (s.disk_rows * 160))
    store.close()
    with DirectStore(path, torch.float32) as direct:  # no holes: only the partial end pages are extra
        direct.gather(np.arange(1000, 3000))
        assert 1.0 <= direct.stats.read_amplification < 1.05


def test_direct_reads_coalesce_rows_in_one_page(features: tuple[np.ndarray, Path]) -> None:
    x, path = features
    with DirectStore(path, torch.float32) as store:
        store.gather(np.arange(25))  # 4000 bytes from byte 4096: one page
        assert store.stats.disk_reads == 1 and store.stats.disk_bytes_read == 4096
        store.gather([0, 2000])  # far apart: two reads, a page each
        assert store.stats.disk_reads == 3 and store.stats.disk_bytes_read == 3 * 4096


def test_direct_backends_agree_and_name_short_files(features: tuple[np.ndarray, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gnn_ooc import capabilities
    from gnn_ooc.capabilities import io_uring_available
    from gnn_ooc.graphstore.features.direct import BackendUnavailable

    x, path = features
    ids = np.random.default_rng(3).integers(0, N, 2000)
    backends = ["threads", "io_uring"] if io_uring_available() else ["threads"]
    short = tmp_path / "short.npy"
    short.write_bytes(path.read_bytes())
    for io in backends:
        with DirectStore(path, torch.float32, io=io, max_run=4096) as store:
            assert torch.equal(store.gather(ids), torch.from_numpy(x[ids]))
            assert store.stats.disk_reads > 100
        with DirectStore(short, torch.float32, io=io) as store:
            os.truncate(short, short.stat().st_size - 1000)  # shrinks under an open store
            with pytest.raises(InputError, match="short.npy: read .* expected"):
                store.gather([N - 1])
            short.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="io must be one of"):
        DirectStore(path, torch.float32, io="aio")
    with DirectStore(path, torch.float32) as store:
        assert store.io == backends[-1]  # auto: io_uring (the faster here) where it can run
    monkeypatch.setattr(capabilities, "io_uring_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="io_uring_available"):
        DirectStore(path, torch.float32, io="io_uring")
    with DirectStore(path, torch.float32) as store:
        assert store.io == "threads"


def test_placement_by_hotness() -> None:
    counts = np.random.default_rng(0).integers(0, 20, 10_000)
    tiers = place_by_hotness(counts, [100, 300], chunk=777)
    order = np.lexsort((np.arange(counts.size), -counts))  # hottest first, ties by lower id
    want = order[: 400][counts[order[:400]] > 0]
    assert np.array_equal(np.sort(np.concatenate(tiers)), np.sort(want))
    assert np.array_equal(tiers[0], np.sort(want[:100])) and counts[tiers[0]].min() >= counts[tiers[1]].max()
    assert [t.size for t in place_by_hotness(np.array([0, 0, 3]), [2, 2])] == [1, 0]  # never-used nodes stay out


def test_disk_rows_through_a_host_cache_count_once(features: tuple[np.ndarray, Path]) -> None:
    """Tiered over SIEVE over disk (online mode): rows read from disk are known, so the read
    amplification is a number, and a repeated missing id is read once."""
    from gnn_ooc.graphstore.features.policies.sieve import SieveCache

    x, path = features
    backing = DirectStore(path, torch.float32)
    store = TieredStore([RowCache.filled("device", np.arange(0, N, 7), backing)],
                        SieveCache(64, D, torch.float32, backing))
    ids = np.array([1, 2, 2, 3, 7, 3])  # 7 is in the device cache; 1, 2, 3 miss, 2 and 3 twice
    assert np.array_equal(store.gather(ids).numpy(), x[ids])
    st = store.stats
    assert st.rows == 6 and st.hits == {"device": 1, "host": 5}
    assert st.disk_rows == 3 and st.disk_bytes_read > 0
    assert st.read_amplification == st.disk_bytes_read / (3 * D * 4)


class _OffByOne(MemoryStore):
    """Breaks the contract: serves the next row."""

    def _gather(self, ids: torch.Tensor, out: torch.Tensor) -> None:
        super()._gather((ids + 1) % self.num_rows, out)


def test_the_shipped_check_fails_a_broken_store(features: tuple[np.ndarray, Path]) -> None:
    x, _ = features
    with pytest.raises(ContractError, match="_OffByOne: gathered rows differ from the reference"):
        check_feature_store(_OffByOne(torch.from_numpy(x)), x)
    with pytest.raises(ContractError, match=f"holds {N} x {D}, expected {N - 1} x {D}"):
        check_feature_store(MemoryStore(torch.from_numpy(x)), x[:-1])
