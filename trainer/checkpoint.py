"""Checkpoints: whole training state in one file, written atomically, the newest found on resume.

A checkpoint is ``RUN/checkpoints/step-00001234.pt`` (the global step it was taken after), a
``torch.save`` of a plain dict. It is written to a temporary name, fsynced, then renamed, so a
run killed at any moment (SIGKILL included) leaves only whole checkpoints; ``latest`` returns
the one with the highest step. Older ones beyond ``keep`` are deleted after a new one lands.

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(run, 7, {"step": 7})
    >>> load_checkpoint(latest_checkpoint(run))["step"]
    7
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np

from gnn_ooc.graphstore.atomic import atomic_write_bytes
from gnn_ooc.graphstore.base import GnnOocError

CHECKPOINTS = "checkpoints"


class CheckpointError(GnnOocError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_checkpoint(run: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save ``state`` as the checkpoint after global step ``step``; keep the newest ``keep``."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    path = Path(run) / CHECKPOINTS / f"step-{step:08d}.pt"
    atomic_write_bytes(path, buf.getvalue())
    for old in _checkpoints(Path(run))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _checkpoints(run: Path) -> list[Path]:
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*.pt") if p.stem[5:].isdigit())


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint with the highest step in ``run``, or None."""
    found = _checkpoints(Path(run))
    return found[-1] if found else None


def load_checkpoint(path: Path | None) -> dict[str, Any]:
    import torch

    if path is None:
        raise CheckpointError("no checkpoint to resume from (the run stopped before its first checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path}: cannot load the checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a gnn-ooc checkpoint")
    return state


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
