"""Capability detection in one place: what this machine and this Python can do.

Nothing here changes the environment; every probe is a cheap look that callers use to pick a
fast path and fall back otherwise.

Example:
    >>> caps = detect()
    >>> caps["cpu_threads"] >= 1
    True
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


def o_direct_flag() -> int:
    """``os.O_DIRECT`` where the platform has it, else 0 (use buffered I/O)."""
    return int(getattr(os, "O_DIRECT", 0))


def cuda_available() -> bool:
    """True when torch imports and sees a CUDA device."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def optional_library(name: str) -> bool:
    """Whether an optional library (``torch_geometric``, ``dgl``, ...) can be imported."""
    return importlib.util.find_spec(name) is not None


def detect() -> dict[str, Any]:
    """A summary of every capability, for reports and ``gnn-ooc`` diagnostics."""
    import numba

    return {
        "cpu_threads": numba.config.NUMBA_NUM_THREADS,  # type: ignore[attr-defined]
        "o_direct": bool(o_direct_flag()),
        "cuda": cuda_available(),
        "torch_geometric": optional_library("torch_geometric"),
        "dgl": optional_library("dgl"),
    }
