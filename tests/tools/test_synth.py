"""Tests of the synthetic graph generator ``gnn_ooc.tools.synth``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numba
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gnn_ooc.tools.synth as synth_mod
from gnn_ooc.tools.synth import SynthConfig, synth

# Small enough to be quick, large enough for the statistics below; tiny chunks so that edges
# span 8 row groups and nodes 12 chunks, which exercises every chunk boundary.
SMALL = SynthConfig(nodes=5000, chunk_edges=7000)
FILES = (
    "edges.parquet",
    "node_features.npy",
    "node_labels.npy",
    "split/train.npy",
    "split/valid.npy",
    "split/test.npy",
    "synth.json",
)


@dataclass(frozen=True)
class Graph:
    root: Path
    summary: dict[str, Any]
    src: np.ndarray
    dst: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray]


def load(root: Path, summary: dict[str, Any]) -> Graph:
    table = pq.read_table(root / "edges.parquet")
    return Graph(
        root=root,
        summary=summary,
        src=table["src"].to_numpy(),
        dst=table["dst"].to_numpy(),
        features=np.load(root / "node_features.npy"),
        labels=np.load(root / "node_labels.npy"),
        splits={k: np.load(root / "split" / f"{k}.npy") for k in ("train", "valid", "test")},
    )


def make(root: Path, config: SynthConfig) -> Graph:
    return load(root, synth(root, config))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    return make(tmp_path_factory.mktemp("synth") / "small", SMALL)


def degrees(g: Graph) -> np.ndarray:
    n = len(g.labels)
    return np.bincount(g.src, minlength=n) + np.bincount(g.dst, minlength=n)


def nearest_centroid_accuracy(
    x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray
) -> float:
    classes = int(labels.max()) + 1
    centroids = np.stack([x[train][labels[train] == c].mean(axis=0) for c in range(classes)])
    dist = ((x[test][:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((dist.argmin(axis=1) == labels[test]).mean())


def neighbour_mean(x: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Mean of each node's own row and its in-neighbours' rows (what one GNN layer sees)."""
    total = x.astype(np.float64).copy()
    count = np.ones(len(x))
    np.add.at(total, dst, x[src])
    np.add.at(count, dst, 1.0)
    return total / count[:, None]


# ---------------------------------------------------------------------------------------------
# layout


def test_layout_dtypes_and_shapes(small: Graph) -> None:
    cfg = SMALL
    for name in FILES:
        assert (small.root / name).is_file(), name
    pf = pq.ParquetFile(small.root / "edges.parquet")
    assert pf.schema_arrow == pa.schema([("src", pa.int64()), ("dst", pa.int64())])
    assert pf.metadata.num_rows == cfg.edges == 50_000
    assert pf.metadata.num_row_groups == math.ceil(cfg.edges / cfg.chunk_edges)
    assert small.features.dtype == np.float32
    assert small.features.shape == (cfg.nodes, cfg.feature_dim)
    assert np.isfinite(small.features).all()
    assert small.labels.dtype == np.int64 and small.labels.shape == (cfg.nodes,)
    for ids in small.splits.values():
        assert ids.dtype == np.int64 and ids.ndim == 1


def test_summary_is_written_and_returned(small: Graph) -> None:
    on_disk = json.loads((small.root / "synth.json").read_text())
    assert on_disk == small.summary
    s = small.summary
    for key in ("nodes", "avg_degree", "feature_dim", "classes", "seed", "homophily", "noise"):
        assert s[key] == getattr(SMALL, key)
    assert s["split"] == list(SMALL.split)
    counts = s["counts"]
    assert counts["nodes"] == SMALL.nodes and counts["edges"] == len(small.src)
    assert [counts[k] for k in ("train", "valid", "test")] == [
        len(small.splits[k]) for k in ("train", "valid", "test")
    ]
    assert counts["self_loops"] == int((small.src == small.dst).sum())
    intra = int((small.labels[small.src] == small.labels[small.dst]).sum())
    assert counts["intra_class_edges"] == intra
    assert s["edge_homophily"] == pytest.approx(intra / len(small.src))


def test_no_temporary_folder_left(small: Graph) -> None:
    assert [p.name for p in small.root.parent.iterdir()] == [small.root.name]


def test_ids_in_range(small: Graph) -> None:
    n = SMALL.nodes
    for ids in (small.src, small.dst, *small.splits.values()):
        assert ids.min() >= 0 and ids.max() < n
    assert small.labels.min() == 0 and small.labels.max() == SMALL.classes - 1


def test_labels_are_balanced_communities(small: Graph) -> None:
    # community of rank r is r % classes and ids are a bijection of ranks: sizes differ by <= 1
    counts = np.bincount(small.labels, minlength=SMALL.classes)
    assert counts.max() - counts.min() <= 1


def test_split_disjoint_sorted_and_sized(small: Graph) -> None:
    n = SMALL.nodes
    allids = np.concatenate(list(small.splits.values()))
    assert len(np.unique(allids)) == len(allids) == n  # fractions sum to 1: a partition
    for name, frac in zip(("train", "valid", "test"), SMALL.split):
        ids = small.splits[name]
        assert (np.diff(ids) > 0).all()
        assert abs(len(ids) / n - frac) < 0.03, name


def test_split_fractions_below_one(tmp_path: Path) -> None:
    g = make(tmp_path / "g", SynthConfig(nodes=4000, avg_degree=2, split=(0.1, 0.05, 0.0)))
    assert abs(len(g.splits["train"]) / 4000 - 0.1) < 0.02
    assert abs(len(g.splits["valid"]) / 4000 - 0.05) < 0.015
    assert g.splits["test"].shape == (0,)
    assert not np.intersect1d(g.splits["train"], g.splits["valid"]).size


# ---------------------------------------------------------------------------------------------
# determinism


def read_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in FILES}


def test_same_config_same_bytes_any_thread_count(small: Graph, tmp_path: Path) -> None:
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        synth(tmp_path / "again", SMALL)
    finally:
        numba.set_num_threads(before)
    assert read_bytes(tmp_path / "again") == read_bytes(small.root)


def test_chunk_size_does_not_change_the_graph(small: Graph, tmp_path: Path) -> None:
    other = make(tmp_path / "big_chunks", SynthConfig(nodes=5000, chunk_edges=1 << 20))
    np.testing.assert_array_equal(other.src, small.src)
    np.testing.assert_array_equal(other.dst, small.dst)
    np.testing.assert_array_equal(other.features, small.features)
    np.testing.assert_array_equal(other.labels, small.labels)
    for name, ids in small.splits.items():
        np.testing.assert_array_equal(other.splits[name], ids)


def test_seed_changes_everything(small: Graph, tmp_path: Path) -> None:
    other = make(tmp_path / "seed1", SynthConfig(nodes=5000, chunk_edges=7000, seed=1))
    assert not np.array_equal(other.src, small.src)
    assert not np.array_equal(other.features, small.features)
    assert not np.array_equal(other.labels, small.labels)
    assert not np.array_equal(other.splits["train"], small.splits["train"])


# ---------------------------------------------------------------------------------------------
# graph model


def test_degrees_are_heavy_tailed(small: Graph) -> None:
    deg = degrees(small)
    assert deg.mean() == pytest.approx(2 * SMALL.avg_degree)
    assert deg.max() > 10 * deg.mean()
    # the default hub cap is sqrt(2 * edges), met by the biggest hub (rank 0, id hub_id)
    cap = math.sqrt(2 * SMALL.edges)
    assert 0.7 * cap < small.summary["hub_degree"] < 1.3 * cap
    assert deg[small.summary["hub_id"]] == small.summary["hub_degree"]
    assert deg.max() < 1.3 * cap
    # power law, not just one hub: many nodes far above and far below the mean
    assert (deg > 5 * deg.mean()).sum() > 20
    assert np.median(deg) < deg.mean()


def test_uncapped_power_law_has_bigger_hubs(small: Graph, tmp_path: Path) -> None:
    g = make(tmp_path / "pure", SynthConfig(nodes=5000, max_degree=math.inf))
    assert degrees(g).max() > 5 * degrees(small).max()


def test_ids_are_scrambled(small: Graph) -> None:
    # hubs are spread over the ids, and labels do not follow the id order
    top = np.argsort(degrees(small))[-20:]
    assert top.max() - top.min() > SMALL.nodes // 2
    same_as_next = float((small.labels[1:] == small.labels[:-1]).mean())
    assert same_as_next == pytest.approx(1 / SMALL.classes, abs=0.03)
    for period in range(1, 20):
        head = small.labels[: SMALL.nodes - period]
        assert (head == small.labels[period:]).mean() < 0.2, period


@pytest.mark.parametrize("homophily", [0.0, 0.5, 0.8, 1.0])
def test_homophily(homophily: float, tmp_path: Path) -> None:
    cfg = SynthConfig(nodes=4000, avg_degree=10, classes=5, homophily=homophily)
    g = make(tmp_path / "h", cfg)
    measured = float((g.labels[g.src] == g.labels[g.dst]).mean())
    # the (1 - h) uniform draws hit the own community about 1 / classes of the time
    expected = homophily + (1 - homophily) / cfg.classes
    assert measured == pytest.approx(expected, abs=0.03)


def test_gnn_beats_mlp(small: Graph) -> None:
    train, test = small.splits["train"], small.splits["test"]
    own = nearest_centroid_accuracy(small.features, small.labels, train, test)
    agg = neighbour_mean(small.features, small.src, small.dst)
    mean_in = nearest_centroid_accuracy(agg, small.labels, train, test)
    both = neighbour_mean(small.features, np.r_[small.src, small.dst], np.r_[small.dst, small.src])
    mean_both = nearest_centroid_accuracy(both, small.labels, train, test)
    assert 0.40 <= own <= 0.65
    assert mean_in > 0.85 and mean_in > own + 0.2
    assert mean_both > 0.9


def test_feature_noise_level(small: Graph) -> None:
    centroids = np.stack(
        [small.features[small.labels == c].mean(axis=0) for c in range(SMALL.classes)]
    )
    residual = small.features - centroids[small.labels]
    assert residual.std() == pytest.approx(SMALL.noise, rel=0.03)
    # centroid norm about 1 whatever feature_dim
    assert np.linalg.norm(centroids, axis=1).mean() == pytest.approx(1.0, abs=0.3)


def test_uniform4_noise_has_the_same_level_and_only_the_features_change(small: Graph, tmp_path: Path) -> None:
    fast = make(tmp_path / "u4", dataclasses.replace(SMALL, noise_kind="uniform4"))
    residual = fast.features - small.features  # the same centroids: noise minus noise
    assert residual.std() == pytest.approx(SMALL.noise * 2**0.5, rel=0.03)
    centroids = np.stack([fast.features[fast.labels == c].mean(axis=0) for c in range(SMALL.classes)])
    noise = fast.features - centroids[fast.labels]
    assert noise.std() == pytest.approx(SMALL.noise, rel=0.03)
    assert np.abs(noise).max() <= SMALL.noise * 2 * 3**0.5 + 0.05  # bounded at 2 sqrt(3) sigma
    assert np.array_equal(fast.labels, small.labels) and np.array_equal(fast.src, small.src)
    again = make(tmp_path / "u4-chunks", dataclasses.replace(SMALL, noise_kind="uniform4", chunk_edges=997))
    assert np.array_equal(again.features, fast.features)


def test_float16_features_are_the_float32_ones_rounded(small: Graph, tmp_path: Path) -> None:
    half = make(tmp_path / "half", dataclasses.replace(SMALL, feature_dtype="float16"))
    assert half.features.dtype == np.float16
    assert np.array_equal(half.features.view(np.uint16), small.features.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("gamma", [1.5, 2.0, 3.5])
def test_other_exponents(gamma: float, tmp_path: Path) -> None:
    # 2.0 takes the logarithmic branch of the inverse CDF, 1.5 the alpha > 1 one
    g = make(
        tmp_path / "g", SynthConfig(nodes=3000, avg_degree=8, power_law_exponent=gamma, seed=3)
    )
    assert g.src.min() >= 0 and max(g.src.max(), g.dst.max()) < 3000
    deg = degrees(g)
    assert deg.max() > 3 * deg.mean()


# ---------------------------------------------------------------------------------------------
# exactness against a plain-Python reference

_M64 = (1 << 64) - 1


def _ref_hash(key: int, counter: int) -> int:
    z = (key + counter * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _ref_rank(u: float, m: int, alpha: float, offset: float) -> int:
    beta = 1.0 - alpha
    spread = math.expm1(beta * math.log1p(m / offset))
    x = offset * ((1.0 + u * spread) ** (1.0 / beta) - 1.0)
    return int(x) if x < m else m - 1


def _ref_to_id(rank: int, n: int, seed: int) -> int:
    """The id bijection, re-derived in plain Python from its description."""
    bits = max(1, (n - 1).bit_length())
    mask, shift = (1 << bits) - 1, (bits + 1) // 2
    k_in, k_out, m1, m2 = (int(synth_mod._stream_key(seed, 7 + 100 * i)) for i in range(4))
    m1, m2 = m1 | 1, m2 | 1
    x = rank
    while True:
        x ^= k_in & mask
        x ^= x >> shift
        x = (x * m1) & mask
        x ^= x >> shift
        x = (x * m2) & mask
        x ^= x >> shift
        x = (x + k_out) & mask
        if x < n:
            return x


def test_edges_and_labels_match_reference(tmp_path: Path) -> None:
    cfg = SynthConfig(nodes=1003, avg_degree=3, feature_dim=5, classes=3, seed=12345)
    g = make(tmp_path / "g", cfg)
    n, c_ = cfg.nodes, cfg.classes
    alpha = 1.0 / (cfg.power_law_exponent - 1.0)
    s = g.summary["degree_offset"]
    to_id = [_ref_to_id(r, n, cfg.seed) for r in range(n)]
    assert sorted(to_id) == list(range(n))
    k_src, k_coin, k_dst = (int(synth_mod._stream_key(cfg.seed, k)) for k in (1, 2, 3))
    unit = lambda h: (h >> 11) / 2.0**53  # noqa: E731
    for e in range(0, cfg.edges, 7):
        rs = _ref_rank(unit(_ref_hash(k_src, e)), n, alpha, s)
        c = rs % c_
        u = unit(_ref_hash(k_dst, e))
        if unit(_ref_hash(k_coin, e)) < cfg.homophily:
            rd = _ref_rank(u, (n - c + c_ - 1) // c_, alpha, (c + s) / c_) * c_ + c
        else:
            rd = _ref_rank(u, n, alpha, s)
        assert (g.src[e], g.dst[e]) == (to_id[rs], to_id[rd]), e
    expected = np.empty(n, np.int64)
    expected[to_id] = np.arange(n) % c_
    np.testing.assert_array_equal(g.labels, expected)
    assert g.summary["hub_id"] == to_id[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, synth_mod.MAX_NODES), st.integers(0, 2**64 - 1), st.data())
def test_scramble_roundtrip(n: int, seed: int, data: st.DataObject) -> None:
    p = synth_mod._Scramble.make(n, seed).params()
    for rank in data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=20)):
        node = synth_mod._to_id(np.int64(rank), p)
        assert 0 <= node < n
        assert synth_mod._to_rank(np.int64(node), p) == rank


@settings(max_examples=10, deadline=None)
@given(
    nodes=st.integers(1, 300),
    classes=st.integers(1, 6),
    avg_degree=st.floats(0, 6),
    chunk=st.integers(1, 500),
    dim=st.integers(1, 9),
)
def test_small_configs(
    tmp_path_factory: pytest.TempPathFactory,
    nodes: int,
    classes: int,
    avg_degree: float,
    chunk: int,
    dim: int,
) -> None:
    cfg = SynthConfig(
        nodes=nodes,
        classes=min(classes, nodes),
        avg_degree=avg_degree,
        chunk_edges=chunk,
        feature_dim=dim,
    )
    g = make(tmp_path_factory.mktemp("h") / "g", cfg)
    assert len(g.src) == cfg.edges
    if cfg.edges:
        assert 0 <= min(g.src.min(), g.dst.min()) and max(g.src.max(), g.dst.max()) < nodes
    assert g.features.shape == (nodes, dim)
    assert set(np.unique(g.labels)) == set(range(cfg.classes))
    allids = np.concatenate(list(g.splits.values()))
    assert len(np.unique(allids)) == len(allids) == nodes


def test_zero_edges(tmp_path: Path) -> None:
    g = make(tmp_path / "g", SynthConfig(nodes=10, avg_degree=0, classes=2))
    assert len(g.src) == 0 and g.summary["counts"]["edges"] == 0
    assert g.summary["edge_homophily"] is None
    assert pq.read_schema(tmp_path / "g" / "edges.parquet").names == ["src", "dst"]


def test_progress_messages(tmp_path: Path) -> None:
    lines: list[str] = []
    synth(tmp_path / "g", SynthConfig(nodes=200, avg_degree=2), progress=lines.append)
    assert lines and lines[-1].startswith("wrote ")


# ---------------------------------------------------------------------------------------------
# atomic output


def test_existing_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "g"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        synth(out, SynthConfig(nodes=100, avg_degree=1))
    assert sorted(os.listdir(out)) == ["keep"]
    assert sorted(os.listdir(tmp_path)) == ["g"]


def test_overwrite_replaces_a_generated_graph_and_keeps_what_else_it_holds(tmp_path: Path) -> None:
    out = tmp_path / "g"
    synth(out, SynthConfig(nodes=80, avg_degree=1))
    (out / "notes").write_text("x")  # the user's, not synth's
    synth(out, SynthConfig(nodes=100, avg_degree=1), overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == sorted(FILES)
    assert (out / "notes").read_text() == "x" and json.loads((out / "synth.json").read_text())["nodes"] == 100
    assert sorted(os.listdir(tmp_path)) == ["g"]


def test_overwrite_refuses_a_folder_synth_did_not_write(tmp_path: Path) -> None:
    from gnn_ooc.errors import OutputError

    out = tmp_path / "g"
    out.mkdir()
    (out / "stale").write_text("x")
    with pytest.raises(OutputError, match="not a gnn-ooc generated raw graph"):
        synth(out, SynthConfig(nodes=100, avg_degree=1), overwrite=True)
    assert os.listdir(out) == ["stale"]


@pytest.mark.parametrize("where", ["_write_nodes", "_write_all", "_edge_kernel"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_leaves_nothing_behind(
    where: str, overwrite: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # _write_all runs on the writer thread: its error must reach the caller as well
    out = tmp_path / "g"
    if overwrite:
        synth(out, SynthConfig(nodes=80, avg_degree=1))
    before = sorted(os.listdir(out)) if overwrite else []

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(synth_mod, where, boom)
    with pytest.raises(RuntimeError, match="boom"):
        synth(out, SynthConfig(nodes=500, avg_degree=3), overwrite=overwrite)
    assert sorted(os.listdir(tmp_path)) == (["g"] if overwrite else [])
    if overwrite:
        assert sorted(os.listdir(out)) == before  # the old graph is intact


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nodes": 0},
        {"nodes": -5},
        {"nodes": 10.5},
        {"nodes": True},
        {"nodes": synth_mod.MAX_NODES + 1},
        {"nodes": 5, "classes": 6},
        {"classes": 0},
        {"avg_degree": -1.0},
        {"avg_degree": math.nan},
        {"avg_degree": math.inf},
        {"avg_degree": "10"},
        {"feature_dim": 0},
        {"seed": -1},
        {"seed": 1 << 64},
        {"homophily": 1.01},
        {"homophily": -0.1},
        {"power_law_exponent": 1.0},
        {"power_law_exponent": 0.5},
        {"power_law_exponent": math.inf},
        {"max_degree": 0.0},
        {"max_degree": -3.0},
        {"max_degree": math.nan},
        {"noise": -0.5},
        {"split": (0.6, 0.2)},
        {"split": (0.6, 0.3, 0.2)},
        {"split": (0.5, -0.1, 0.2)},
        {"split": "abc"},
        {"chunk_edges": 0},
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)


def test_invalid_synth_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synth(tmp_path / "g", cast(Any, {"nodes": 10}))
    with pytest.raises(ValueError):
        synth(tmp_path / "..", SynthConfig(nodes=10))
    assert os.listdir(tmp_path) == []


def test_numpy_scalars_are_normalised() -> None:
    odd: dict[str, Any] = {
        "nodes": np.int64(50),
        "avg_degree": np.float32(2.5),
        "split": [0.5, 0.25, 0.25],
    }
    cfg = SynthConfig(**odd)
    assert type(cfg.nodes) is int and type(cfg.avg_degree) is float
    assert cfg.split == (0.5, 0.25, 0.25)
    hash(cfg)
