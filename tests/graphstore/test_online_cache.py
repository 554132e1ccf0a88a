"""SIEVE and CLOCK host caches equal tiny pure-Python references, serve the right rows, count hits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_ooc.errors import InputError
from gnn_ooc.graphstore.features.policies.clock import ClockCache
from gnn_ooc.graphstore.features.policies.hosttable import HostCache, _find
from gnn_ooc.graphstore.features.policies.sieve import SieveCache
from gnn_ooc.graphstore.features.stores import MemoryStore

N, D = 80, 3


class RefSieve:
    """SIEVE as in the paper's pseudocode: a list from tail (index 0) to head, a hand, visited bits."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue: list[int] = []
        self.visited: dict[int, bool] = {}
        self.hand: int | None = None  # the id the hand points at; None: start from the tail

    def access(self, batch: list[int]) -> None:
        distinct = list(dict.fromkeys(batch))  # first-appearance order
        misses = [v for v in distinct if v not in self.visited]
        for v in distinct:
            if v in self.visited:
                self.visited[v] = True
        for v in misses:
            if self.capacity == 0:
                continue
            if len(self.queue) == self.capacity:
                self.evict()
            self.queue.append(v)
            self.visited[v] = False

    def evict(self) -> None:
        i = 0 if self.hand is None else self.queue.index(self.hand)
        while self.visited[self.queue[i]]:
            self.visited[self.queue[i]] = False
            i = i + 1 if i + 1 < len(self.queue) else 0
        self.hand = self.queue[i + 1] if i + 1 < len(self.queue) else None
        del self.visited[self.queue[i]]
        del self.queue[i]


class RefClock:
    """CLOCK: slots in a circle, a hand, reference bits; new rows start unreferenced."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slots: list[int] = []
        self.ref: list[bool] = []
        self.hand = 0

    def access(self, batch: list[int]) -> None:
        distinct = list(dict.fromkeys(batch))
        misses = [v for v in distinct if v not in self.slots]
        for v in distinct:
            if v in self.slots:
                self.ref[self.slots.index(v)] = True
        for v in misses:
            if self.capacity == 0:
                continue
            if len(self.slots) < self.capacity:
                self.slots.append(v)
                self.ref.append(False)
                continue
            while self.ref[self.hand]:
                self.ref[self.hand] = False
                self.hand = (self.hand + 1) % self.capacity
            self.slots[self.hand], self.ref[self.hand] = v, False
            self.hand = (self.hand + 1) % self.capacity


def skewed_trace(rng: np.random.Generator, steps: int, size: int) -> list[list[int]]:
    p = 1.0 / np.arange(1, N + 1) ** 1.0
    perm = rng.permutation(N)
    return [perm[rng.choice(N, int(rng.integers(1, size + 1)), p=p / p.sum())].tolist() for _ in range(steps)]


def run(kind: type[HostCache], trace: list[list[int]], capacity: int) -> None:
    x = torch.arange(N * D, dtype=torch.float32).reshape(N, D)
    cache = kind(capacity, D, torch.float32, MemoryStore(x))
    ref: RefSieve | RefClock = RefSieve(capacity) if kind is SieveCache else RefClock(capacity)
    hits = misses = 0
    for t, batch in enumerate(trace):
        resident = set(ref.queue if isinstance(ref, RefSieve) else ref.slots)
        hits += sum(v in resident for v in batch)
        misses += sum(v not in resident for v in batch)
        assert torch.equal(cache.gather(batch), x[batch]), f"rows at step {t}"
        ref.access(batch)
        if isinstance(ref, RefSieve):
            assert isinstance(cache, SieveCache)
            assert cache.queue().tolist() == ref.queue, f"queue at step {t}"
        else:
            assert cache.resident_ids().tolist() == sorted(ref.slots), f"resident at step {t}"
        # every cached row is the right row
        held = cache.resident_ids()
        slots = _find(cache._keys, cache._vals, held, cache._bits)
        assert (slots >= 0).all() and torch.equal(cache.rows[torch.from_numpy(slots)], x[held])
    assert {k: v for k, v in cache.stats.hits.items() if v} == {k: v for k, v in
                                                                 (("host", hits), ("memory", misses)) if v}
    assert cache.stats.rows == hits + misses


@pytest.mark.parametrize("kind", [SieveCache, ClockCache])
@pytest.mark.parametrize("capacity", [0, 1, 2, 7, 30, 100])
def test_single_id_trace(kind: type[HostCache], capacity: int) -> None:
    trace = [[v] for v in np.concatenate(skewed_trace(np.random.default_rng(capacity), 60, 5)).tolist()]
    run(kind, trace, capacity)


@pytest.mark.parametrize("kind", [SieveCache, ClockCache])
@pytest.mark.parametrize("capacity", [0, 1, 3, 10, 40])
def test_batched_trace(kind: type[HostCache], capacity: int) -> None:
    run(kind, skewed_trace(np.random.default_rng(capacity + 1), 80, 12), capacity)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), min_size=0, max_size=6), max_size=25), st.integers(0, 8),
       st.sampled_from([SieveCache, ClockCache]))
def test_property(trace: list[list[int]], capacity: int, kind: type[HostCache]) -> None:
    run(kind, trace, capacity)


def test_hash_table_survives_churn() -> None:
    """Many inserts and evictions through a small table: probe runs stay intact (backward shift)."""
    rng = np.random.default_rng(9)
    x = torch.arange(5000 * 2, dtype=torch.float32).reshape(5000, 2)
    cache = SieveCache(64, 2, torch.float32, MemoryStore(x))
    for _ in range(200):
        ids = rng.integers(0, 5000, 40)
        assert torch.equal(cache.gather(ids), x[ids])
    held = cache.resident_ids()
    assert held.size == 64 and torch.equal(cache.gather(held), x[held])
    assert cache.stats.hits["host"] >= 64


def test_preallocated_out_and_bad_input() -> None:
    x = torch.arange(N * D, dtype=torch.float32).reshape(N, D)
    cache = SieveCache(4, D, torch.float32, MemoryStore(x))
    out = torch.empty(3, D)
    assert cache.gather(torch.tensor([5, 5, 6]), out=out) is out and torch.equal(out, x[[5, 5, 6]])
    assert cache.gather([]).shape == (0, D)
    with pytest.raises(InputError):
        cache.gather([N])
    with pytest.raises(InputError):
        SieveCache(4, D + 1, torch.float32, MemoryStore(x))
    with pytest.raises(InputError):
        ClockCache(-1, D, torch.float32, MemoryStore(x))
