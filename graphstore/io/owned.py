"""What gnn-ooc owns, and the check every writer runs before it writes or replaces a path.

gnn-ooc never deletes or overwrites what it did not create. Each kind of folder it writes
carries a marker file (its manifest): a dataset ``manifest.json``, a run ``run.json``, a plan
``plan.json``, an embedding folder ``embed.json``, a generated raw graph ``synth.json``. A
command may replace a folder only when it is of the kind the command writes (or empty, or
absent); anything else is refused with an ``OutputError`` that says what to do. An output may
not be an input, nor lie inside or above one.

When a folder is replaced, only the files its manifest lists are ours to drop: everything else
in it (runs and plans under a dataset, a user's own notes) is carried over into the new folder.

Example:
    >>> import tempfile, pathlib
    >>> mine = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (mine / "notes.txt").write_text("my work")
    >>> check_output(mine, DATASET)
    Traceback (most recent call last):
    ...
    gnn_ooc.errors.OutputError: ...
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from gnn_ooc.errors import OutputError
from gnn_ooc.graphstore.format.base import FORMAT_NAME, MANIFEST_NAME

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder gnn-ooc writes, recognised by its marker file.

    ``recognise(meta)`` says whether the marker's JSON is this kind's; ``listed(meta)`` gives the
    files (paths relative to the folder) the folder's own manifest lists, the only ones a
    replacement drops; ``None`` means the whole folder is ours (nothing else is ever put there).
    """

    name: str
    marker: str
    recognise: Callable[[dict[str, Any]], bool]
    listed: Callable[[dict[str, Any]], list[str]] | None = None

    def marker_meta(self, folder: Path) -> dict[str, Any] | None:
        """The marker's JSON when ``folder`` is of this kind, else None."""
        try:
            meta = json.loads((folder / self.marker).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and self.recognise(meta) else None

    def owns(self, folder: Path) -> bool:
        return self.marker_meta(folder) is not None

    def own_files(self, folder: Path) -> set[str] | None:
        """What a replacement of ``folder`` may drop (None: all of it)."""
        meta = self.marker_meta(folder)
        if meta is None or self.listed is None:
            return None
        return {self.marker, *self.listed(meta)}


def _format_is(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda meta: meta.get("format") == value


def _dataset_files(meta: dict[str, Any]) -> list[str]:
    return [str(f["name"]) for f in meta.get("files", {}).values() if isinstance(f, dict) and "name" in f]


def _embedding(meta: dict[str, Any]) -> bool:
    # embed.json before it carried a format name: the run, checkpoint and outputs it describes
    return meta.get("format") == "gnn-ooc-embedding" or {"run", "checkpoint", "outputs"} <= set(meta)


def _embedding_files(meta: dict[str, Any]) -> list[str]:
    outputs = list(meta.get("outputs", {}))
    layers = [f"layers/layer-{i}.npy" for i in range(len(meta.get("layers", [])))]
    return [*outputs, *layers]


_RAW_FILES = ["edges.parquet", "node_features.npy", "node_labels.npy",
              *[f"split/{s}.npy" for s in ("train", "valid", "test")]]

DATASET = FolderKind("dataset", MANIFEST_NAME, _format_is(FORMAT_NAME), _dataset_files)
RUN = FolderKind("run", "run.json", _format_is("gnn-ooc-run"))
PLAN = FolderKind("plan", "plan.json", _format_is("gnn-ooc-plan"))
EMBEDDING = FolderKind("embedding folder", "embed.json", _embedding, _embedding_files)
SYNTH_RAW = FolderKind("generated raw graph", "synth.json",
                       lambda meta: meta.get("generator") == "gnn_ooc.tools.synth", lambda _meta: _RAW_FILES)
KINDS = (DATASET, RUN, PLAN, EMBEDDING, SYNTH_RAW)


def folder_kind(folder: Path) -> FolderKind | None:
    """Which of gnn-ooc's folder kinds ``folder`` is, if any."""
    return next((k for k in KINDS if k.owns(folder)), None)


def check_output(target: Path, kind: FolderKind, *, inputs: Iterable[Path] = (),
                 protect: Iterable[Path] = (), flag: str = "-o") -> None:
    """Raise ``OutputError`` unless ``target`` may be written as a ``kind``: absent, an empty
    folder, or a ``kind`` folder; and neither inside nor above (nor equal to) any of ``inputs``,
    nor equal to or above any of ``protect`` (folders it may sit inside, like a run in its dataset).
    """
    where = _resolved(target)
    for inp in inputs:
        _refuse_nesting(target, where, _resolved(inp), inside_ok=False, flag=flag)
    for keep in protect:
        _refuse_nesting(target, where, _resolved(keep), inside_ok=True, flag=flag)
    if not os.path.lexists(target):
        return
    if target.is_symlink():
        raise OutputError(f"{target}: is a symbolic link; give the folder it points to ({os.path.realpath(target)}) "
                          f"or another {flag}")
    if not target.is_dir():
        raise OutputError(f"{target}: exists and is a file, not a folder; choose another {flag}")
    if kind.owns(target) or not any(target.iterdir()):
        return
    other = folder_kind(target)
    if other is not None:
        raise OutputError(f"{target}: is a gnn-ooc {other.name}, not a {kind.name}; gnn-ooc will not replace it: "
                          f"choose another {flag}")
    raise OutputError(f"{target}: exists and is not a gnn-ooc {kind.name} (no {kind.marker}); gnn-ooc replaces "
                      f"only folders it created: choose a new or empty folder for {flag}")


def _refuse_nesting(target: Path, where: Path, other: Path, *, inside_ok: bool, flag: str) -> None:
    if where == other:
        raise OutputError(f"{target}: is the input {other} itself; choose another {flag} (an output may not "
                          "replace its input)")
    if other.is_relative_to(where):
        raise OutputError(f"{target}: holds the input {other}; choose another {flag} (an output may not "
                          "contain its input)")
    if not inside_ok and where.is_relative_to(other):
        raise OutputError(f"{target}: is inside the input {other}; choose another {flag} outside it")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def check_name(name: str, what: str) -> str:
    """A folder name for ``what`` (a plan, a pack): letters, digits, '.', '_' or '-', not starting
    with '.' or '-', so it can never reach outside its parent folder."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise OutputError(f"{what} name {name!r}: expected letters, digits, '.', '_' or '-' "
                          "(not starting with '.' or '-', no '/')")
    return name
