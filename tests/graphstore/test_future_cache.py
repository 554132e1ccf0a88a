"""The future-aware device cache holds, step by step, what a reference Belady simulation says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.features.policies.future import (
    NO_USE,
    Batches,
    FutureAwareCache,
    NextUse,
    PlanBatches,
    reference_belady,
)
from gnn_ooc.graphstore.features.stores import MemoryStore

N, D = 60, 3


def skewed_batches(rng: np.random.Generator, steps: int, size: int, n: int = N) -> list[np.ndarray]:
    """Batches of power-law ids (a few hot ids recur, duplicates within a batch), of varying size."""
    p = 1.0 / np.arange(1, n + 1) ** 1.1
    perm = rng.permutation(n)  # hot ids spread over the id range, so id order is not hotness order
    return [perm[rng.choice(n, int(rng.integers(1, size + 1)), p=p / p.sum())] for _ in range(steps)]


def features(n: int = N) -> torch.Tensor:
    return torch.arange(n * D, dtype=torch.float32).reshape(n, D)


def make(batches: Batches, capacity: int, window: int, victim: int,
         hotness: np.ndarray | None = None, x: torch.Tensor | None = None, bypass: bool = False) -> FutureAwareCache:
    x = features() if x is None else x
    return FutureAwareCache(capacity, D, torch.float32, "cpu", MemoryStore(x), batches, window,
                            hotness=hotness, victim_rows=victim, bypass=bypass)


def check_against_reference(batches: list[np.ndarray], capacity: int, window: int, victim: int,
                            hotness: np.ndarray | None, bypass: bool = False) -> None:
    x = features()
    cache = make(batches, capacity, window, victim, hotness, x, bypass)
    ref = reference_belady(batches, capacity, window, hotness, victim, bypass=bypass)
    want = {"device": 0, "victim": 0, "memory": 0}
    for t, batch in enumerate(batches):
        cache.prefetch(t)
        dev, vic = ref[t]
        assert set(cache.resident_ids().tolist()) == dev, f"device at step {t}"
        assert set(cache.victim_ids().tolist()) == vic, f"victim at step {t}"
        # every held row is the right row: copies between tiers never clobber one another
        held = cache.resident_ids()
        assert torch.equal(cache.rows[torch.from_numpy(cache._dev.lookup(held))], x[held])
        kept = cache.victim_ids()
        assert torch.equal(cache.victim[torch.from_numpy(cache._vic.lookup(kept))], x[kept])
        assert torch.equal(cache.gather(batch, batch=t), x[batch])
        for v in batch.tolist():
            want["device" if v in dev else "victim" if v in vic else "memory"] += 1
    assert cache.stats.hits == want
    assert cache.stats.rows == sum(b.size for b in batches)


@pytest.mark.parametrize("capacity", [0, 1, 4, 12, 40])
@pytest.mark.parametrize("window", [1, 3, 50])
@pytest.mark.parametrize("victim", [0, 2, 8])
def test_matches_reference(capacity: int, window: int, victim: int) -> None:
    rng = np.random.default_rng(capacity * 100 + window * 10 + victim)
    check_against_reference(skewed_batches(rng, 25, 10), capacity, window, victim, None)


@pytest.mark.parametrize("capacity", [0, 1, 4, 12, 40])
@pytest.mark.parametrize("window", [1, 3, 50])
@pytest.mark.parametrize("victim", [0, 2, 8])
def test_bypass_steps_match_reference(capacity: int, window: int, victim: int) -> None:
    """Bypass (what training packs for): a step after its batch keeps the best of the tiers and the batch."""
    rng = np.random.default_rng(capacity * 100 + window * 10 + victim + 1)
    batches = skewed_batches(rng, 25, 10)
    check_against_reference(batches, capacity, window, victim, None, bypass=True)
    check_against_reference(batches, capacity, window, victim, (np.arange(N) * 7919 % 5).astype(np.int64), bypass=True)


@pytest.mark.parametrize("capacity,window,victim", [(5, 2, 3), (10, 4, 6), (3, 8, 10)])
def test_matches_reference_with_hotness(capacity: int, window: int, victim: int) -> None:
    rng = np.random.default_rng(7)
    batches = skewed_batches(rng, 30, 8)
    hotness = rng.integers(0, 4, N).astype(np.uint32)  # few values: many ties, broken by id
    check_against_reference(batches, capacity, window, victim, hotness)
    check_against_reference(batches, capacity, window, victim, rng.random(N))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=6), min_size=1, max_size=12),
       st.integers(0, 10), st.integers(1, 6), st.integers(0, 6), st.booleans())
def test_matches_reference_property(raw: list[list[int]], capacity: int, window: int, victim: int,
                                    hot: bool) -> None:
    batches = [np.array(b, dtype=np.int64) for b in raw]
    hotness = (np.arange(N) * 7919 % 5).astype(np.int64) if hot else None
    check_against_reference(batches, capacity, window, victim, hotness)


def test_batch_resident_when_it_fits() -> None:
    batches = skewed_batches(np.random.default_rng(3), 40, 12)
    cache = make(batches, 12, 4, 4)
    for t, batch in enumerate(batches):
        cache.prefetch(t)
        assert np.isin(batch, cache.resident_ids()).all()
    assert set(cache.stats.hits) <= {"device", "victim", "memory"}
    assert cache.stats.hits.get("memory", 0) == 0  # nothing served past the prefetch


def test_prefetch_counts_add_up() -> None:
    batches = skewed_batches(np.random.default_rng(4), 30, 10)
    cache = make(batches, 5, 6, 2)
    ref = reference_belady(batches, 5, 6, None, 2)
    entered = from_victim = evicted = spilled = displaced = 0
    before: tuple[set[int], set[int]] = (set(), set())
    for t in range(len(batches)):
        cache.prefetch(t)
        new = ref[t][0] - before[0]
        entered += len(new)
        from_victim += len(new & before[1])
        evicted += len(before[0] - ref[t][0])
        spilled += len((before[0] - ref[t][0]) & ref[t][1])
        displaced += len(before[1] - ref[t][1] - ref[t][0])
        before = ref[t]
    assert cache.prefetch_stats.rows == entered
    assert cache.prefetch_stats.hits == {"victim": from_victim, "memory": entered - from_victim}
    assert from_victim > 0 and spilled > 0 and displaced > 0  # the victim buffer is exercised
    assert cache.evictions == {"victim": spilled, "dropped": evicted - spilled + displaced}


def test_everything_hits_after_warmup() -> None:
    batches = skewed_batches(np.random.default_rng(5), 20, 10)
    working = np.unique(np.concatenate(batches))
    cache = make(batches, working.size, len(batches), 0)
    cache.prefetch(0)
    assert np.array_equal(cache.resident_ids(), working)  # the window sees every batch
    for t, batch in enumerate(batches):
        assert torch.equal(cache.gather(batch, batch=t), features()[batch])
    assert cache.stats.hits == {"device": sum(b.size for b in batches), "victim": 0, "memory": 0}
    assert cache.prefetch_stats.rows == working.size  # each row read once


def test_next_use_matches_brute_force() -> None:
    rng = np.random.default_rng(6)
    batches = skewed_batches(rng, 15, 8)
    ids = np.arange(N)
    for window in (1, 2, 5, 20):
        nu = NextUse(batches, window)
        for t in [*range(len(batches) + 1), 3, 0, 9]:  # forward, then jumps back and ahead
            want = [next((s for s in range(t, min(t + window, len(batches))) if v in batches[s]), NO_USE)
                    for v in ids]
            assert nu(t, ids).tolist() == want
        assert nu.after(2, ids).tolist() == NextUse(batches, window)(3, ids).tolist()


def test_steps_forward_only_and_skips() -> None:
    batches = skewed_batches(np.random.default_rng(8), 10, 6)
    cache = make(batches, 6, 2, 2)
    cache.prefetch(2)
    cache.prefetch(2)  # idempotent
    cache.prefetch(7)  # skipping ahead is fine
    assert np.isin(batches[7], cache.resident_ids()).all()
    with pytest.raises(InputError):
        cache.prefetch(3)
    with pytest.raises(IndexError):
        cache.prefetch(len(batches) + 1)


def test_gather_without_prefetch_and_preallocated_out() -> None:
    batches = [np.array([1, 2]), np.array([3])]
    cache = make(batches, 2, 1, 0)
    out = torch.empty(3, D)
    assert cache.gather([5, 1, 5], out=out) is out  # before any step: all from the backing store
    assert torch.equal(out, features()[[5, 1, 5]]) and cache.stats.hits["memory"] == 3


def test_bad_input() -> None:
    x = features()
    backing = MemoryStore(x)
    with pytest.raises(InputError):
        FutureAwareCache(2, D + 1, torch.float32, "cpu", backing, [], 1)
    with pytest.raises(InputError):
        FutureAwareCache(-1, D, torch.float32, "cpu", backing, [], 1)
    with pytest.raises(InputError):
        FutureAwareCache(2, D, torch.float32, "cpu", backing, [], 0)
    with pytest.raises(InputError):
        FutureAwareCache(2, D, torch.float32, "cpu", backing, [], 1, hotness=np.zeros(3))
    with pytest.raises(InputError):
        FutureAwareCache(2, D, torch.float32, "cpu", backing, [np.array([N])], 1).prefetch(0)
    with pytest.raises(InputError):
        FutureAwareCache(2, D, torch.float32, "cpu", backing, [np.array([0.5])], 1).prefetch(0)


def test_plan_batches_reads_lazily() -> None:
    class FakePlan:
        def __init__(self) -> None:
            self.read: list[int] = []

        def __len__(self) -> int:
            return 100

        def batch(self, b: int) -> object:
            self.read.append(b)
            return type("Sub", (), {"node": np.array([b % N, (b * 7) % N])})()

    plan = FakePlan()
    cache = make(PlanBatches(plan), 4, 3, 0)
    for t in range(5):
        cache.gather(np.array([t % N, (t * 7) % N]), batch=t)
    assert plan.read == list(range(7))  # each batch read once, only up to the window's end
    assert cache.stats.hits["device"] == 10
