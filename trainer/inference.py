"""Layer-wise inference over every node, out of core: ``gnn-ooc embed RUN -o OUT``.

Layer ``i`` runs over all nodes before layer ``i + 1`` starts. Destinations go in contiguous
chunks; a chunk's block holds all in-neighbours of its nodes (the chunk first, then its other
sources in ascending id order), its input rows are gathered from the previous layer's ``.npy``
(layer 0: the dataset's features) through a memory map, and its output rows are appended to
the layer's ``.npy`` on disk. So no layer is ever whole in memory: a chunk is cut where its
block (rows plus edges) would pass half the memory budget, which also bounds hub nodes.

Outputs (published atomically into ``OUT``): ``embeddings.npy`` (the last hidden layer, the
input to the last layer), ``logits.npy``, ``predictions.npy`` (argmax, int64), with remapped ids
``predictions.parquet`` (original id, prediction, embedding) and ``embed.json``.

``GCNConv(degree_norm="both")`` divides by the source's out-degree; on a chunk that count would
cover only the chunk's destinations, so blocks here carry whole-graph out-degrees
(``TorchBlock.src_out_degree``) and every layer equals the same layer on the whole graph.

Example:
    >>> summary = embed("runs/sage", "runs/sage/embed", chunk_nodes=65536)   # doctest: +SKIP
    >>> summary["nodes"] == summary["outputs"]["predictions.npy"]["shape"][0]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from gnn_ooc.graphstore.features.stores import MmapStore
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.format.integrity import check_dataset
from gnn_ooc.graphstore.format.npyfile import NpyWriter
from gnn_ooc.graphstore.io.atomic import Staging
from gnn_ooc.graphstore.io.owned import EMBEDDING, check_output
from gnn_ooc.progress import over
from gnn_ooc.trainer.base import BlockModel, TorchBlock, TrainerError
from gnn_ooc.trainer.checkpoint import CheckpointError, choose_checkpoint, load_checkpoint
from gnn_ooc.trainer.config import ConfigError, TrainConfig, resolve_device, saved_config_path
from gnn_ooc.trainer.layers import GCNConv
from gnn_ooc.trainer.runfolder import RunFolder

log = logging.getLogger(__name__)  # library messages: the CLI shows them, an application decides
__all__ = ["chunk_block", "chunk_bounds", "embed", "load_run_model", "source_degrees"]

Say = Callable[[str], None]
_EDGE_BYTES = 64  # int64 ids per edge: the CSC slice, local ids, edge_index, self-loop copies
_FLOAT = 4


def embed(run: str | os.PathLike[str], out: str | os.PathLike[str], *, chunk_nodes: int | None = None,
          memory_budget: int | None = None, device: str = "auto", layer_outputs: bool = False,
          checkpoint: str | os.PathLike[str] | None = None, say: Say | None = None, bars: bool = False,
          model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Embeddings, logits and predictions of every node of ``run``'s dataset, written to ``out``.

    ``chunk_nodes`` caps destinations per chunk (default: what ``memory_budget`` allows; the
    budget defaults to the run's). ``checkpoint`` is ``best`` (the default: the best validation
    accuracy; the newest when the run never evaluated), ``last`` or a path. With
    ``layer_outputs`` every hidden layer is kept as ``out/layers/layer-I.npy``. Returns what
    ``out/embed.json`` holds.

    Example:
        >>> s = embed("runs/gcn", "emb", chunk_nodes=4096, device="cpu")   # doctest: +SKIP
        >>> sorted(s["outputs"])                                            # doctest: +SKIP
        ['embeddings.npy', 'logits.npy', 'predictions.npy']
    """
    t0 = time.perf_counter()
    say = say or log.info
    dev = resolve_device(device)
    cfg, ds, net, ckpt, state = load_run_model(Path(run), checkpoint, dev, model)
    check_output(Path(out), EMBEDDING, protect=[Path(run), ds.path])  # before any work
    check_dataset(ds, features=True)  # every byte inference reads, checked before the first chunk
    budget = int(memory_budget if memory_budget is not None else cfg.memory_budget)
    if chunk_nodes is not None and chunk_nodes < 1:
        raise ConfigError(f"chunk_nodes must be >= 1, got {chunk_nodes}")
    degree = source_degrees(ds.indptr, ds.indices, budget // 4) if _needs_source_degrees(net) else None
    say(f"embedding {ds.num_nodes:,} nodes of {ds.path} with {ckpt} ({net.num_layers} layers) on {dev}")
    # replaces only an embedding folder (embed.json); never the run, the dataset or a folder above them
    with Staging(Path(out), what="gnn-ooc embed", kind=EMBEDDING, protect=[Path(run), ds.path]) as stage:
        layers = _all_layers(net, ds, stage.path, degree, budget, chunk_nodes, layer_outputs, say, bars)
        outputs = _finish(stage.path, net.num_layers, layer_outputs)
        summary = _summary(run, ckpt, state, ds, budget, chunk_nodes, dev, layers, outputs, t0)
        (stage.path / "embed.json").write_text(json.dumps(summary, indent=2) + "\n")
        stage.publish()
    say(f"wrote {out}: {summary['nodes']:,} nodes in {summary['seconds']:.2f} s ({summary['rows_per_s']:,.0f} rows/s)")
    return summary


# --- the run's model ------------------------------------------------------------------------------
def load_run_model(run: Path, checkpoint: str | os.PathLike[str] | None, device: torch.device,
                   model: torch.nn.Module | None = None) -> tuple[TrainConfig, Dataset, BlockModel, Path, dict[str, Any]]:
    """The run's config, dataset and model (weights of ``checkpoint``: best, last or a path), in eval
    mode; a run trained with a model of its own needs that ``model`` (a ``BlockModel``) again.

    Example:
        >>> cfg, ds, model, path, state = load_run_model(Path("runs/sage"), None, torch.device("cpu"))  # doctest: +SKIP
    """
    from gnn_ooc.trainer.run import build_model

    cfg = TrainConfig.load(saved_config_path(run))
    ckpt = choose_checkpoint(run, checkpoint)
    state = load_checkpoint(ckpt)
    ds = Dataset.open(cfg.dataset)
    RunFolder.check_dataset(run, ds.path, ds.identity())
    own = (RunFolder.recorded(run).get("parts") or {}).get("model")
    if (own is None) != (model is None):
        raise ConfigError(f"{run}: was trained with {'model ' + own if own else 'the built-in ' + cfg.model}; "
                          + ("pass that model to gnn_ooc.trainer.inference.embed(..., model=...)" if own
                             else "leave model out"))
    if model is not None and f"{type(model).__module__}.{type(model).__qualname__}" != own:
        raise ConfigError(f"{run}: was trained with model {own}, not {type(model).__qualname__}")
    model, _, _ = build_model(cfg, ds, device, model)
    if not isinstance(model, BlockModel):
        raise TrainerError(f"{type(model).__name__} is not a BlockModel; layer-wise inference needs layer(i, ...)")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{ckpt}: does not fit the run's model ({str(e).splitlines()[0][:200]})") from None
    return cfg, ds, model.eval(), ckpt, state


def _needs_source_degrees(model: torch.nn.Module) -> bool:
    return any(isinstance(m, GCNConv) and m.degree_norm == "both" for m in model.modules())


# --- chunks and blocks ----------------------------------------------------------------------------
def chunk_bounds(indptr: np.ndarray, budget: int, row_bytes: int, edge_bytes: int,
                 max_nodes: int | None = None) -> np.ndarray:
    """Boundaries ``b`` of contiguous destination chunks ``[b[k], b[k+1])``: each chunk's
    ``nodes * row_bytes + in_edges * edge_bytes`` fits ``budget`` (a single node may pass it), and
    holds at most ``max_nodes`` nodes.

    Example:
        >>> chunk_bounds(np.array([0, 1, 2, 12, 13]), budget=20, row_bytes=1, edge_bytes=3).tolist()  # node 2: a hub
        [0, 2, 3, 4]
    """
    n = len(indptr) - 1
    cap = max(1, budget // max(1, row_bytes))
    cap = min(cap, max_nodes) if max_nodes is not None else cap
    bounds = [0]
    while bounds[-1] < n:
        a = bounds[-1]
        # a window of at most `cap` nodes: the cost of each prefix, one searchsorted per chunk
        window = np.asarray(indptr[a : min(n, a + cap) + 1], dtype=np.int64)
        cost = np.arange(len(window), dtype=np.int64) * row_bytes + (window - window[0]) * edge_bytes
        take = int(np.searchsorted(cost, budget, side="right")) - 1
        bounds.append(a + max(1, take))
    return np.asarray(bounds, dtype=np.int64)


def chunk_block(indptr: np.ndarray, indices: np.ndarray, a: int, b: int) -> tuple[np.ndarray, torch.Tensor]:
    """All in-edges of nodes ``a .. b - 1``: ``(node, edge_index)``, ``node`` the chunk then its other
    sources ascending (global ids), ``edge_index`` local ``[2, E]`` (source, destination).

    Example:
        >>> node, ei = chunk_block(np.array([0, 2, 3, 4]), np.array([2, 1, 0, 0]), 1, 3)
        >>> node.tolist(), ei.tolist()
        ([1, 2, 0], [[2, 2], [0, 1]])
    """
    lo, hi = int(indptr[a]), int(indptr[b])
    src = np.asarray(indices[lo:hi], dtype=np.int64)
    dst = _destinations(indptr, a, b) - a
    inside = (src >= a) & (src < b)
    outside = np.unique(src[~inside])  # sorted: gathered in file order
    local = np.where(inside, src - a, (b - a) + np.searchsorted(outside, src))
    node = np.concatenate([np.arange(a, b, dtype=np.int64), outside])
    return node, torch.from_numpy(np.stack([local, dst]))


def _destinations(indptr: np.ndarray, a: int, b: int) -> np.ndarray:
    """The destination (global id) of each CSC edge into nodes ``a .. b - 1``."""
    ptr = np.asarray(indptr[a : b + 1], dtype=np.int64)
    return np.repeat(np.arange(a, b, dtype=np.int64), ptr[1:] - ptr[:-1])


def source_degrees(indptr: np.ndarray, indices: np.ndarray, budget: int = 256 << 20) -> np.ndarray:
    """Each node's out-degree as ``GCNConv`` counts it on the whole graph: its edges to other
    nodes, plus one self loop (int32, streamed over the edges in ``budget``-sized steps).

    Example:
        >>> source_degrees(np.array([0, 2, 3, 3]), np.array([1, 0, 0])).tolist()   # 0<-1, 0<-0, 1<-0
        [2, 2, 1]
    """
    n = len(indptr) - 1
    degree = np.ones(n, dtype=np.int32)
    bounds = chunk_bounds(indptr, max(1 << 20, budget), row_bytes=8, edge_bytes=40)
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        lo, hi = int(indptr[a]), int(indptr[b])
        src = np.asarray(indices[lo:hi], dtype=np.int64)
        dst = _destinations(indptr, a, b)
        ids, counts = np.unique(src[src != dst], return_counts=True)  # GCN drops stored self loops
        degree[ids] += counts.astype(np.int32)
    return degree


# --- layers ---------------------------------------------------------------------------------------
def _all_layers(model: BlockModel, ds: Dataset, stage: Path, degree: np.ndarray | None, budget: int,
                chunk_nodes: int | None, keep_layers: bool, say: Say, bars: bool = False) -> list[dict[str, Any]]:
    """Run every layer over all nodes; hidden layers go to ``stage/layers``, the last to logits."""
    (stage / "layers").mkdir()
    store: MmapStore = MmapStore.of(ds)
    device = next(model.parameters()).device
    reports = []
    for i in range(model.num_layers):
        bounds = _layer_bounds(model, ds, i, budget, chunk_nodes, degree)
        last = i == model.num_layers - 1
        t = time.perf_counter()
        rows = over(_layer_rows(model, i, store, ds, bounds, degree, device), f"layer {i}", enabled=bars,
                    total=len(bounds) - 1)
        if last:
            _write_last(rows, model, ds, stage)
        else:
            path = stage / "layers" / f"layer-{i}.npy"
            _write_layer(rows, path, ds.num_nodes, model.layer_out_dim(i))
            store = MmapStore(np.load(path, mmap_mode="r"), torch.float32)
            if i > 0 and not keep_layers:  # layer i - 1 fed layer i only: free its disk now
                (stage / "layers" / f"layer-{i - 1}.npy").unlink()
        secs = time.perf_counter() - t
        edges = np.diff(np.asarray(ds.indptr, dtype=np.int64)[bounds])
        reports.append({"layer": i, "width": model.layer_out_dim(i), "chunks": len(bounds) - 1,
                        "max_chunk_nodes": int(np.diff(bounds).max(initial=0)), "max_chunk_edges": int(edges.max(initial=0)),
                        "seconds": round(secs, 4), "rows_per_s": round(ds.num_nodes / max(secs, 1e-9), 1)})
        say(f"layer {i}: {ds.num_nodes:,} rows in {len(bounds) - 1} chunks, {secs:.2f} s")
    return reports


def _layer_bounds(model: BlockModel, ds: Dataset, i: int, budget: int, chunk_nodes: int | None,
                  degree: np.ndarray | None) -> np.ndarray:
    # Half the budget for the block; the rest is torch's temporaries, write buffers and slack.
    w_in = model.in_dim if i == 0 else model.layer_out_dim(i - 1)
    w_out = model.layer_out_dim(i)
    row = _FLOAT * (w_in + 3 * w_out)  # input row, projected row, output and normalisation
    edge = _EDGE_BYTES + _FLOAT * (w_in + 3 * w_out)  # a new source row per edge at worst, plus messages
    share = max(1 << 20, budget // 2 - (0 if degree is None else degree.nbytes))
    return chunk_bounds(ds.indptr, share, row, edge, chunk_nodes)


def _layer_rows(model: BlockModel, i: int, store: MmapStore, ds: Dataset, bounds: np.ndarray,
                degree: np.ndarray | None, device: torch.device) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(a, b, rows)``: layer ``i``'s output for nodes ``a .. b - 1``, chunk by chunk."""
    with torch.no_grad():
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            node, edge_index = chunk_block(ds.indptr, ds.indices, a, b)
            h = store.gather(torch.from_numpy(node)).to(device=device, dtype=torch.float32)
            deg = None if degree is None else torch.from_numpy(degree[node]).to(device)
            block = TorchBlock(edge_index.to(device), len(node), b - a, deg)
            yield a, b, model.layer(i, block, h).float().cpu().numpy()


def _write_layer(rows: Iterator[tuple[int, int, np.ndarray]], path: Path, n: int, width: int) -> None:
    with NpyWriter(path, np.float32, (n, width)) as w:
        for _, _, out in rows:
            w.write(out)


def _write_last(rows: Iterator[tuple[int, int, np.ndarray]], model: BlockModel, ds: Dataset, stage: Path) -> None:
    """Logits and predictions, and with remapped ids the Parquet keyed by original id."""
    n, classes = ds.num_nodes, model.out_dim
    table = _PredictionTable(stage, ds, model) if ds.original_ids is not None else None
    with NpyWriter(stage / "logits.npy", np.float32, (n, classes)) as logits, \
            NpyWriter(stage / "predictions.npy", np.int64, (n,)) as preds:
        for a, b, out in rows:
            pred = out.argmax(axis=1).astype(np.int64) if classes else np.zeros(b - a, np.int64)
            logits.write(out)
            preds.write(pred)
            if table is not None:
                table.write(a, b, pred)
    if table is not None:
        table.close()


class _PredictionTable:
    """``predictions.parquet``: original id, prediction and the embedding (a fixed-size list),
    one row group per chunk, so nothing whole is held."""

    def __init__(self, stage: Path, ds: Dataset, model: BlockModel) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.ids = ds.original_ids
        hidden = stage / "layers" / f"layer-{model.num_layers - 2}.npy"
        self.embeddings = np.load(hidden, mmap_mode="r") if model.num_layers > 1 else None
        id_type = pa.string() if isinstance(self.ids, pa.Array) else pa.int64()
        fields = [pa.field("id", id_type), pa.field("prediction", pa.int64())]
        if self.embeddings is not None:
            fields.append(pa.field("embedding", pa.list_(pa.float32(), self.embeddings.shape[1])))
        self.writer = pq.ParquetWriter(stage / "predictions.parquet", pa.schema(fields))

    def write(self, a: int, b: int, pred: np.ndarray) -> None:
        import pyarrow as pa

        ids = self.ids.slice(a, b - a) if isinstance(self.ids, pa.Array) else pa.array(np.asarray(self.ids[a:b], np.int64))
        columns = [ids, pa.array(pred)]
        if self.embeddings is not None:
            flat = pa.array(np.ascontiguousarray(self.embeddings[a:b]).reshape(-1))
            columns.append(pa.FixedSizeListArray.from_arrays(flat, self.embeddings.shape[1]))
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.writer.schema))

    def close(self) -> None:
        self.writer.close()


def _finish(stage: Path, num_layers: int, keep_layers: bool) -> dict[str, Any]:
    """Move the last hidden layer to ``embeddings.npy``; drop the other layer files unless kept."""
    layers = stage / "layers"
    if num_layers > 1:
        hidden = layers / f"layer-{num_layers - 2}.npy"
        if keep_layers:
            _link_or_copy(hidden, stage / "embeddings.npy")
        else:
            os.replace(hidden, stage / "embeddings.npy")
    if not keep_layers:
        shutil.rmtree(layers)
    names = ["embeddings.npy", "logits.npy", "predictions.npy", "predictions.parquet"]
    return {name: _describe(stage / name) for name in names if (stage / name).is_file()}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(src, dst)


def _describe(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"bytes": path.stat().st_size}
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        info.update(shape=list(arr.shape), dtype=str(arr.dtype))
    return info


def _summary(run: Any, ckpt: Path, state: dict[str, Any], ds: Dataset, budget: int, chunk_nodes: int | None,
             device: torch.device, layers: list[dict[str, Any]], outputs: dict[str, Any], t0: float) -> dict[str, Any]:
    secs = time.perf_counter() - t0
    loop = state.get("loop", {})
    return {
        "format": "gnn-ooc-embedding", "run": str(run), "checkpoint": str(ckpt), "step": loop.get("step"), "epoch": loop.get("epoch"),
        "best_epoch": loop.get("best_epoch"), "dataset": str(ds.path), "nodes": ds.num_nodes, "edges": ds.num_edges,
        "remapped": ds.original_ids is not None, "device": str(device), "memory_budget": budget,
        "chunk_nodes": chunk_nodes, "layers": layers, "outputs": outputs, "seconds": round(secs, 4),
        "rows_per_s": round(ds.num_nodes / max(secs, 1e-9), 1),
    }
