"""Moving rows between tensors: the one place that picks the fast ops for it.

``out[idx] = rows`` goes through ``index_put_``, which on the CPU is about 4x slower than
``index_copy_`` for rows of a few hundred bytes (31 ms against 8 ms for 60 k rows of 512 B,
measured with /tmp microbenchmarks on this project's 2-core machine); and a gather then a
scatter (``index_select`` + ``index_copy_``) copies every row twice. Between CPU tensors of one
dtype, rows move once, in a numba loop over machine words: 8.4 ms against 40 ms for 35 k rows
of 1 KiB (one thread, the pipeline's assembly of a packed batch). Every tier assembles batches
through these two functions.

Example:
    >>> import torch
    >>> out = torch.zeros(3, 2)
    >>> put_rows(out, torch.tensor([2, 0]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    >>> out.tolist()
    [[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]]
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _copy_rows(src: np.ndarray, src_idx: np.ndarray, dst: np.ndarray, dst_idx: np.ndarray) -> int:
    """``dst[dst_idx[i]] = src[src_idx[i]]`` (``src_idx`` empty: ``src[i]``); returns the first ``i``
    whose index is out of range, or -1."""
    width, direct = src.shape[1], src_idx.size == 0
    for i in range(dst_idx.size):
        s = i if direct else src_idx[i]
        d = dst_idx[i]
        if s < 0 or s >= src.shape[0] or d < 0 or d >= dst.shape[0]:
            return i
        row, into = src[s], dst[d]
        for j in range(width):
            into[j] = row[j]
    return -1


def word_dtype(row_bytes: int) -> np.dtype[Any]:
    """The widest unsigned word dividing a row of ``row_bytes``: row copies go a word at a time
    (a byte-wise copy ran at 0.75 GB/s).

    Example:
        >>> word_dtype(1024), word_dtype(12), word_dtype(3)
        (dtype('uint64'), dtype('uint32'), dtype('uint8'))
    """
    for dtype in (np.uint64, np.uint32, np.uint16):
        if row_bytes % np.dtype(dtype).itemsize == 0:
            return np.dtype(dtype)
    return np.dtype(np.uint8)


def _words(t: Any) -> np.ndarray | None:
    """A CPU tensor's rows as a numpy array of the widest word dividing a row, or None where
    the numba path does not apply (another device, not contiguous, not 2-D)."""
    import torch

    if t.device.type != "cpu" or t.dim() != 2 or not t.is_contiguous() or t.requires_grad:
        return None
    if not (t.element_size() and t.shape[1]):
        return None
    raw = t.view(torch.uint8).numpy()
    return raw.view(word_dtype(raw.shape[1]))


def _fast_copy(src: Any, src_idx: Any, out: Any, dst_idx: Any) -> bool:
    """The numba row copy where both tensors allow it; False where the torch ops must do it
    (among them a source sharing memory with ``out``: an in-place copy would read rows it wrote)."""
    if src.dtype != out.dtype or src.device != out.device:
        return False
    if src.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
        return False
    a, b = _words(src), _words(out)
    if a is None or b is None or a.shape[1] != b.shape[1]:
        return False
    di = np.asarray(dst_idx.cpu() if hasattr(dst_idx, "cpu") else dst_idx, dtype=np.int64).reshape(-1)
    si = np.empty(0, np.int64) if src_idx is None else np.asarray(
        src_idx.cpu() if hasattr(src_idx, "cpu") else src_idx, dtype=np.int64).reshape(-1)
    if (src_idx is None and a.shape[0] != di.size) or (src_idx is not None and si.size != di.size):
        raise IndexError(f"{di.size} destination rows for {a.shape[0] if src_idx is None else si.size} source rows")
    bad = _copy_rows(a, si, b, di)
    if bad >= 0:
        raise IndexError(f"row index out of range at position {bad}: source row "
                         f"{bad if src_idx is None else int(si[bad])} of {a.shape[0]}, "
                         f"destination row {int(di[bad])} of {b.shape[0]}")
    return True


def put_rows(out: Any, dst_idx: Any, rows: Any) -> None:
    """``out[dst_idx[i]] = rows[i]`` (rows moved to ``out``'s device and dtype)."""
    import torch

    if _fast_copy(rows, None, out, dst_idx):
        return
    dst = torch.as_tensor(dst_idx, dtype=torch.int64).to(out.device)
    out.index_copy_(0, dst, rows.to(device=out.device, dtype=out.dtype))


def move_rows(src: Any, src_idx: Any, out: Any, dst_idx: Any) -> None:
    """``out[dst_idx[i]] = src[src_idx[i]]``, gathering on ``src``'s device."""
    import torch

    if _fast_copy(src, src_idx, out, dst_idx):
        return
    idx = torch.as_tensor(src_idx, dtype=torch.int64).to(src.device)
    put_rows(out, dst_idx, torch.index_select(src, 0, idx))
