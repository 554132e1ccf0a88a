"""The run folder: created once, locked while a process trains in it, tied to its dataset.

``RUN/run.json`` marks the folder as a gnn-ooc run (so no other command replaces it) and records
the dataset it trains on: its absolute path and identity (a digest of every file's checksum).
``--resume`` refuses another dataset, given or rebuilt at the same path. ``RUN/.lock`` is held
with ``flock`` for the life of a ``train`` or ``resume``: a second process writing into the same
folder is refused, and the kernel drops the lock when the holder dies, even by SIGKILL.

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> folder = RunFolder.create(run, dataset_path=pathlib.Path("data"), identity="abc")
    >>> RunFolder.recorded(run)["dataset"]["identity"]
    'abc'
    >>> folder.release()
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from gnn_ooc.errors import DatasetError, OutputError
from gnn_ooc.graphstore.io.atomic import atomic_write_bytes
from gnn_ooc.graphstore.io.owned import RUN, check_output

RUN_JSON = "run.json"
LOCK = ".lock"
RUN_FORMAT = "gnn-ooc-run"


class RunFolder:
    """A run folder this process holds the lock of; ``release`` lets the next process in."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, path: Path, *, dataset_path: Path, identity: str,
               parts: dict[str, Any] | None = None) -> RunFolder:
        """A new run in ``path``: absent, empty, or a run that never reached its first checkpoint."""
        if (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("step-*.pt")):
            raise OutputError(f"{path}: holds a run already; continue it with --resume {path}, or choose another --out")
        fd = _lock(path) if (path / LOCK).is_file() else None  # a run being created there: refused now
        try:
            if not (path.is_dir() and {p.name for p in path.iterdir()} <= {LOCK}):  # only our lock: empty
                check_output(path, RUN, protect=[dataset_path], flag="--out")
            path.mkdir(parents=True, exist_ok=True)
            folder = cls(path, fd if fd is not None else _lock(path))
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        record = {"format": RUN_FORMAT, "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "dataset": {"path": str(Path(dataset_path).resolve()), "identity": identity}}
        if parts is not None:
            record["parts"] = parts  # a user's sampler settings, model and store classes: resumes check them
        atomic_write_bytes(path / RUN_JSON, (json.dumps(record, indent=2) + "\n").encode())
        return folder

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """An existing run, locked for this process (``--resume``)."""
        if not path.is_dir():
            raise OutputError(f"{path}: no such run folder")
        return cls(path, _lock(path))

    @staticmethod
    def recorded(path: Path) -> dict[str, Any]:
        """``run.json`` (``{}`` for a run written before it existed)."""
        try:
            meta = json.loads((path / RUN_JSON).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise DatasetError(f"{path / RUN_JSON}: not valid JSON ({e})") from None
        return meta if isinstance(meta, dict) else {}

    @staticmethod
    def check_dataset(path: Path, dataset_path: Path, identity: str) -> None:
        """Refuse a dataset other than the one the run trained on (another, or rebuilt)."""
        want = RunFolder.recorded(path).get("dataset", {})
        if want.get("identity") not in (None, identity):
            raise DatasetError(
                f"{path}: was trained on the dataset {want.get('path')} (identity {want.get('identity')}), but "
                f"{dataset_path} is another (identity {identity}; rebuilt or different): resume with the run's "
                "dataset, or start a new run")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(path: Path) -> int:
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise OutputError(f"{path}: another gnn-ooc train ({holder}) is using this run folder; wait for it "
                          "to finish, or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    return fd


def is_live(path: Path) -> bool:
    """Whether a process holds ``path``'s run lock now (``gnn-ooc clean`` keeps a live run's plans)."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


OWNER_JSON = "owner.json"


def mark_owner(folder: Path, run: Path) -> None:
    """Record in ``folder`` (a plan, or a run's packs in a shared plan) that ``run`` uses it:
    ``gnn-ooc clean`` removes it once no live process holds that run."""
    atomic_write_bytes(folder / OWNER_JSON, (json.dumps({"run": str(Path(run).absolute())}) + "\n").encode())


def owner_of(folder: Path) -> Path | None:
    """The run ``folder`` serves (``mark_owner``), or None."""
    try:
        meta = json.loads((folder / OWNER_JSON).read_text())
    except (OSError, ValueError):
        return None
    return Path(meta["run"]) if isinstance(meta, dict) and "run" in meta else None
