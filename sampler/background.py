"""Planning ahead in a child process: epoch ``e + 1`` is sampled (and packed) while ``e`` trains.

The child is a fresh interpreter that runs this module's ``main`` (``python -c``),
not a ``multiprocessing`` process: multiprocessing's spawn re-imports the parent's ``__main__``,
which re-runs a script's top-level code (a ``train(...)`` call at the top of a script started
itself again in the child and hung). The job goes to the child through its stdin, followed by one
byte per released slot; the child answers through a pipe of its own (its stdout stays the
user's). The child dies with its parent: the kernel sends it SIGKILL when the parent dies
(``PR_SET_PDEATHSIG``), and a closed stdin stops it too, so a killed run leaves no planner
behind to hold the plan's locks.

Example:
    >>> with BackgroundPlanner(ds, sampler, PlanSpec(), epochs=range(10), keep_epochs=2) as bp:  # doctest: +SKIP
    ...     for e in range(10):
    ...         for sub in bp.wait(e):
    ...             ...                      # train on the batch
    ...         bp.release(e)
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterable, Sequence

import numpy as np

from gnn_ooc.errors import GnnOocError
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.io.atomic import remove_dir, remove_stale
from gnn_ooc.memory import process_memory, release_free_memory, tune_allocator
from gnn_ooc.sampler.base import Sampler
from gnn_ooc.sampler.plan import EpochPlan, PlanError, Planner, PlanSpec

_HEADER = struct.Struct("<Q")
_RELEASE = b"r"
_CHILD = "import sys; from gnn_ooc.sampler.background import main; main(sys.argv[1:])"


class BackgroundPlanner:
    """Plans ``epochs`` in a child process while the caller trains, at most ``keep_epochs`` on disk.

    ``wait(e)`` blocks until epoch ``e`` is written and returns it; ``release(e)`` deletes it
    and lets the child plan the next one. An error in the child is raised by ``wait`` as a
    ``PlanError`` with the child's one-line message (and its traceback when it was a bug).
    """

    def __init__(self, dataset: Dataset | str | os.PathLike[str], sampler: Sampler, spec: PlanSpec,
                 epochs: Sequence[int], *, keep_epochs: int = 2, force: bool = False,
                 pack: tuple[Any, np.ndarray] | None = None, nice: int = 0, held: int = 0,
                 kept: Iterable[int] = (), on_ready: Callable[[int, int], None] | None = None) -> None:
        """``pack=(PackSpec, cached ids)`` also packs each epoch (DiskGNN) in the child, after planning it;
        ``nice`` lowers the child's CPU priority (training keeps the cores it needs; the child gets the rest);
        ``held`` of the ``keep_epochs`` are epochs the caller planned itself and still holds (each given
        back with ``release_held``); ``kept`` epochs stay on disk when released (a user's plan);
        ``on_ready(pid, baseline)`` is called once the child has loaded its libraries and kernels, with
        the memory it holds then (the run's memory meter counts the child above it)."""
        if keep_epochs < 1 or not 0 <= held < keep_epochs:
            raise PlanError(f"keep_epochs must be >= 1 and more than held, got {keep_epochs} and {held}")
        self.held = held
        # created here, so a mismatched plan fails in the caller, not in the child
        self.plan = Planner(dataset, sampler, spec, force=force).plan
        self.ds_path = str(self.plan.path.parents[1])
        self.sampler, self.spec, self.epochs = sampler, spec, [int(e) for e in epochs]
        self.keep_epochs = keep_epochs
        self.pack, self.nice = pack, nice
        self._blob = sampler_blob(sampler)  # fails here, at once, for a sampler the child cannot load
        self._done: set[int] = set()
        self._released: set[int] = set()
        self.kept = set(int(e) for e in kept)
        self.on_ready = on_ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def __enter__(self) -> BackgroundPlanner:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(write_fd)], stdin=subprocess.PIPE,
                pass_fds=(write_fd,), env=env, close_fds=True)
        finally:
            os.close(write_fd)
        assert self._proc.stdin is not None
        job = {"dataset": self.ds_path, "sampler": self._blob, "spec": self.spec, "epochs": self.epochs,
               "slots": self.keep_epochs - self.held, "parent": os.getpid(), "pack": self.pack, "nice": self.nice}
        _send(self._proc.stdin, job)
        ready = None if self.on_ready is None else (lambda base: self.on_ready(self._proc.pid, base))  # type: ignore[union-attr, misc]
        reader = threading.Thread(target=_read_events, args=(os.fdopen(read_fd, "rb"), self._events, ready),
                                  name="gnn-ooc-planner-events", daemon=True)
        reader.start()
        return self

    def wait(self, epoch: int, timeout: float | None = None) -> EpochPlan:
        if epoch not in self.epochs:
            raise PlanError(f"epoch {epoch} is not among the epochs this planner plans ({self.epochs})")
        if self._proc is None:
            raise PlanError("BackgroundPlanner.wait outside its with-block")
        deadline = None if timeout is None else time.monotonic() + timeout
        while epoch not in self._done:
            try:
                kind, value = self._events.get(timeout=0.5)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"epoch {epoch} not planned within {timeout} s") from None
                continue
            if kind == "error":
                raise _child_error(value)
            if kind == "eof":
                code = self._proc.wait()
                raise PlanError(f"the planner process died (exit code {code}) before epoch {epoch}")
            self._done.add(int(value))
        return self.plan.epoch(epoch)

    def release(self, epoch: int) -> None:
        if epoch not in self._done or epoch in self._released:
            raise PlanError(f"release({epoch}): the epoch was not waited for, or was released already")
        self._released.add(epoch)
        if epoch not in self.kept:
            self.plan.release(epoch)
        if self.pack is not None:
            remove_dir(self.plan.path / "packs" / self.pack[0].name / f"epoch-{epoch:06d}", self.plan.path)
        self._give_slot()

    def release_held(self) -> None:
        """The caller dropped one of its ``held`` epochs: the child may plan one more."""
        if self.held < 1:
            raise PlanError("release_held: no epoch held")
        self.held -= 1
        self._give_slot()

    def _give_slot(self) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(_RELEASE)
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone: wait() reports why

    def close(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self._proc = None
        # a child stopped mid-epoch leaves its partial folder; its lock died with it
        remove_stale(self.plan.path, ".epoch-", "gnn-ooc sample")

    def __exit__(self, *exc: object) -> None:
        self.close()


def sampler_blob(sampler: Sampler) -> bytes:
    """``sampler`` pickled for the child, which imports its class by name: a class defined in the
    running script (``__main__``) cannot be found there, so say so now rather than in the child."""
    blob = pickle.dumps(sampler)
    if b"__main__" in blob:
        name = type(sampler).__name__
        raise PlanError(f"{name} (or something it holds) is defined in the script you ran (__main__); planning "
                        f"ahead pickles the sampler into a background process, which imports it by module: "
                        f"move {name} into a module (a .py file beside your script) and import it from there")
    return blob


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _read_events(stream: IO[bytes], events: queue.Queue[tuple[str, Any]],
                 on_ready: Callable[[int], None] | None) -> None:
    with stream:
        while True:
            try:
                event = _receive(stream)
            except (EOFError, OSError):
                events.put(("eof", None))
                return
            if event[0] == "ready":
                if on_ready is not None:
                    on_ready(int(event[1]))
                continue
            events.put(event)


def _child_error(value: dict[str, Any]) -> PlanError:
    if value.get("ours"):
        err = PlanError(f"the planner process failed: {value['message']}")
        err.exit_code = int(value.get("exit_code", 1))
        return err
    return PlanError(f"the planner process failed:\n{value['traceback']}")


# --- the child -----------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux); without prctl, the closed stdin does it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)


def _wait_slot(stdin: BinaryIO, slots: list[int]) -> bool:
    """Take a slot, waiting for a release byte when none is free; False when the parent is gone."""
    while slots[0] == 0:
        if not stdin.read(1):
            return False
        slots[0] += 1
    slots[0] -= 1
    return True


def _child(stdin: BinaryIO, out: BinaryIO) -> None:
    job = _receive(stdin)
    _die_with_parent(int(job["parent"]))
    try:
        if job["nice"]:
            os.nice(job["nice"])
        tune_allocator()
        planner = Planner(job["dataset"], pickle.loads(job["sampler"]), job["spec"])
        planner.warm_up()  # kernels loaded: what the child holds now is its baseline, not the budget's
        release_free_memory()
        _send(out, ("ready", process_memory()))
        pack = job["pack"]
        entry = planner.ds.manifest.files.get("features")
        features = planner.ds.path / entry.name if pack and entry else None
        slots = [int(job["slots"])]
        for e in job["epochs"]:
            if not _wait_slot(stdin, slots):
                return  # the trainer is gone
            planner.plan_epoch(e)
            if pack is not None:
                from gnn_ooc.graphstore.pack.writer import pack_epoch

                pack_epoch(planner.plan, e, pack[1], Path(str(features)), pack[0],
                           features_checksum=entry.checksum if entry else None)
            _send(out, ("done", e))
    except GnnOocError as e:
        _send(out, ("error", {"ours": True, "message": str(e), "exit_code": e.exit_code,
                              "traceback": traceback.format_exc()}))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        _send(out, ("error", {"ours": False, "traceback": traceback.format_exc()}))


def main(argv: Sequence[str]) -> None:
    """The child's entry: ``argv[0]`` is the descriptor to answer on."""
    with os.fdopen(int(argv[0]), "wb") as out:
        _child(sys.stdin.buffer, out)
