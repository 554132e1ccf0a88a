"""numba kernels of the CSC build: partition edges into destination ranges, sort a range into CSC.

Both kernels are parallel over fixed slices of their input and produce the same bytes whatever
the thread count: partitioning is stable (a slice's edges land in slice order), and the sort
within a destination is a full sort of its sources.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

_INSERTION_MAX = 24


@numba.njit(cache=True, nogil=True)
def _slices(n: int, parts: int) -> np.ndarray:
    bounds = np.empty(parts + 1, dtype=np.int64)
    for i in range(parts + 1):
        bounds[i] = (n * i) // parts
    return bounds


@numba.njit(parallel=True, cache=True, nogil=True)
def partition_edges(
    src: np.ndarray,
    dst: np.ndarray,
    shift: int,
    num_buckets: int,
    drop_self_loops: bool,
    undirected: bool,
    out_dtype_sample: np.ndarray,
    parts: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stable counting sort of edges by ``dst >> shift``.

    Returns ``(bucket_offsets [num_buckets+1], records [M, 2])`` with records
    ``(dst - bucket_start, src)``; ``undirected`` adds each edge's reverse, ``drop_self_loops``
    leaves out ``src == dst``. ``out_dtype_sample`` only carries the record dtype.
    """
    n = src.shape[0]
    bounds = _slices(n, parts)
    counts = np.zeros((parts, num_buckets), dtype=np.int64)
    for p in prange(parts):
        for i in range(bounds[p], bounds[p + 1]):
            s, d = src[i], dst[i]
            if drop_self_loops and s == d:
                continue
            counts[p, d >> shift] += 1
            if undirected and s != d:
                counts[p, s >> shift] += 1
    offsets = np.zeros(num_buckets + 1, dtype=np.int64)
    starts = np.empty((parts, num_buckets), dtype=np.int64)
    total = 0
    for b in range(num_buckets):
        offsets[b] = total
        for p in range(parts):
            starts[p, b] = total
            total += counts[p, b]
    offsets[num_buckets] = total
    rec = np.empty((total, 2), dtype=out_dtype_sample.dtype)
    for p in prange(parts):
        pos = starts[p].copy()
        for i in range(bounds[p], bounds[p + 1]):
            s, d = src[i], dst[i]
            if drop_self_loops and s == d:
                continue
            b = d >> shift
            rec[pos[b], 0] = d - (b << shift)
            rec[pos[b], 1] = s
            pos[b] += 1
            if undirected and s != d:
                b = s >> shift
                rec[pos[b], 0] = s - (b << shift)
                rec[pos[b], 1] = d
                pos[b] += 1
    return offsets, rec


@numba.njit(cache=True, nogil=True)
def _sort_segment(a: np.ndarray) -> None:
    n = a.shape[0]
    if n > _INSERTION_MAX:
        a[:] = np.sort(a)
        return
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@numba.njit(cache=True, nogil=True)
def _unique_sorted(a: np.ndarray) -> int:
    if a.shape[0] == 0:
        return 0
    k = 1
    for i in range(1, a.shape[0]):
        if a[i] != a[k - 1]:
            a[k] = a[i]
            k += 1
    return k


@numba.njit(parallel=True, cache=True, nogil=True)
def bucket_to_csc(
    rec: np.ndarray, width: int, dedup: bool, index_sample: np.ndarray, parts: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSC of one destination range from its ``(dst_local, src)`` records.

    Returns ``(degree [width], indices)``: sources grouped by destination, sorted ascending
    within each destination, duplicates removed when ``dedup``. Counting and scattering run
    over ``parts`` slices of the records at once (``parts * width`` counters).
    """
    m = rec.shape[0]
    bounds = _slices(m, parts)
    pos = np.zeros((parts, width), dtype=np.int64)
    for p in prange(parts):
        for i in range(bounds[p], bounds[p + 1]):
            pos[p, rec[i, 0]] += 1
    deg = np.zeros(width, dtype=np.int64)
    start = np.empty(width + 1, dtype=np.int64)
    total = 0
    for v in range(width):
        start[v] = total
        for p in range(parts):
            c = pos[p, v]
            pos[p, v] = total
            total += c
        deg[v] = total - start[v]
    start[width] = total
    indices = np.empty(m, dtype=index_sample.dtype)
    for p in prange(parts):
        for i in range(bounds[p], bounds[p + 1]):
            v = rec[i, 0]
            indices[pos[p, v]] = rec[i, 1]
            pos[p, v] += 1
    for v in prange(width):
        seg = indices[start[v] : start[v + 1]]
        _sort_segment(seg)
        if dedup:
            deg[v] = _unique_sorted(seg)
    if not dedup:
        return deg, indices
    k = 0
    for v in range(width):
        s = start[v]
        for j in range(deg[v]):
            indices[k] = indices[s + j]
            k += 1
    return deg, indices[:k].copy()


@numba.njit(parallel=True, cache=True, nogil=True)
def min_max(a: np.ndarray, parts: int) -> tuple[int, int]:
    """``(min, max)`` of a non-empty integer array in one parallel pass."""
    bounds = _slices(a.shape[0], parts)
    lo = np.empty(parts, dtype=np.int64)
    hi = np.empty(parts, dtype=np.int64)
    for p in prange(parts):
        mn, mx = a[0], a[0]
        for i in range(bounds[p], bounds[p + 1]):
            v = a[i]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        lo[p], hi[p] = mn, mx
    return lo.min(), hi.max()
