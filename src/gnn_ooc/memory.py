"""What ``--memory-budget`` covers, measured while a run trains.

The budget bounds the memory a run allocates for its data: caches, batches in flight, segment
buffers, planning and packing (in the background process too), the features in memory mode,
the model's step. It is measured as anonymous plus shared memory (``RssAnon + RssShmem``) of
every process of the run, each above its own baseline: the interpreter, the libraries and the
compiled kernels, measured once they are loaded and before any data is (about 270 MiB for the
trainer and 100 MiB for the background planner here, reported in ``summary.json``).
Memory-mapped files (the topology, plans, mmap mode's features) are page cache the kernel
reclaims under pressure and are not counted; a hard memory cap (a cgroup, a batch system)
must grant the baselines, the budget, and whatever page cache speed needs on top.

``MemoryMeter`` samples every process every 50 ms, keeps the peak of the sum, and the run
reports it (``summary.json`` ``memory``) and warns when it went over.

Example:
    >>> meter = MemoryMeter(budget=1 << 30).start()
    >>> report = meter.stop()
    >>> report["budget"] == 1 << 30
    True
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

_PERIOD = 0.05


def process_memory(pid: int | None = None) -> int:
    """``RssAnon + RssShmem`` of a process in bytes (0 where /proc does not say)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssShmem")))
    except (OSError, ValueError):
        return 0
    return sum(int(v.split()[0]) * 1024 for v in fields.values())


def available_memory() -> int:
    """Bytes this process could still fill, page cache included: the system's ``MemAvailable``,
    or less where a cgroup (v1 or v2, this one or an ancestor) caps the process: its limit
    minus what its processes hold outside reclaimable page cache. Planning uses it to tell
    whether the topology can stay in the page cache."""
    import psutil

    room = int(psutil.virtual_memory().available)
    for limit, used in _cgroup_limits():
        room = min(room, max(0, limit - used))
    return room


def _cgroup_limits() -> list[tuple[int, int]]:
    """(limit, non-reclaimable use) of every memory cgroup above this process that has a limit."""
    out = []
    for folder, v2 in _cgroup_folders():
        while True:
            limit = _read_int(folder, "memory.max" if v2 else "memory.limit_in_bytes")
            if limit is not None and limit < 1 << 60:
                used = _read_int(folder, "memory.current" if v2 else "memory.usage_in_bytes") or 0
                cache = _stat(folder, "file" if v2 else "total_cache")
                out.append((limit, max(0, used - cache)))
            if folder.count("/") <= 4:
                break
            folder = os.path.dirname(folder)
    return out


def _cgroup_folders() -> list[tuple[str, bool]]:
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.strip().split(":", 2) for line in f]
    except OSError:
        return []
    out = []
    for parts in lines:
        if len(parts) == 3 and parts[1] == "memory":
            out.append(("/sys/fs/cgroup/memory" + parts[2].rstrip("/"), False))
        elif len(parts) == 3 and parts[0] == "0" and parts[1] == "":
            out.append(("/sys/fs/cgroup" + parts[2].rstrip("/"), True))
    return [(f, v2) for f, v2 in out if os.path.isdir(f)]


def _read_int(folder: str, name: str) -> int | None:
    try:
        with open(os.path.join(folder, name)) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(folder: str, key: str) -> int:
    try:
        with open(os.path.join(folder, "memory.stat")) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def allocator_slack(budget: int) -> int:
    """The share of a budget set aside for freed blocks the heap keeps for reuse (glibc keeps blocks
    under 32 MiB: :func:`tune_allocator`); measured peaks ran up to a tenth over the live bytes."""
    return budget // 12


def tune_allocator() -> None:
    """Make glibc give freed memory back without slowing the step: two arenas (with its defaults,
    per-thread arenas kept 55-95 MiB of freed batches and packing buffers past a 256 MiB budget),
    blocks of 32 MiB and more mapped apart and unmapped when freed (segment and batch buffers),
    smaller ones reused from the heap. Mapping apart from 1 MiB on (and trimming the heap at
    1 MiB) kept peaks 30-60 MiB lower but made every step fault its activations in afresh: a
    training epoch's compute took 1.5x (hidden 256, 400 k nodes) to 3x (bench-train) as long.
    A no-op off glibc."""
    libc = _libc()
    if libc is None:
        return
    for option, value in ((-8, 2), (-3, 32 << 20)):  # M_ARENA_MAX, M_MMAP_THRESHOLD
        libc.mallopt(ctypes.c_int(option), ctypes.c_int(value))


def release_free_memory() -> None:
    """Return freed heap memory to the system now (after a setup phase)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc has both
    except (OSError, AttributeError):
        return None
    return libc


class MemoryMeter:
    """Samples this process and the ones ``watch`` adds; ``stop`` returns the peak above baselines."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self._base: dict[int, int] = {os.getpid(): process_memory()}
        self._peak = 0
        self._peak_by: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gnn-ooc-memory", daemon=True)

    @property
    def baselines(self) -> dict[int, int]:
        return dict(self._base)

    def start(self) -> MemoryMeter:
        self._thread.start()
        return self

    def watch(self, pid: int, baseline: int | None = None) -> None:
        """Count process ``pid`` too, above ``baseline`` (default: what it holds now)."""
        with self._lock:
            self._base[pid] = process_memory(pid) if baseline is None else baseline

    def sample(self) -> int:
        """Bytes above the baselines now, over every watched process that still runs."""
        with self._lock:
            base = dict(self._base)
        above = {pid: max(0, process_memory(pid) - b) for pid, b in base.items()}
        total = sum(above.values())
        if total > self._peak:
            self._peak, self._peak_by = total, above
        return total

    def _run(self) -> None:
        while not self._stop.wait(_PERIOD):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        me = os.getpid()
        return {"budget": self.budget, "peak_above_baseline": self._peak, "within_budget": self._peak <= self.budget,
                "trainer_baseline": self._base.get(me, 0), "trainer_peak_above": self._peak_by.get(me, 0),
                "planner_baseline": sum(b for p, b in self._base.items() if p != me),
                "planner_peak_above": sum(v for p, v in self._peak_by.items() if p != me)}
