"""Synthetic graphs in the raw layout ``gnn-ooc preprocess`` reads, from thousands to billions of edges.

The model is a Chung-Lu graph with planted communities:

* node *rank* ``r`` in ``[0, N)`` has weight ``(r + offset) ** -alpha`` with
  ``alpha = 1 / (power_law_exponent - 1)``, so degrees follow a power law with that exponent;
  ``offset`` (Chung and Lu's ``i0``) flattens the head so that the biggest hub has about
  ``max_degree`` edges instead of a fair share of the whole graph;
* rank ``r`` belongs to community ``r % classes``; the label of a node is its community;
* an edge draws its source rank by weight; with probability ``homophily`` its destination is
  drawn by weight from the source's community, otherwise by weight from all nodes (which may
  land in the source's community too, so the measured edge homophily is a little higher,
  about ``homophily + (1 - homophily) / classes``);
* ranks become node ids through a seeded pseudo-random bijection of ``[0, N)`` (a bit mixer
  with cycle walking), so that neither hubs nor communities follow the id order;
* a node's features are its class centroid (a random vector of norm about 1) plus
  ``N(0, noise**2)`` per entry: on its own a node is hard to classify, the mean over its
  neighbourhood is easy, so a GNN clearly beats an MLP.

Every random number is a splitmix64 hash of ``(seed, stream, counter)`` where the counter is
the global edge or node index. Each chunk is therefore computed independently (in parallel with
numba, in bounded memory) and the files hold the same values whatever the thread count or the
chunk size; edges go to Parquet one row group per chunk, the ``.npy`` files are streamed.

Output folder (written to a hidden sibling and renamed into place when complete)::

    edges.parquet         int64 src, dst; one row per directed edge (self loops, duplicates kept)
    node_features.npy     float32 (or float16) [N, feature_dim]
    node_labels.npy       int64 [N], the planted community 0..classes-1
    split/train.npy       int64 node ids, ascending (likewise valid.npy, test.npy; disjoint)
    synth.json            the parameters and counts, as returned by ``synth``

Example:
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "g")
    >>> summary = synth(out, SynthConfig(nodes=1000, avg_degree=5, feature_dim=8, classes=4))
    >>> summary["counts"]["edges"], sorted(os.listdir(out))
    (5000, ['edges.parquet', 'node_features.npy', 'node_labels.npy', 'split', 'synth.json'])
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import IO, Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numba import prange

from gnn_ooc.graphstore.io.atomic import Staging
from gnn_ooc.graphstore.io.owned import SYNTH_RAW

__all__ = ["SynthConfig", "synth", "MAX_NODES", "EDGE_COMPRESSION"]

FORMAT_VERSION = 1

#: Ranks are sampled in doubles, which resolve single ranks well below 2**53.
MAX_NODES = 1 << 50

#: Parquet codec of ``edges.parquet``. Measured on 20 M edges read row group by row group:
#: uncompressed 220-260 M edges/s, lz4 160, snappy 60, for files only 1.5x smaller (random
#: ids hardly compress); uncompressed also writes fastest.
EDGE_COMPRESSION = "none"

_SPLIT_NAMES = ("train", "valid", "test")
FEATURE_DTYPES = ("float32", "float16")
NOISE_KINDS = ("gaussian", "uniform4")
_PARQUET_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
_MASK64 = (1 << 64) - 1
_MAX_OFFSET = 1e12

# Independent random streams: each gets its own 64-bit key derived from the seed.
_STREAM_SRC = 1
_STREAM_COIN = 2
_STREAM_DST = 3
_STREAM_CENTROID = 4
_STREAM_NOISE = 5
_STREAM_SPLIT = 6
_STREAM_SCRAMBLE = 7

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a synthetic graph; invalid values raise ``ValueError`` on construction.

    Attributes:
        nodes: number of nodes ``N`` (``classes <= N <= 2**50``).
        avg_degree: edge rows per node; the graph has ``round(N * avg_degree)`` directed edges,
            so the mean total (in + out) degree is ``2 * avg_degree``.
        feature_dim: feature columns ``F``.
        classes: planted communities, which are also the labels.
        seed: any integer in ``[0, 2**64)``; equal configs give byte-identical folders.
        homophily: probability that an edge's destination is drawn from the source's community.
        power_law_exponent: exponent ``gamma > 1`` of the degree distribution
            ``P(deg = k) ~ k**-gamma`` (real graphs: about 2 to 3; larger is less skewed).
        max_degree: expected total degree of the biggest hub. ``None`` (default) picks the
            structural cutoff ``sqrt(2 * edges)``; ``math.inf`` leaves the pure power law,
            whose top hub touches a few percent of all edges.
        noise: standard deviation of the Gaussian noise per feature entry, relative to class
            centroids of norm about 1. With the other defaults, about 60 % of the nodes are
            classifiable from their own features and 85-90 % from the mean over themselves and
            their in-neighbours (over 94 % with out-neighbours too).
        split: train/valid/test fractions of all nodes (each node lands in at most one; the
            sum may be below 1 to leave nodes out).
        chunk_edges: edges generated and written per Parquet row group; memory use is a small
            multiple of ``16 * chunk_edges`` bytes whatever the graph size.
        feature_dtype: ``float32`` or ``float16`` (half the bytes; each value is the float32
            one rounded, so a billion-edge graph's features need not be converted later).
        noise_kind: ``gaussian`` (Box-Muller, the default) or ``uniform4`` (the standardised
            sum of four uniforms: the same mean and variance, tails cut at 3.46 sigma, 14x
            faster to draw; half of synth's time at a billion edges otherwise).

    Example:
        >>> SynthConfig(nodes=5000, classes=5).feature_dim
        64
        >>> SynthConfig(homophily=1.5)
        Traceback (most recent call last):
        ...
        ValueError: homophily must be in [0, 1], got 1.5
    """

    nodes: int = 100_000
    avg_degree: float = 10.0
    feature_dim: int = 64
    classes: int = 8
    seed: int = 0
    homophily: float = 0.8
    power_law_exponent: float = 2.1
    max_degree: float | None = None
    noise: float = 0.6
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    chunk_edges: int = 4_000_000
    feature_dtype: str = "float32"
    noise_kind: str = "gaussian"

    def __post_init__(self) -> None:
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.feature_dtype!r}")
        if self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}, got {self.noise_kind!r}")
        _check_int("nodes", self.nodes, 1, MAX_NODES)
        _check_int("classes", self.classes, 1, self.nodes)
        _check_int("feature_dim", self.feature_dim, 1, 1 << 20)
        _check_int("seed", self.seed, 0, _MASK64)
        _check_int("chunk_edges", self.chunk_edges, 1, 1 << 31)
        _check_float("avg_degree", self.avg_degree, 0.0)
        _check_float("homophily", self.homophily, 0.0, 1.0)
        _check_float("noise", self.noise, 0.0)
        _check_float("power_law_exponent", self.power_law_exponent, 1.0, open_low=True)
        if self.max_degree is not None:
            _check_float("max_degree", self.max_degree, 0.0, open_low=True, allow_inf=True)
        self._check_split()
        if self.edges > 1 << 62:
            raise ValueError(f"nodes * avg_degree = {self.edges:,} edges is too many")
        self._normalise()

    def _check_split(self) -> None:
        if not isinstance(self.split, (tuple, list)) or len(self.split) != 3:
            raise ValueError(f"split must be 3 fractions (train, valid, test), got {self.split!r}")
        for name, value in zip(_SPLIT_NAMES, self.split):
            _check_float(f"split {name} fraction", value, 0.0, 1.0)
        if sum(self.split) > 1.0 + 1e-9:
            raise ValueError(f"split fractions must sum to at most 1, got {sum(self.split):g}")

    def _normalise(self) -> None:
        # numpy scalars and lists are accepted but stored as plain Python values, so that the
        # config stays hashable and its asdict() goes straight to JSON
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "split":
                value = tuple(float(x) for x in value)
            elif isinstance(value, np.integer):
                value = int(value)
            elif isinstance(value, np.floating):
                value = float(value)
            object.__setattr__(self, f.name, value)

    @property
    def edges(self) -> int:
        """Number of directed edge rows, ``round(nodes * avg_degree)``."""
        return int(round(self.nodes * self.avg_degree))

    @property
    def resolved_max_degree(self) -> float | None:
        """The hub cap in use, None for none.

        The default, the structural cutoff ``sqrt(N * mean degree) = sqrt(2 * edges)``, is of
        the order of the largest degrees in real graphs of that size.
        """
        if self.max_degree is None:
            return math.sqrt(2.0 * self.edges)
        return None if math.isinf(self.max_degree) else float(self.max_degree)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int subclass but never a meaningful count
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def _check_float(
    name: str,
    value: object,
    lo: float,
    hi: float = math.inf,
    *,
    open_low: bool = False,
    allow_inf: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    above = v > lo if open_low else v >= lo
    finite = math.isfinite(v) or (allow_inf and v == math.inf)
    if finite and above and v <= hi:
        return
    if math.isfinite(hi):
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {value}")
    rel = ">" if open_low else ">="
    raise ValueError(
        f"{name} must be {'' if allow_inf else 'finite and '}{rel} {lo:g}, got {value}"
    )


# ---------------------------------------------------------------------------------------------
# counter-based random numbers (splitmix64)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_U53 = 1.0 / 9007199254740992.0
_U32 = 1.0 / 4294967296.0
_TWO_PI = 2.0 * math.pi
_U16 = 1.0 / 65536.0
_SQRT3 = math.sqrt(3.0)


def _stream_key(seed: int, stream: int) -> np.uint64:
    """A 64-bit key per (seed, stream); plain Python as it runs once, outside numba."""
    z = (seed + stream * 0x9E3779B97F4A7C15) & _MASK64
    for _ in range(2):  # two rounds so that neighbouring seeds give unrelated keys
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z = z ^ (z >> 31)
    return np.uint64(z)


@numba.njit(cache=True, nogil=True)
def _hash(key: np.uint64, counter: np.uint64) -> np.uint64:
    z = key + counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _unit(h: np.uint64) -> float:
    """Uniform in [0, 1) from the top 53 bits."""
    return np.float64(h >> np.uint64(11)) * _U53


@numba.njit(cache=True, nogil=True)
def _normal_pair(key: np.uint64, counter: np.uint64) -> tuple[float, float]:
    # Box-Muller from one hash: 32 bits each is plenty for features (tails cut at 6.7 sigma)
    h = _hash(key, counter)
    u1 = (np.float64(h >> np.uint64(32)) + 1.0) * _U32
    u2 = np.float64(h & np.uint64(0xFFFFFFFF)) * _U32
    r = math.sqrt(-2.0 * math.log(u1))
    return r * math.cos(_TWO_PI * u2), r * math.sin(_TWO_PI * u2)


@numba.njit(cache=True, nogil=True)
def _add_uniform4_row(out: np.ndarray, key: np.uint64, row: np.uint64, scale: float) -> None:
    """``out += scale * Z``, Z the standardised sum of four 16-bit uniforms of one hash per entry
    (mean 0, variance 1, bounded at 3.46 sigma): 14x faster than Box-Muller, nearly as normal."""
    f = out.shape[0]
    base = row * np.uint64(f)
    m = np.uint64(0xFFFF)
    for k in range(f):
        h = _hash(key, base + np.uint64(k))
        total = (h & m) + ((h >> np.uint64(16)) & m) + ((h >> np.uint64(32)) & m) + (h >> np.uint64(48))
        out[k] += scale * (np.float64(total) * _U16 - 2.0) * _SQRT3


@numba.njit(cache=True, nogil=True)
def _add_gaussian_row(out: np.ndarray, key: np.uint64, row: np.uint64, scale: float) -> None:
    """``out += scale * N(0, 1)``, entry ``k`` of row ``row`` from counter ``row * pairs + k/2``."""
    f = out.shape[0]
    pairs = (f + 1) // 2
    base = row * np.uint64(pairs)
    for k in range(pairs):
        a, b = _normal_pair(key, base + np.uint64(k))
        out[2 * k] += scale * a
        if 2 * k + 1 < f:
            out[2 * k + 1] += scale * b


# ---------------------------------------------------------------------------------------------
# power-law ranks and the id bijection


@dataclass(frozen=True)
class _PowerLaw:
    """Inverse-CDF sampling of ranks ``[0, m)`` with weight ``(r + offset) ** -alpha``.

    The continuous density ``(x + offset) ** -alpha`` on ``[0, m)`` is floored, which gives
    each rank the integral over its unit interval. The normaliser uses ``log1p``/``expm1`` to
    stay accurate for large offsets (a flat head) and ``alpha`` near 1; the per-sample inverse
    uses one ``pow``, twice as fast as ``expm1(log1p(..))``, whose absolute error
    ``offset * 2**-52`` is harmless below ``_MAX_OFFSET``.
    """

    alpha: float
    offset: float

    @property
    def beta(self) -> float:
        return 1.0 - self.alpha

    @property
    def log_mode(self) -> bool:
        # alpha == 1: the CDF is a logarithm, not a power
        return abs(self.beta) < 1e-9

    @property
    def inv_beta(self) -> float:
        return 0.0 if self.log_mode else 1.0 / self.beta

    def spread(self, m: np.ndarray | int, offset: np.ndarray | float) -> np.ndarray:
        """The CDF's normaliser (``spread`` of ``_rank``) for populations ``m``."""
        log_span = np.log1p(np.asarray(m, np.float64) / offset)
        return log_span if self.log_mode else np.expm1(self.beta * log_span)

    def top_share(self, m: int) -> float:
        """Probability of rank 0 among ``m``."""
        return float(self.spread(1, self.offset) / self.spread(m, self.offset))

    @classmethod
    def for_config(cls, cfg: SynthConfig) -> _PowerLaw:
        """The law of ``cfg``, its offset chosen so the top hub's expected degree is the cap."""
        alpha = 1.0 / (cfg.power_law_exponent - 1.0)
        cap = cfg.resolved_max_degree

        def degree(law: _PowerLaw) -> float:
            # rank 0 gets about top_share of the sources and of the destinations
            return 2.0 * cfg.edges * law.top_share(cfg.nodes)

        pure = cls(alpha, 1.0)
        if cap is None or degree(pure) <= cap:
            return pure
        # the top share falls monotonically with the offset: bisect on its logarithm, up to an
        # offset whose rounding error in _rank stays far below one rank
        lo, hi = 0.0, math.log(_MAX_OFFSET)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if degree(cls(alpha, math.exp(mid))) > cap:
                lo = mid
            else:
                hi = mid
        return cls(alpha, math.exp(hi))


@numba.njit(cache=True, nogil=True)
def _rank(
    u: float, m: np.int64, offset: float, spread: float, inv_beta: float, log_mode: bool
) -> np.int64:
    if log_mode:
        x = offset * math.expm1(u * spread)
    else:
        x = offset * ((1.0 + u * spread) ** inv_beta - 1.0)
    # `not x < m` also catches inf and nan from rounding at the far end
    if not x < m:
        return m - 1
    return np.int64(x)


@dataclass(frozen=True)
class _Scramble:
    """A seeded bijection of ``[0, n)`` from ranks to ids.

    An affine map ``a * rank + b mod n`` would be cheaper but keeps ``id mod g`` a function of
    ``rank mod g`` for any ``g`` dividing ``n``, and communities are ``rank % classes``: labels
    would repeat with the id. Instead ranks go through an invertible xorshift-multiply mixer
    on ``k = ceil(log2 n)`` bits, reapplied while the result is ``>= n`` (cycle walking, fewer
    than two rounds on average since ``2**k < 2 n``), which stays a bijection of ``[0, n)``.
    """

    n: int
    bits: int
    key_in: int
    key_out: int
    mult1: int
    mult2: int

    @classmethod
    def make(cls, n: int, seed: int) -> _Scramble:
        bits = max(1, (n - 1).bit_length())
        mask = (1 << bits) - 1
        words = [int(_stream_key(seed, _STREAM_SCRAMBLE + 100 * i)) for i in range(4)]
        # odd multipliers are invertible modulo 2**bits
        return cls(n, bits, words[0] & mask, words[1] & mask, words[2] | 1, words[3] | 1)

    def params(self) -> np.ndarray:
        """``[n, bits, shift, mask, key_in, key_out, mult1, mult2, inv1, inv2]`` for the kernels."""
        mod = 1 << self.bits
        # one xorshift by at least half the width is its own inverse
        shift = (self.bits + 1) // 2
        m1, m2 = self.mult1 % mod, self.mult2 % mod
        inv1, inv2 = pow(m1, -1, mod), pow(m2, -1, mod)
        words = [self.n, self.bits, shift, mod - 1, self.key_in, self.key_out, m1, m2, inv1, inv2]
        return np.array(words, dtype=np.uint64)

    def to_id(self, rank: int) -> int:
        """Plain-Python ``_to_id`` (for the summary and tests)."""
        return int(_to_id(np.int64(rank), self.params()))


@numba.njit(cache=True, nogil=True)
def _mix(x: np.uint64, p: np.ndarray) -> np.uint64:
    shift, mask = p[2], p[3]
    x ^= p[4]
    x ^= x >> shift
    x = (x * p[6]) & mask
    x ^= x >> shift
    x = (x * p[7]) & mask
    x ^= x >> shift
    return (x + p[5]) & mask


@numba.njit(cache=True, nogil=True)
def _unmix(x: np.uint64, p: np.ndarray) -> np.uint64:
    shift, mask = p[2], p[3]
    x = (x - p[5]) & mask
    x ^= x >> shift
    x = (x * p[9]) & mask
    x ^= x >> shift
    x = (x * p[8]) & mask
    x ^= x >> shift
    return x ^ p[4]


@numba.njit(cache=True, nogil=True)
def _to_id(rank: np.int64, p: np.ndarray) -> np.int64:
    x = _mix(np.uint64(rank), p)
    while x >= p[0]:
        x = _mix(x, p)
    return np.int64(x)


@numba.njit(cache=True, nogil=True)
def _to_rank(node: np.int64, p: np.ndarray) -> np.int64:
    x = _unmix(np.uint64(node), p)
    while x >= p[0]:
        x = _unmix(x, p)
    return np.int64(x)


# ---------------------------------------------------------------------------------------------
# kernels (parallel over items; each item's values depend only on its global index)


@numba.njit(parallel=True, cache=True, nogil=True)
def _edge_kernel(
    first: np.int64,
    src: np.ndarray,
    dst: np.ndarray,
    n: np.int64,
    classes: np.int64,
    offset_all: float,
    spread_all: float,
    comm_size: np.ndarray,
    comm_offset: np.ndarray,
    comm_spread: np.ndarray,
    inv_beta: float,
    log_mode: bool,
    homophily: float,
    keys: np.ndarray,
    scramble: np.ndarray,
) -> tuple[int, int, int]:
    """Fill ``src``/``dst`` with edges ``first ..``.

    Returns the numbers of intra-community edges, self loops and endpoints at the top hub.
    """
    intra = 0
    loops = 0
    hub = 0
    for i in prange(src.shape[0]):
        e = np.uint64(first) + np.uint64(i)
        rs = _rank(_unit(_hash(keys[0], e)), n, offset_all, spread_all, inv_beta, log_mode)
        c = rs % classes
        u = _unit(_hash(keys[2], e))
        if _unit(_hash(keys[1], e)) < homophily:
            local = _rank(u, comm_size[c], comm_offset[c], comm_spread[c], inv_beta, log_mode)
            rd = local * classes + c
        else:
            rd = _rank(u, n, offset_all, spread_all, inv_beta, log_mode)
        if rd % classes == c:
            intra += 1
        if rs == 0:
            hub += 1
        if rd == 0:
            hub += 1
        s = _to_id(rs, scramble)
        d = _to_id(rd, scramble)
        if s == d:
            loops += 1
        src[i] = s
        dst[i] = d
    return intra, loops, hub


@numba.njit(cache=True, nogil=True)
def _centroids(classes: np.int64, dim: np.int64, key: np.uint64) -> np.ndarray:
    out = np.zeros((classes, dim), dtype=np.float64)
    # entries N(0, 1/F) give every centroid norm ~1, so `noise` means the same for any F
    scale = 1.0 / math.sqrt(dim)
    for c in range(classes):
        _add_gaussian_row(out[c], key, np.uint64(c), scale)
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _node_kernel(
    first: np.int64,
    labels: np.ndarray,
    feats: np.ndarray,
    classes: np.int64,
    scramble: np.ndarray,
    centroids: np.ndarray,
    noise: float,
    key: np.uint64,
    uniform4: bool,
) -> None:
    """Labels and features of nodes ``first .. first + len(labels)``."""
    for i in prange(labels.shape[0]):
        v = first + np.int64(i)
        c = _to_rank(v, scramble) % classes
        labels[i] = c
        feats[i, :] = centroids[c]
        if uniform4:
            _add_uniform4_row(feats[i], key, np.uint64(v), noise)
        else:
            _add_gaussian_row(feats[i], key, np.uint64(v), noise)


@numba.njit(parallel=True, cache=True, nogil=True)
def _split_kernel(first: np.int64, out: np.ndarray, key: np.uint64, cuts: np.ndarray) -> None:
    """Split of nodes ``first ..``: 0 train, 1 valid, 2 test, 3 none (first k with u < cuts[k])."""
    for i in prange(out.shape[0]):
        u = _unit(_hash(key, np.uint64(first) + np.uint64(i)))
        k = 0
        while k < 3 and not u < cuts[k]:
            k += 1
        out[i] = k


@numba.njit(parallel=True, cache=True, nogil=True)
def _split_counts(n: np.int64, key: np.uint64, cuts: np.ndarray) -> np.ndarray:
    """Sizes of the three splits, storing nothing per node (the .npy headers come first)."""
    train = 0
    valid = 0
    test = 0
    for v in prange(n):
        u = _unit(_hash(key, np.uint64(v)))
        if u < cuts[0]:
            train += 1
        elif u < cuts[1]:
            valid += 1
        elif u < cuts[2]:
            test += 1
    return np.array([train, valid, test], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# writers


class _Background:
    """Runs one job at a time on a helper thread, so that writing chunk k overlaps computing
    chunk k + 1 (numba kernels and pyarrow release the GIL). At most one job is pending, which
    bounds memory to two chunks; a job's exception surfaces at the next call."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-writer")
        self._pending: Future[None] | None = None

    def __enter__(self) -> _Background:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(job)


class _Reporter:
    """Progress lines, at most one a second unless forced."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._last = -math.inf

    def __call__(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if self._progress is not None and (force or now - self._last >= 1.0):
            self._last = now
            self._progress(message)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


def _open_npy(stack: ExitStack, path: Path, dtype: type, shape: tuple[int, ...]) -> IO[bytes]:
    """A raw ``.npy`` writer: the header now, rows appended by the caller. No memmap, so that
    resident memory stays at one chunk however large the file."""
    fp: IO[bytes] = stack.enter_context(open(path, "wb"))
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    np.lib.format.write_array_header_1_0(fp, header)
    return fp


def _write_all(files: list[IO[bytes]], arrays: list[np.ndarray]) -> None:
    for fp, arr in zip(files, arrays):
        fp.write(np.ascontiguousarray(arr).data)


def _write_edges(path: Path, cfg: SynthConfig, scr: _Scramble, report: _Reporter) -> dict[str, Any]:
    n, total, classes = cfg.nodes, cfg.edges, cfg.classes
    law = _PowerLaw.for_config(cfg)
    comm_size = (n - np.arange(classes, dtype=np.int64) + classes - 1) // classes
    # rank j * classes + c has weight (j * classes + c + offset) ** -alpha, proportional to
    # (j + (c + offset) / classes) ** -alpha: the same law within a community, other offset
    comm_offset = (np.arange(classes) + law.offset) / classes
    comm_spread = law.spread(comm_size, comm_offset)
    spread_all = float(law.spread(n, law.offset))
    keys = np.array([_stream_key(cfg.seed, s) for s in (_STREAM_SRC, _STREAM_COIN, _STREAM_DST)])
    intra = loops = hub = 0
    t0 = time.monotonic()
    # dictionary encoding only burns time on near-unique ids; statistics are cheap and useful
    with (
        pq.ParquetWriter(
            path, _PARQUET_SCHEMA, compression=EDGE_COMPRESSION, use_dictionary=False
        ) as writer,
        _Background() as background,
    ):
        if total == 0:
            writer.write_table(_PARQUET_SCHEMA.empty_table())
        for start, count in _chunks(total, cfg.chunk_edges):
            src = np.empty(count, np.int64)
            dst = np.empty(count, np.int64)
            i, s, h = _edge_kernel(
                np.int64(start), src, dst, np.int64(n), np.int64(classes), law.offset,
                spread_all, comm_size, comm_offset, comm_spread, law.inv_beta, law.log_mode,
                float(cfg.homophily), keys, scr.params(),
            )  # fmt: skip
            intra, loops, hub = intra + int(i), loops + int(s), hub + int(h)
            table = pa.Table.from_arrays([pa.array(src), pa.array(dst)], schema=_PARQUET_SCHEMA)
            background.submit(partial(writer.write_table, table, row_group_size=count))
            done = start + count
            rate = done / max(time.monotonic() - t0, 1e-9)
            report(f"edges {done:,}/{total:,} ({100 * done / total:.0f} %, {rate / 1e6:.1f} M/s)")
    return {
        "counts": {"edges": total, "intra_class_edges": intra, "self_loops": loops},
        "hub_degree": hub,
        "degree_offset": law.offset,
    }


def _rounded(feats: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``feats.astype(dtype)``, the same bits, by torch's vectorised conversion (numpy's float16
    conversion ran at 90-140 M values/s here, torch's at 700-1800 M: a third of synth's time at a
    billion edges)."""
    import torch

    out = np.empty(feats.shape, dtype)
    torch.from_numpy(out).copy_(torch.from_numpy(feats))
    return out


def _write_nodes(root: Path, cfg: SynthConfig, scr: _Scramble, report: _Reporter) -> dict[str, int]:
    n, f = cfg.nodes, cfg.feature_dim
    split_key = _stream_key(cfg.seed, _STREAM_SPLIT)
    cuts = np.cumsum(np.asarray(cfg.split, dtype=np.float64))
    sizes = [int(x) for x in _split_counts(np.int64(n), split_key, cuts)]
    centroids = _centroids(
        np.int64(cfg.classes), np.int64(f), _stream_key(cfg.seed, _STREAM_CENTROID)
    )
    noise_key = _stream_key(cfg.seed, _STREAM_NOISE)
    # a node chunk holds about as many bytes as an edge chunk (16 B per edge)
    rows = max(1, (4 * cfg.chunk_edges) // f)
    (root / "split").mkdir()
    with ExitStack() as stack:
        dtype = np.dtype(cfg.feature_dtype)
        fx = _open_npy(stack, root / "node_features.npy", dtype.type, (n, f))
        fy = _open_npy(stack, root / "node_labels.npy", np.int64, (n,))
        fs = [
            _open_npy(stack, root / "split" / f"{name}.npy", np.int64, (size,))
            for name, size in zip(_SPLIT_NAMES, sizes)
        ]
        background = stack.enter_context(_Background())  # entered last: drained before closing
        for start, count in _chunks(n, rows):
            labels = np.empty(count, np.int64)
            feats = np.empty((count, f), np.float32)
            _node_kernel(
                np.int64(start), labels, feats, np.int64(cfg.classes), scr.params(), centroids,
                float(cfg.noise), noise_key, cfg.noise_kind == "uniform4",
            )  # fmt: skip
            which = np.empty(count, np.int8)
            _split_kernel(np.int64(start), which, split_key, cuts)
            # ascending within the chunk, chunks in order: the split files come out sorted
            ids = [np.flatnonzero(which == k).astype(np.int64) + start for k in range(3)]
            out = feats if dtype == np.float32 else _rounded(feats, dtype)
            background.submit(partial(_write_all, [fx, fy, *fs], [out, labels, *ids]))
            report(f"nodes {start + count:,}/{n:,}")
    return {"nodes": n, **dict(zip(_SPLIT_NAMES, sizes))}


# ---------------------------------------------------------------------------------------------
# public entry point


def _summary(
    cfg: SynthConfig, scr: _Scramble, edges: dict[str, Any], nodes: dict[str, int]
) -> dict[str, Any]:
    params = asdict(cfg)
    params["split"] = list(cfg.split)
    counts = {**nodes, **edges["counts"]}
    return {
        "generator": "gnn_ooc.tools.synth",
        "format_version": FORMAT_VERSION,
        **params,
        "counts": counts,
        "edge_homophily": counts["intra_class_edges"] / counts["edges"] if cfg.edges else None,
        "hub_degree": edges["hub_degree"],
        "degree_offset": edges["degree_offset"],
        "hub_id": scr.to_id(0),
        "files": {
            "edges": "edges.parquet",
            "features": "node_features.npy",
            "labels": "node_labels.npy",
            "split": {name: f"split/{name}.npy" for name in _SPLIT_NAMES},
        },
    }


def synth(
    out: str | os.PathLike[str],
    config: SynthConfig,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic graph folder ``out`` (raw layout) and return its ``synth.json`` summary.

    The folder is built as ``.<name>.partial-<random>`` next to ``out`` and renamed into place
    when complete; on any error it is removed. An existing ``out`` raises ``FileExistsError``
    unless ``overwrite`` is true. ``progress`` receives human-readable status lines.

    The summary holds the config's fields, ``counts`` (nodes, edges, train/valid/test sizes,
    intra-class edges, self loops), ``edge_homophily``, ``hub_degree`` (total degree of the
    top-weight node, about ``max_degree``) and its ``hub_id``, the power law's ``degree_offset`` and the ``files``.

    Example:
        >>> import tempfile, os, numpy as np
        >>> out = os.path.join(tempfile.mkdtemp(), "tiny")
        >>> s = synth(out, SynthConfig(nodes=500, avg_degree=4, feature_dim=16, classes=3, seed=7))
        >>> np.load(os.path.join(out, "node_features.npy")).shape, s["counts"]["edges"]
        ((500, 16), 2000)
    """
    if not isinstance(config, SynthConfig):
        raise ValueError(f"config must be a SynthConfig, got {type(config).__name__}")
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise ValueError(f"out must name a folder, got {str(out)!r}")
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace a graph gnn-ooc synth wrote there)")
    report = _Reporter(progress)
    t0 = time.monotonic()
    # replaces only a folder synth wrote (synth.json), carrying over anything else it holds
    with Staging(out, what="gnn-ooc synth", kind=SYNTH_RAW, flag="OUT") as stage:
        tmp = stage.path
        scr = _Scramble.make(config.nodes, config.seed)
        edges = _write_edges(tmp / "edges.parquet", config, scr, report)
        nodes = _write_nodes(tmp, config, scr, report)
        summary = _summary(config, scr, edges, nodes)
        (tmp / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
        stage.publish()
    elapsed = time.monotonic() - t0
    report(
        f"wrote {out}: {config.nodes:,} nodes, {config.edges:,} edges in {elapsed:.1f} s "
        f"({config.edges / max(elapsed, 1e-9) / 1e6:.1f} M edges/s)",
        force=True,
    )
    return summary
