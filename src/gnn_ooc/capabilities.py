"""Capability detection in one place: what this machine and this Python can do.

Nothing here changes the environment; every probe is a cheap look that callers use to pick a
fast path and fall back otherwise.

Example:
    >>> caps = detect()
    >>> caps["cpu_threads"] >= 1
    True
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
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


@functools.lru_cache(maxsize=1)
def io_uring_available() -> bool:
    """Whether this process may create an io_uring that can read (Linux 5.6+, not disabled).

    Probed once: ``/proc/sys/kernel/io_uring_disabled`` 2 turns it off for everyone, and a
    one-entry ring is set up and closed (that answers 1, seccomp filters and old kernels).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "2":
            return False
    except OSError:  # kernels before 6.6 have no such switch
        pass
    from gnn_ooc.graphstore.io.uring import IORING_FEAT_RW_CUR_POS, UringParams, uring_setup

    params = UringParams()
    try:
        fd = uring_setup(1, params)
    except OSError:
        return False
    os.close(fd)
    return bool(params.features & IORING_FEAT_RW_CUR_POS)  # the feature bit that came with IORING_OP_READ


def optional_library(name: str) -> bool:
    """Whether an optional library (``torch_geometric``, ``dgl``, ...) can be imported."""
    return importlib.util.find_spec(name) is not None


def detect() -> dict[str, Any]:
    """A summary of every capability, for reports and ``gnn-ooc`` diagnostics."""
    import numba

    return {
        "cpu_threads": numba.config.NUMBA_NUM_THREADS,  # type: ignore[attr-defined]
        "o_direct": bool(o_direct_flag()),
        "io_uring": io_uring_available(),
        "cuda": cuda_available(),
        "torch_geometric": optional_library("torch_geometric"),
        "dgl": optional_library("dgl"),
    }
