"""Crash-safe output folders: write into a locked temporary sibling, rename it into place.

A run creates ``.NAME.partial-<id>`` beside the target and holds an exclusive ``flock`` on it
for its whole life. A later run removes every such folder it can lock (their owners died, even
by SIGKILL, since the kernel drops the lock with the process), and refuses to start while one
is still locked by a live run. So an interrupted run leaves no dataset, and nothing that breaks
the next run.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with Staging(target) as tmp:
    ...     _ = (tmp.path / "a.txt").write_text("hi")
    ...     tmp.publish()
    >>> (target / "a.txt").read_text()
    'hi'
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType

from gnn_ooc.graphstore.base import GnnOocError


class LockedDir:
    """A new folder with an exclusive advisory lock held until ``release``."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=False, exist_ok=False)
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_stale(parent: Path, prefix: str, owner_desc: str) -> list[Path]:
    """Remove folders ``parent/prefix*`` whose lock is free; raise if one is held by a live run."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for p in sorted(parent.iterdir()):
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GnnOocError(f"{p}: another {owner_desc} is running on it; wait for it or stop it") from None
        finally:
            os.close(fd)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


class Staging:
    """The temporary sibling of ``target``; ``publish`` renames it into place atomically."""

    def __init__(self, target: Path, what: str = "gnn-ooc preprocess") -> None:
        self.target = target.absolute()
        self.what = what
        self.published = False
        self._dir: LockedDir | None = None

    @property
    def path(self) -> Path:
        assert self._dir is not None, "Staging used outside its with-block"
        return self._dir.path

    def _prefix(self, kind: str) -> str:
        return f".{self.target.name}.{kind}-"

    def __enter__(self) -> Staging:
        parent = self.target.parent
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, self._prefix("partial"), self.what)
        remove_stale(parent, self._prefix("old"), self.what)
        self._dir = LockedDir(parent / f"{self._prefix('partial')}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return self

    def publish(self) -> None:
        """Replace ``target`` (if any) by the staged folder; the old one is removed after."""
        old = None
        if self.target.exists():
            old = self.target.parent / f"{self._prefix('old')}{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
        os.rename(self.path, self.target)
        _fsync_dir(self.target.parent)
        self.published = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._dir is None:
            return
        if not self.published:
            shutil.rmtree(self._dir.path, ignore_errors=True)
        self._dir.release()
        self._dir = None


def remove_dir(path: Path, trash: Path) -> None:
    """Delete folder ``path`` atomically: renamed to ``trash/.NAME.removed-*`` (readers see the folder
    or nothing), then removed; a crash in between leaves only the renamed folder."""
    if not path.is_dir():
        return
    gone = trash / f".{path.name}.removed-{uuid.uuid4().hex[:8]}"
    os.rename(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file through a temporary sibling, fsynced and renamed into place: readers see
    the old file or the new one, never a part (configs, metrics rewrites, summaries, checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
