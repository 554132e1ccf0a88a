"""Checkpoints: whole training state in one file, written atomically, checked when read back.

A checkpoint is ``RUN/checkpoints/step-00001234.pt`` (the global step it was taken after), a
``torch.save`` of a plain dict, with ``step-00001234.json`` beside it: its size and CRC-32, the
epoch and the validation accuracy. The file is written to a temporary name, fsynced, then
renamed, the JSON first: a run killed at any moment (SIGKILL included) leaves only whole
checkpoints; ``latest_checkpoint`` returns the one with the highest step. Older ones beyond
``keep`` are deleted after a new one lands, except the best: ``best.pt`` (with ``best.json``)
is the checkpoint with the highest validation accuracy so far, kept for ``embed`` and
evaluation (``choose_checkpoint(run, "best" | "last" | PATH)``). ``load_checkpoint`` checks
the CRC-32 and raises ``CheckpointError`` naming a damaged file.

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(run, 7, {"step": 7})
    >>> load_checkpoint(latest_checkpoint(run))["step"]
    7
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gnn_ooc.errors import GnnOocError
from gnn_ooc.graphstore.format.npyfile import file_checksum, format_checksum
from gnn_ooc.graphstore.io.atomic import atomic_write_bytes

CHECKPOINTS = "checkpoints"
BEST = "best.pt"
log = logging.getLogger(__name__)


class CheckpointError(GnnOocError):
    """A checkpoint that cannot be read, is damaged, or does not fit the run."""


def save_checkpoint(run: Path, step: int, state: dict[str, Any], keep: int = 2, *, best: bool = False,
                    info: dict[str, Any] | None = None) -> Path:
    """Save ``state`` as the checkpoint after global step ``step``; keep the newest ``keep``, and
    with ``best`` make it ``best.pt`` too. ``info`` (epoch, accuracy) goes into its JSON."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = Path(run) / CHECKPOINTS / f"step-{step:08d}.pt"
    meta = {"step": step, "size": len(data), "checksum": format_checksum(zlib.crc32(data)), **(info or {})}
    atomic_write_bytes(_meta_path(path), (json.dumps(meta) + "\n").encode())  # before the file it describes
    atomic_write_bytes(path, data)
    if best:
        _link_best(path, meta)
    for old in _checkpoints(Path(run))[:-keep]:
        old.unlink(missing_ok=True)
        _meta_path(old).unlink(missing_ok=True)
    return path


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _link_best(path: Path, meta: dict[str, Any]) -> None:
    """``best.pt`` as a hard link of ``path`` (no copy; the link outlives the step file's deletion)."""
    best = path.parent / BEST
    atomic_write_bytes(_meta_path(best), (json.dumps(meta) + "\n").encode())
    tmp = path.parent / f".{BEST}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this filesystem
        atomic_write_bytes(tmp, path.read_bytes())
    os.replace(tmp, best)


def _checkpoints(run: Path) -> list[Path]:
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*.pt") if p.stem[5:].isdigit())


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint with the highest step in ``run``, or None."""
    found = _checkpoints(Path(run))
    return found[-1] if found else None


def choose_checkpoint(run: Path, which: str | os.PathLike[str] | None) -> Path:
    """``"last"`` (the newest), ``"best"`` (the best validation accuracy; the newest when the run
    never evaluated), ``None`` (best when there is one), or a path to a checkpoint file."""
    run = Path(run)
    best = run / CHECKPOINTS / BEST
    if which is None or str(which) == "best":
        if best.is_file():
            return best
        if which is not None and latest_checkpoint(run) is not None:
            log.warning("%s: no best checkpoint (the run never evaluated); using the newest", run)
    elif str(which) != "last":
        path = Path(which)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file (expected best, last or a path to a .pt file)")
        return path
    last = latest_checkpoint(run)
    if last is None:
        raise CheckpointError(f"{run}: no checkpoint yet (the run stopped before its first one)")
    return last


def load_checkpoint(path: Path | None) -> dict[str, Any]:
    import torch

    if path is None:
        raise CheckpointError("no checkpoint to resume from (the run stopped before its first checkpoint)")
    _verify(Path(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path}: cannot load the checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a gnn-ooc checkpoint")
    return state


def _verify(path: Path) -> None:
    meta_path = _meta_path(path)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        log.warning("%s: no %s beside it (written by an older gnn-ooc?); loading it unchecked", path, meta_path.name)
        return
    except ValueError as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e}); the checkpoint cannot be checked") from None
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    if size != meta.get("size") or file_checksum(path) != meta.get("checksum"):
        raise CheckpointError(f"{path}: damaged (size or CRC-32 differs from {meta_path.name}); use another "
                              "checkpoint (--checkpoint last|best|PATH) or train again")


def checkpoint_info(path: Path) -> dict[str, Any]:
    """The JSON beside a checkpoint (``{}`` when there is none)."""
    try:
        out = json.loads(_meta_path(Path(path)).read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def random_states() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states (CUDA's too when present)."""
    import torch

    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
