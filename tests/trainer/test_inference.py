"""``gnn-ooc embed``: layer-wise, chunked, out-of-core inference equals whole-graph inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.graphstore.ingest.preprocess import preprocess
from gnn_ooc.tools.cli import main
from gnn_ooc.tools.synth import SynthConfig, synth
from gnn_ooc.trainer import GCN, TorchBlock
from gnn_ooc.trainer.checkpoint import choose_checkpoint, load_checkpoint
from gnn_ooc.trainer.config import TrainConfig
from gnn_ooc.trainer.inference import chunk_block, chunk_bounds, embed, source_degrees
from gnn_ooc.trainer.run import build_model, train
from tests.conftest import write_raw


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embed")
    raw = root / "raw"
    synth(raw, SynthConfig(nodes=800, avg_degree=6, feature_dim=12, classes=3, seed=5))
    preprocess(PreprocessSpec(output=root / "ds", edges=(raw / "edges.parquet",), undirected=True,
                              features=raw / "node_features.npy", labels=raw / "node_labels.npy",
                              split_dir=raw / "split"))
    return root / "ds"


@pytest.fixture(scope="module")
def remapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sparse original ids ``1000 + 7k``: a ring (so every id occurs) plus random edges."""
    root = tmp_path_factory.mktemp("remapped")
    rng = np.random.default_rng(2)
    n = 300
    ids = 1000 + 7 * np.arange(n)
    src = np.concatenate([np.arange(n), rng.integers(0, n, 900)])
    dst = np.concatenate([(np.arange(n) + 1) % n, rng.integers(0, n, 900)])
    order = rng.permutation(n)
    raw = write_raw(root / "raw", ids[src], ids[dst], features=rng.standard_normal((n, 6)).astype(np.float32),
                    labels=rng.integers(0, 3, n),
                    splits={"train": ids[order[:200]], "valid": ids[order[200:250]], "test": ids[order[250:]]})
    preprocess(PreprocessSpec(output=root / "ds", edges=(raw / "edges.parquet",), undirected=True, remap=True,
                              features=raw / "node_features.npy", labels=raw / "node_labels.npy",
                              split_dir=raw / "split"))
    return root / "ds"


def trained(ds: Path, out: Path, model: str) -> Path:
    cfg = TrainConfig.resolve({"dataset": str(ds), "out": str(out), "fanouts": "5,3", "batch_size": 64, "epochs": 1,
                               "hidden": 16, "lr": 0.01, "progress": False, "memory_budget": "256M", "threads": 1,
                               "mode": "memory", "model": model, "heads": 2, "norm": "batch"})
    train(cfg, say=quiet)
    return out


@pytest.fixture(scope="module")
def runs(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {m: trained(dataset, root / m, m) for m in ("sage", "gcn", "gat")}


def whole_graph(run: Path) -> list[torch.Tensor]:
    """Every layer's output on one block holding the whole graph, all features in memory."""
    cfg = TrainConfig.load(next(run.glob("config.*")))
    ds = Dataset.open(cfg.dataset)
    model, _, _ = build_model(cfg, ds, torch.device("cpu"))
    model.load_state_dict(load_checkpoint(choose_checkpoint(run, "best"))["model"])  # what embed uses
    model.eval()
    n = ds.num_nodes
    indptr = np.asarray(ds.indptr, np.int64)
    dst = np.repeat(np.arange(n), np.diff(indptr))
    block = TorchBlock(torch.from_numpy(np.stack([np.asarray(ds.indices, np.int64), dst])), n, n)
    h = torch.from_numpy(np.array(ds.features, np.float32))
    outs = []
    with torch.no_grad():
        for i in range(model.num_layers):
            h = model.layer(i, block, h)
            outs.append(h)
    return outs


@pytest.mark.parametrize("model", ["sage", "gcn", "gat"])
def test_embed_equals_whole_graph_inference(runs: dict[str, Path], tmp_path: Path, model: str) -> None:
    out = tmp_path / "emb"
    summary = embed(runs[model], out, chunk_nodes=37, device="cpu", say=quiet)
    hidden, logits = whole_graph(runs[model])
    n = hidden.shape[0]
    got_logits = np.load(out / "logits.npy")
    assert got_logits.shape == (n, logits.shape[1]) and summary["nodes"] == n
    np.testing.assert_allclose(got_logits, logits.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), hidden.numpy(), atol=1e-5, rtol=1e-5)
    preds = np.load(out / "predictions.npy")
    assert preds.dtype == np.int64 and np.array_equal(preds, got_logits.argmax(1))
    assert summary["layers"][0]["chunks"] == -(-n // 37) and all(r["max_chunk_nodes"] <= 37 for r in summary["layers"])
    assert sorted(p.name for p in out.iterdir()) == ["embed.json", "embeddings.npy", "logits.npy", "predictions.npy"]
    saved = json.loads((out / "embed.json").read_text())
    assert saved["checkpoint"] == str(choose_checkpoint(runs[model], "best")) and saved["rows_per_s"] > 0
    assert not list(tmp_path.glob(".emb.*"))  # the staging folder is gone


def test_gcn_chunks_need_whole_graph_source_degrees(dataset: Path) -> None:
    """With degrees counted on a chunk's block, GCN's "both" differs from the whole graph."""
    ds = Dataset.open(dataset)
    n = ds.num_nodes
    torch.manual_seed(0)
    model = GCN(in_dim=12, hidden=8, out_dim=3, num_layers=1).eval()
    x = torch.from_numpy(np.array(ds.features))
    indptr = np.asarray(ds.indptr, np.int64)
    full = TorchBlock(torch.from_numpy(np.stack([np.asarray(ds.indices, np.int64),
                                                 np.repeat(np.arange(n), np.diff(indptr))])), n, n)
    degree = torch.from_numpy(source_degrees(ds.indptr, ds.indices))
    node, ei = chunk_block(ds.indptr, ds.indices, 100, 150)
    with torch.no_grad():
        want = model.layer(0, full, x)[100:150]
        local = model.layer(0, TorchBlock(ei, len(node), 50), x[node])
        fixed = model.layer(0, TorchBlock(ei, len(node), 50, degree[node]), x[node])
    assert not torch.allclose(local, want, atol=1e-3)
    torch.testing.assert_close(fixed, want, atol=1e-5, rtol=1e-5)


def test_source_degrees_match_a_whole_graph_count(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    src = np.asarray(ds.indices, np.int64)
    dst = np.repeat(np.arange(ds.num_nodes), np.diff(np.asarray(ds.indptr)))
    want = np.bincount(src[src != dst], minlength=ds.num_nodes) + 1
    assert np.array_equal(source_degrees(ds.indptr, ds.indices, budget=1), want)  # many small steps


def test_chunks_respect_the_budget_and_split_hubs() -> None:
    degree = np.array([1, 1, 50, 1, 1, 1, 0, 2, 40, 3])
    indptr = np.concatenate([[0], np.cumsum(degree)])
    bounds = chunk_bounds(indptr, budget=100, row_bytes=4, edge_bytes=8)
    assert bounds[0] == 0 and bounds[-1] == len(degree) and np.all(np.diff(bounds) >= 1)
    for a, b in zip(bounds[:-1], bounds[1:]):
        cost = (b - a) * 4 + (indptr[b] - indptr[a]) * 8
        assert cost <= 100 or b - a == 1  # only a lone hub may pass the budget
    assert [2, 3] in [[a, b] for a, b in zip(bounds[:-1], bounds[1:])]  # the hub stands alone
    assert np.all(np.diff(chunk_bounds(indptr, 10**9, 4, 8, max_nodes=3)) <= 3)


def test_chunk_block_holds_every_in_edge() -> None:
    rng = np.random.default_rng(0)
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 5, 40))])
    indices = rng.integers(0, 40, indptr[-1])
    node, ei = chunk_block(indptr, indices, 10, 20)
    assert node[:10].tolist() == list(range(10, 20)) and len(set(node.tolist())) == len(node)
    assert np.all(np.diff(node[10:]) > 0)  # other sources ascending: gathered in file order
    got = sorted(zip(node[ei[0].numpy()].tolist(), (ei[1].numpy() + 10).tolist()))
    want = sorted((int(indices[e]), v) for v in range(10, 20) for e in range(indptr[v], indptr[v + 1]))
    assert got == want


def test_memory_budget_picks_the_chunks(runs: dict[str, Path], tmp_path: Path) -> None:
    small = embed(runs["sage"], tmp_path / "small", memory_budget=1 << 20, device="cpu", say=quiet)
    big = embed(runs["sage"], tmp_path / "big", memory_budget=1 << 30, device="cpu", say=quiet)
    assert big["layers"][0]["chunks"] == 1 < small["layers"][0]["chunks"]
    assert np.array_equal(np.load(tmp_path / "small" / "predictions.npy"), np.load(tmp_path / "big" / "predictions.npy"))


def test_remapped_ids_get_a_parquet_with_original_ids(remapped: Path, tmp_path: Path) -> None:
    run = trained(remapped, tmp_path / "run", "sage")
    out = tmp_path / "emb"
    embed(run, out, chunk_nodes=50, device="cpu", say=quiet)
    table = pq.read_table(out / "predictions.parquet")
    assert table.column_names == ["id", "prediction", "embedding"]
    assert table.column("id").to_pylist() == (1000 + 7 * np.arange(300)).tolist()
    assert table.column("prediction").to_pylist() == np.load(out / "predictions.npy").tolist()
    emb = np.array(table.column("embedding").to_pylist(), np.float32)
    np.testing.assert_array_equal(emb, np.load(out / "embeddings.npy"))


def test_cli_round_trip_and_layer_outputs(runs: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["embed", str(runs["gat"]), "-o", str(out), "--chunk-nodes", "100", "--device", "cpu", "--layer-outputs"]
    assert main([*args, "--json"]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert summary["chunk_nodes"] == 100 and summary["outputs"]["logits.npy"]["shape"][0] == summary["nodes"]
    hidden, logits = whole_graph(runs["gat"])
    np.testing.assert_allclose(np.load(out / "layers" / "layer-0.npy"), hidden.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.load(out / "logits.npy"), logits.numpy(), atol=1e-5, rtol=1e-5)
    assert main(args[:4]) == 0  # again, replacing the folder, without the layers
    assert "rows/s" in capsys.readouterr().out and not (out / "layers").exists()
    assert main(["embed", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")]) == 1
    assert "not a gnn-ooc run folder" in capsys.readouterr().err
