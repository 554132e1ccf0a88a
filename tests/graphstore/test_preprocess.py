"""preprocess end to end: round trips, input formats, options, idempotence."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnn_ooc.graphstore import Dataset, PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from tests.conftest import random_graph, reference_csc, write_raw


def spec(out: Path, edges: Path | list[Path], **kw: object) -> PreprocessSpec:
    paths = tuple(edges) if isinstance(edges, list) else (edges,)
    return PreprocessSpec(output=out, edges=paths, **kw)  # type: ignore[arg-type]


def assert_csc(ds: Dataset, src: np.ndarray, dst: np.ndarray, n: int, **flags: bool) -> None:
    ref_ptr, ref_idx = reference_csc(src, dst, n, **flags)
    np.testing.assert_array_equal(ds.indptr, ref_ptr)
    np.testing.assert_array_equal(ds.indices, ref_idx)


@pytest.mark.parametrize("budget", [1 << 20, 1 << 30])
def test_round_trip_with_features_labels_splits(tmp_path: Path, rng: np.random.Generator, budget: int) -> None:
    n, e = 3000, 40000
    src, dst = random_graph(rng, n, e)
    feats = rng.standard_normal((n, 12)).astype(np.float64)
    labels = rng.integers(-1, 5, n)
    labels[:300] = rng.integers(0, 5, 300)  # split nodes must be labelled
    splits = {"train": np.arange(0, 100), "valid": np.arange(100, 150), "test": np.arange(150, 300)}
    raw = write_raw(tmp_path / "raw", src, dst, features=feats, labels=labels, splits=splits, row_group_size=5000)
    out = tmp_path / "ds"
    result = preprocess(spec(out, raw / "edges.parquet", features=raw / "node_features.npy",
                             labels=raw / "node_labels.npy", split_dir=raw / "split", undirected=True,
                             dedup=True, memory_budget=budget))
    ds = Dataset.open(out)
    assert not result.skipped and ds.num_nodes == n and ds.num_edges == ds.indices.shape[0]
    assert_csc(ds, src, dst, n, undirected=True, dedup=True)
    np.testing.assert_array_equal(ds.features, feats.astype(np.float32))
    assert ds.features.offset % 4096 == 0 and ds.features.dtype == np.float32
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.num_classes == 5
    for name, ids in splits.items():
        np.testing.assert_array_equal(ds.split(name), ids)
    assert ds.verify()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_isolated_nodes_and_num_nodes_flag(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0, 3]), np.array([3, 0]))
    preprocess(spec(tmp_path / "ds", raw / "edges.parquet", num_nodes=10))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.num_nodes == 10 and ds.indptr.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    assert ds.degree_stats().isolated == 8


def test_csv_tsv_npy_and_folder_inputs_agree(tmp_path: Path, rng: np.random.Generator) -> None:
    n, e = 500, 4000
    src, dst = random_graph(rng, n, e)
    (tmp_path / "parts").mkdir()
    half = e // 2
    pq.write_table(pa.table({"a": src[:half], "b": dst[:half]}), tmp_path / "parts" / "p0.parquet")
    pq.write_table(pa.table({"a": src[half:], "b": dst[half:]}), tmp_path / "parts" / "p1.parquet")
    (tmp_path / "e.csv").write_text("a,b\n" + "".join(f"{s},{d}\n" for s, d in zip(src, dst)))
    with gzip.open(tmp_path / "e.tsv.gz", "wt") as f:
        f.write("".join(f"{s}\t{d}\n" for s, d in zip(src, dst)))
    np.save(tmp_path / "e.npy", np.stack([src, dst]))
    inputs = {"folder": (tmp_path / "parts", "a", "b"), "csv": (tmp_path / "e.csv", "a", "b"),
              "tsv": (tmp_path / "e.tsv.gz", "0", "1"), "npy": (tmp_path / "e.npy", "src", "dst")}
    for name, (path, s, d) in inputs.items():
        preprocess(spec(tmp_path / name, path, src_col=s, dst_col=d, num_nodes=n))
        assert_csc(Dataset.open(tmp_path / name), src, dst, n)


def test_remap_integer_and_string_ids(tmp_path: Path) -> None:
    pq.write_table(pa.table({"src": [10**12, 7, 7], "dst": [7, 10**12, 55]}), tmp_path / "i.parquet")
    (tmp_path / "split").mkdir()
    np.save(tmp_path / "split" / "train.npy", np.array([55, 10**12]))
    preprocess(spec(tmp_path / "ds", tmp_path / "i.parquet", remap=True, split_dir=tmp_path / "split"))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.num_nodes == 3 and ds.original_ids.tolist() == [7, 55, 10**12]
    assert ds.indptr.tolist() == [0, 1, 2, 3] and ds.indices.tolist() == [2, 0, 0]
    assert ds.split("train").tolist() == [1, 2]
    (tmp_path / "s.csv").write_text("src,dst\nbob,alice\ncarol,bob\n")
    preprocess(spec(tmp_path / "ds2", tmp_path / "s.csv", remap=True))
    ds2 = Dataset.open(tmp_path / "ds2")
    assert ds2.original_ids.to_pylist() == ["alice", "bob", "carol"]
    assert ds2.indices.tolist() == [1, 2] and ds2.indptr.tolist() == [0, 1, 2, 2]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_features(tmp_path: Path, rng: np.random.Generator, dtype: str) -> None:
    feats = rng.standard_normal((50, 8)).astype(np.float32)
    raw = write_raw(tmp_path / "raw", np.array([0, 1]), np.array([1, 2]), features=feats)
    preprocess(spec(tmp_path / "ds", raw / "edges.parquet", features=raw / "node_features.npy", feature_dtype=dtype))
    ds = Dataset.open(tmp_path / "ds")
    t = ds.features_torch()
    assert str(t.dtype) == f"torch.{dtype}" and tuple(t.shape) == (50, 8)
    np.testing.assert_allclose(t.float().numpy(), feats, rtol=1e-2, atol=1e-2)
    from gnn_ooc.graphstore.features.stores import MemoryStore

    loaded = MemoryStore.of(ds)  # --mode memory: read into RAM, the stored dtype kept
    assert loaded.dtype == t.dtype and loaded.gather([3, 0]).float().equal(t[[3, 0]].float())


def test_parquet_and_csv_features(tmp_path: Path, rng: np.random.Generator) -> None:
    feats = rng.standard_normal((20, 3)).astype(np.float32)
    pq.write_table(pa.table({"feat": pa.array(list(feats), type=pa.list_(pa.float32()))}), tmp_path / "f.parquet")
    pq.write_table(pa.table({f"x{i}": feats[:, i] for i in range(3)}), tmp_path / "g.parquet")
    with gzip.open(tmp_path / "f.csv.gz", "wt") as f:
        f.write("".join(",".join(repr(float(v)) for v in row) + "\n" for row in feats))
    raw = write_raw(tmp_path / "raw", np.array([0, 1]), np.array([1, 2]))
    for name in ("f.parquet", "g.parquet", "f.csv.gz"):
        out = tmp_path / f"ds-{name}"
        preprocess(spec(out, raw / "edges.parquet", features=tmp_path / name, num_nodes=20))
        np.testing.assert_allclose(Dataset.open(out).features, feats, rtol=1e-6)


def test_random_split_is_seeded_and_uses_labelled_nodes(tmp_path: Path, rng: np.random.Generator) -> None:
    labels = np.where(np.arange(1000) % 4 == 0, -1, 1)
    raw = write_raw(tmp_path / "raw", np.array([0]), np.array([1]), labels=labels)
    outs = []
    for i, seed in enumerate([3, 3, 4]):
        out = tmp_path / f"ds{i}"
        preprocess(spec(out, raw / "edges.parquet", labels=raw / "node_labels.npy", split=(0.8, 0.1, 0.1), split_seed=seed))
        outs.append(Dataset.open(out).splits)
    sizes = {k: len(v) for k, v in outs[0].items()}
    assert sizes == {"train": 600, "valid": 75, "test": 75}
    assert all(np.array_equal(outs[0][k], outs[1][k]) for k in sizes)
    assert not np.array_equal(outs[0]["train"], outs[2]["train"])
    every = np.concatenate(list(outs[0].values()))
    assert len(np.unique(every)) == len(every) and (labels[every] >= 0).all()


def test_nan_policy_zero(tmp_path: Path) -> None:
    feats = np.ones((4, 2), np.float32)
    feats[2, 1] = np.nan
    feats[3, 0] = np.inf
    raw = write_raw(tmp_path / "raw", np.array([0]), np.array([1]), features=feats)
    r = preprocess(spec(tmp_path / "ds", raw / "edges.parquet", features=raw / "node_features.npy", nan_policy="zero"))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.features[2].tolist() == [1.0, 0.0] and ds.features[3].tolist() == [0.0, 1.0]
    assert r.manifest.stats["nonfinite_features_zeroed"] == 2


def test_ogb_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    from gnn_ooc.tools.cli import main

    root = tmp_path / "ogbn-toy"
    (root / "raw").mkdir(parents=True)
    (root / "split" / "time").mkdir(parents=True)
    n = 30
    src, dst = rng.integers(0, n, 100), rng.integers(0, n, 100)
    feats = rng.standard_normal((n, 4)).astype(np.float32)
    labels = rng.integers(0, 3, n).astype(float)
    labels[5] = np.nan

    def gz(path: Path, lines: list[str]) -> None:
        with gzip.open(path, "wt") as f:
            f.write("".join(line + "\n" for line in lines))

    gz(root / "raw" / "edge.csv.gz", [f"{s},{d}" for s, d in zip(src, dst)])
    gz(root / "raw" / "node-feat.csv.gz", [",".join(repr(float(v)) for v in r) for r in feats])
    gz(root / "raw" / "node-label.csv.gz", ["nan" if np.isnan(v) else str(int(v)) for v in labels])
    gz(root / "raw" / "num-node-list.csv.gz", [str(n)])
    # node 5 is unlabelled (NaN), so no split holds it (as in OGB's own splits)
    train = [i for i in range(10) if i != 5]
    for name, ids in {"train": train, "valid": range(10, 20), "test": range(20, 30)}.items():
        gz(root / "split" / "time" / f"{name}.csv.gz", [str(i) for i in ids])
    assert main(["preprocess", "--ogb", str(root), "-o", str(tmp_path / "ds")]) == 0
    ds = Dataset.open(tmp_path / "ds")
    assert ds.num_nodes == n and ds.num_edges == 100
    assert_csc(ds, src, dst, n)
    assert ds.labels[5] == -1 and ds.labels[0] == labels[0]
    assert ds.split("valid").tolist() == list(range(10, 20))
    np.testing.assert_allclose(ds.features, feats, rtol=1e-6)


def test_rerun_is_a_no_op_until_inputs_or_options_change(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", np.array([0, 1]), np.array([1, 2]))
    s = spec(tmp_path / "ds", raw / "edges.parquet")
    first = preprocess(s)
    manifest_mtime = (tmp_path / "ds" / "manifest.json").stat().st_mtime_ns
    assert preprocess(s).skipped
    assert (tmp_path / "ds" / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert not preprocess(PreprocessSpec(**{**s.__dict__, "force": True})).skipped
    assert not preprocess(PreprocessSpec(**{**s.__dict__, "undirected": True})).skipped
    write_raw(tmp_path / "raw", np.array([0, 1, 2]), np.array([1, 2, 0]))
    again = preprocess(s)
    assert not again.skipped and again.manifest.num_edges == 3 and first.manifest.num_edges == 2
    assert {p.name for p in tmp_path.iterdir()} == {"raw", "ds"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(1, 30).flatmap(lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=80),
        st.booleans(), st.booleans(), st.booleans(),
    ))
)
def test_property_preprocess_round_trip(tmp_path: Path, case: tuple) -> None:
    n, edges, undirected, loops, dedup = case
    src, dst = np.array([e[0] for e in edges]), np.array([e[1] for e in edges])
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "ds"
    raw = write_raw(out.with_suffix(".raw"), src, dst)
    preprocess(spec(out, raw / "edges.parquet", num_nodes=n, undirected=undirected, drop_self_loops=loops,
                    dedup=dedup, memory_budget=1 << 20))
    assert_csc(Dataset.open(out), src, dst, n, undirected=undirected, drop_self_loops=loops, dedup=dedup)


@pytest.mark.parametrize("first", [3000, 60_000])  # widened while buffered, and after spilling
def test_ids_growing_through_the_file_widen_the_ranges(tmp_path: Path, rng: np.random.Generator, first: int) -> None:
    # Without a node count the destination ranges are sized from the first chunk; ids 10^4 x
    # larger later must not make every chunk's bucket counters grow with them (nor break the CSC).
    e, n = 120_000, 80_000
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    src[:first], dst[:first] = rng.integers(0, 8, first), rng.integers(0, 8, first)
    dst[-1] = n - 1
    np.save(tmp_path / "e.npy", np.stack([src, dst]))
    r = preprocess(spec(tmp_path / "ds", tmp_path / "e.npy", memory_budget=1 << 20, undirected=True))
    assert r.manifest.num_nodes == n and r.manifest.stats["buckets"] <= 4 * 4096
    assert (first < 60_000) or r.manifest.stats["scratch_bytes"] > 0
    assert_csc(Dataset.open(tmp_path / "ds"), src, dst, n, undirected=True)


def test_csc_builder_memory_stays_bounded_for_huge_late_ids(tmp_path: Path) -> None:
    from gnn_ooc.graphstore.ingest.csc import CscBuilder

    b = CscBuilder(tmp_path, num_nodes=None, memory_budget=1 << 24)
    b.add(np.array([0, 1, 2]), np.array([1, 2, 0]))
    b.add(np.array([5]), np.array([10**15]))  # counters per bucket would need petabytes before
    assert b._shift is not None and 8 * b._parts * ((b.max_id >> b._shift) + 1) <= (1 << 24) // 8


def test_one_column_features_and_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_bytes(b"\xef\xbb\xbfsrc,dst\r\n0,1\r\n1,2\r\n")
    np.save(tmp_path / "f.npy", np.arange(3, dtype=np.float32))  # [N]: one feature per node
    r = preprocess(spec(tmp_path / "ds", tmp_path / "e.csv", features=tmp_path / "f.npy"))
    assert r.manifest.feature_dim == 1 and Dataset.open(tmp_path / "ds").features[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_parquet_statistics_of_ids_after_a_nested_column(tmp_path: Path) -> None:
    # Statistics are per leaf column; a struct before the ids once made the 500 look like a 4.
    t = pa.table({"meta": pa.array([{"a": 1, "b": 2}, {"a": 3, "b": 4}]), "src": [0, 1], "dst": [1, 500]})
    pq.write_table(t, tmp_path / "e.parquet")
    assert preprocess(spec(tmp_path / "ds", tmp_path / "e.parquet")).manifest.num_nodes == 501
