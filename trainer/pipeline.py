"""Stages in threads joined by bounded queues; the caller's loop is the last stage.

``Pipeline(source, [("read", f), ("assemble", g)], depth=2)`` runs ``next(source)`` in one
thread and each stage function in its own, each feeding the next through a queue of at most
``depth`` items, and yields the last stage's outputs to the caller. While the caller computes
on batch ``t``, the stages prepare ``t+1 ... t+depth``; time spent in each stage (not waiting
on its queues) is summed in ``timers``.

Failure and shutdown: an exception in a stage travels down the queues in place of an item and
is raised in the caller as ``PipelineError`` naming the stage, with that stage's traceback (a
``GnnOocError``, such as a damaged segment's ``ChecksumError``, is raised as it is);
every other thread stops at its next queue operation (each waits with a timeout and checks a
stop flag), so nothing hangs and ``close`` joins every thread. Leaving the ``for`` loop early
(``break``, an exception in the caller) closes the pipeline too.

Example:
    >>> with Pipeline(iter(range(4)), [("double", lambda x: 2 * x)], depth=2) as p:
    ...     list(p)
    [0, 2, 4, 6]
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Iterator, Sequence

from gnn_ooc.errors import GnnOocError

_POLL = 0.1  # seconds between checks of the stop flag while blocked on a queue


class PipelineError(GnnOocError):
    """A stage failed; ``stage`` names it and the message carries its traceback."""

    def __init__(self, stage: str, cause: BaseException, formatted: str) -> None:
        super().__init__(f"pipeline stage {stage!r} failed: {type(cause).__name__}: {cause}\n"
                         f"--- traceback of stage {stage!r} ---\n{formatted}")
        self.stage = stage
        self.cause = cause


class StageTimers:
    """Seconds and items per stage, safe to add from any thread.

    Example:
        >>> t = StageTimers(); t.add("read", 0.5); t.add("read", 0.25); t.seconds()
        {'read': 0.75}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._items: dict[str, int] = {}

    def add(self, stage: str, seconds: float, items: int = 1) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds
            self._items[stage] = self._items.get(stage, 0) + items

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)

    def items(self) -> dict[str, int]:
        with self._lock:
            return dict(self._items)

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()
            self._items.clear()

    def time(self, stage: str) -> _Timed:
        """``with timers.time("compute"): ...`` adds the block's wall time to ``stage``."""
        return _Timed(self, stage)


class _Timed:
    def __init__(self, timers: StageTimers, stage: str) -> None:
        self.timers, self.stage, self.t0 = timers, stage, 0.0

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timers.add(self.stage, time.perf_counter() - self.t0)


@dataclass(frozen=True)
class _Failure:
    stage: str
    error: BaseException
    formatted: str


_END = object()


class Pipeline:
    """``source`` then ``stages`` (name, function) in threads; iterate for the last stage's outputs."""

    def __init__(self, source: Iterator[Any], stages: Sequence[tuple[str, Callable[[Any], Any]]], *,
                 depth: int = 2, source_name: str = "source", timers: StageTimers | None = None,
                 stop: threading.Event | None = None) -> None:
        """``stop``: the flag ``close`` sets; pass the one a stage's own blocking waits watch (cleared here)."""
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.timers = timers if timers is not None else StageTimers()
        self._stop = stop if stop is not None else threading.Event()
        self._stop.clear()
        self._queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in range(len(stages) + 1)]
        self._threads = [threading.Thread(target=self._run_source, args=(source, source_name),
                                          name=f"gnn-ooc-{source_name}", daemon=True)]
        for i, (name, fn) in enumerate(stages):
            self._threads.append(threading.Thread(target=self._run_stage, args=(i, name, fn),
                                                  name=f"gnn-ooc-{name}", daemon=True))
        self._started = False

    # --- threads -----------------------------------------------------------------------------
    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue[Any]) -> Any:
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue
        return _END

    def _run_source(self, source: Iterator[Any], name: str) -> None:
        out = self._queues[0]
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                item = next(source)
            except StopIteration:
                self._put(out, _END)
                return
            except BaseException as e:  # noqa: B902 - every failure must reach the caller
                self._put(out, _Failure(name, e, traceback.format_exc()))
                return
            self.timers.add(name, time.perf_counter() - t0)
            if not self._put(out, item):
                return

    def _run_stage(self, i: int, name: str, fn: Callable[[Any], Any]) -> None:
        inq, out = self._queues[i], self._queues[i + 1]
        while True:
            item = self._get(inq)
            if item is _END or isinstance(item, _Failure):
                self._put(out, item)
                return
            t0 = time.perf_counter()
            try:
                result = fn(item)
            except BaseException as e:  # noqa: B902
                self._put(out, _Failure(name, e, traceback.format_exc()))
                return
            self.timers.add(name, time.perf_counter() - t0)
            if not self._put(out, result):
                return

    # --- the caller's side -------------------------------------------------------------------
    def start(self) -> Pipeline:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()
        return self

    def __iter__(self) -> Iterator[Any]:
        self.start()
        try:
            while True:
                item = self._get(self._queues[-1])
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    if isinstance(item.error, GnnOocError):
                        raise item.error  # already one line naming the file and what to do (damaged bytes)
                    raise PipelineError(item.stage, item.error, item.formatted) from item.error
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop every stage and join its thread (idempotent)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
