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
from typing import Iterable

from gnn_ooc.errors import GnnOocError
from gnn_ooc.graphstore.io.owned import FolderKind, check_output


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
    removed = _unlocked(parent, prefix, owner_desc)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


class Staging:
    """The temporary sibling of ``target``; ``publish`` renames it into place atomically.

    ``kind`` (a ``owned.FolderKind``) is what ``target`` must be to be replaced: an existing
    folder of another kind, or of none, is refused before any work (``owned.check_output``,
    with ``inputs``/``protect`` as there) and again at ``publish``. When a folder is replaced,
    what it holds beyond the files its manifest lists is carried over into the new one
    (``carried`` names it). ``kind=None`` is for folders inside a folder of ours whose names
    gnn-ooc chose (a plan's epochs, a pack): they are replaced whole.
    """

    def __init__(self, target: Path, what: str = "gnn-ooc preprocess", *, kind: FolderKind | None = None,
                 inputs: Iterable[Path] = (), protect: Iterable[Path] = (), flag: str = "-o") -> None:
        self.target = target.absolute()
        self.what = what
        self.kind = kind
        self.inputs, self.protect, self.flag = list(inputs), list(protect), flag
        self.published = False
        self.carried: list[str] = []
        self.kept: Path | None = None
        self._dir: LockedDir | None = None

    @property
    def path(self) -> Path:
        assert self._dir is not None, "Staging used outside its with-block"
        return self._dir.path

    def _prefix(self, kind: str) -> str:
        return f".{self.target.name}.{kind}-"

    def _check(self) -> None:
        if self.kind is not None:
            check_output(self.target, self.kind, inputs=self.inputs, protect=self.protect, flag=self.flag)

    def __enter__(self) -> Staging:
        self._check()
        parent = self.target.parent
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, self._prefix("partial"), self.what)
        for old in _unlocked(parent, self._prefix("old"), self.what):
            # a run killed while replacing the target: put back or carry over what is not ours
            _recover_old(old, self.target, self.kind)
        self._dir = LockedDir(parent / f"{self._prefix('partial')}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return self

    def publish(self) -> None:
        """Replace ``target`` (if any) by the staged folder; the old one is removed after, what
        it held beyond its own listed files carried over."""
        self._check()  # the target may have changed while the work ran
        old = None
        if os.path.lexists(self.target):
            old = self.target.parent / f"{self._prefix('old')}{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
        os.rename(self.path, self.target)
        _fsync_dir(self.target.parent)
        self.published = True
        if old is not None:
            self.carried, self.kept = _retire(old, self.target, self.kind)

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


def _unlocked(parent: Path, prefix: str, owner_desc: str) -> list[Path]:
    """Folders ``parent/prefix*`` no live run holds (raises if one is held)."""
    found = []
    for p in sorted(parent.iterdir()) if parent.is_dir() else []:
        if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink():
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:  # another process removed it meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GnnOocError(f"{p}: another {owner_desc} is running on it; wait for it or stop it") from None
            finally:
                os.close(fd)
            found.append(p)
    return found


def _recover_old(old: Path, target: Path, kind: FolderKind | None) -> None:
    if not os.path.lexists(target):
        os.rename(old, target)  # killed between the two renames: the old folder is still the latest
        return
    _retire(old, target, kind)


def _retire(old: Path, target: Path, kind: FolderKind | None) -> tuple[list[str], Path | None]:
    """Carry what ``old`` holds beyond its own files into ``target``, then delete the rest.
    Returns the carried names, and ``old`` itself when something could not be carried (a name
    taken in ``target``): it is kept, never deleted."""
    if kind is None or (kind.owns(old) and kind.listed is None):
        shutil.rmtree(old, ignore_errors=True)  # wholly ours
        return [], None
    own = kind.own_files(old)
    if own is None:  # not ours (an empty folder was replaced; anything else is never deleted)
        if not any(old.iterdir()):
            old.rmdir()
            return [], None
        return [], old
    carried: list[str] = []
    conflicts: list[str] = []
    _carry(old, target, own, "", carried, conflicts)
    _drop_own(old, own)
    if conflicts:
        return carried, old
    shutil.rmtree(old, ignore_errors=True)  # only our files and empty folders are left
    return carried, None


def _carry(src: Path, dst: Path, own: set[str], rel: str, carried: list[str], conflicts: list[str]) -> None:
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        name = rel + entry.name
        if name in own:
            continue
        if entry.is_dir(follow_symlinks=False) and any(o.startswith(name + "/") for o in own):
            # a folder that holds files of ours (split/): carry only the rest of it
            _carry(Path(entry.path), dst / entry.name, own, name + "/", carried, conflicts)
            continue
        if os.path.lexists(dst / entry.name):
            conflicts.append(name)
            continue
        dst.mkdir(parents=True, exist_ok=True)
        os.rename(entry.path, dst / entry.name)
        carried.append(name)


def _drop_own(old: Path, own: set[str]) -> None:
    for name in own:
        p = old / name
        if p.is_file() or p.is_symlink():
            p.unlink()
    for dirpath, _dirs, _files in sorted(os.walk(old, topdown=False), reverse=True):
        if Path(dirpath) != old and not os.listdir(dirpath):
            os.rmdir(dirpath)


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
