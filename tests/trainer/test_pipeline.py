"""The stage pipeline: order, bounded queues, failure surfacing, no hang, no orphan thread."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from gnn_ooc.trainer.pipeline import Pipeline, PipelineError, StageTimers


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("gnn-ooc-")}


def test_order_and_timers() -> None:
    timers = StageTimers()
    with Pipeline(iter(range(50)), [("a", lambda x: x + 1), ("b", lambda x: x * 2)], depth=3, timers=timers) as p:
        assert list(p) == [2 * (x + 1) for x in range(50)]
    assert set(timers.items()) == {"source", "a", "b"} and timers.items()["b"] == 50
    assert not _threads()


def test_queues_are_bounded() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            produced.append(i)
            yield i

    pipe = Pipeline(source(), [("s", lambda x: x)], depth=2).start()
    time.sleep(0.3)  # nobody consumes: the stages fill their queues and wait
    assert len(produced) <= 2 + 2 + 2  # one queue per stage boundary, plus one item in each thread
    pipe.close()
    assert not _threads()


@pytest.mark.parametrize("where", ["source", "middle", "last"])
def test_failure_names_the_stage_and_stops_everything(where: str) -> None:
    def source() -> Iterator[int]:
        for i in range(1000):
            if where == "source" and i == 5:
                raise OSError("disk gone")
            yield i

    def middle(x: int) -> int:
        if where == "middle" and x == 7:
            raise ValueError("bad row 7")
        return x

    def last(x: int) -> int:
        if where == "last" and x == 9:
            raise KeyError("nine")
        time.sleep(0.001)
        return x

    got = []
    t0 = time.perf_counter()
    with pytest.raises(PipelineError) as info:
        for x in Pipeline(source(), [("middle", middle), ("last", last)], depth=2, source_name="source"):
            got.append(x)
    assert time.perf_counter() - t0 < 5
    assert info.value.stage == where
    assert "traceback of stage" in str(info.value) and ("raise" in str(info.value))
    assert got == list(range(len(got)))  # everything before the failure arrived in order
    assert not _threads()


def test_leaving_early_joins_threads() -> None:
    for x in Pipeline(iter(range(10_000)), [("s", lambda x: x)], depth=4):
        if x == 3:
            break
    assert not _threads()


def test_slow_stage_close_does_not_hang() -> None:
    pipe = Pipeline(iter(range(10)), [("slow", lambda x: time.sleep(0.05) or x)], depth=1)
    it = iter(pipe)
    assert next(it) == 0
    t0 = time.perf_counter()
    pipe.close()
    assert time.perf_counter() - t0 < 2 and not _threads()
