"""The user's own sampler, model and store through ``gnn_ooc.train``: every mode, checks first, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import gnn_ooc
from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.sampler.base import SamplerError
from gnn_ooc.sampler.layerwise import LayerWiseSampler
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.trainer.config import ConfigError
from gnn_ooc.trainer.parts import PartsError
from tests.trainer.conftest import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("parts"), nodes=2000, avg_degree=6, feature_dim=8, classes=3, seed=4)


class TwoLayerMean(torch.nn.Module):
    """Not a BlockModel: a plain module taking (blocks, x)."""

    def __init__(self, in_dim: int, classes: int) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(2 * in_dim, 16), torch.nn.Linear(32, classes)

    def forward(self, blocks: Any, x: torch.Tensor) -> torch.Tensor:
        for block, lin in zip(blocks, (self.a, self.b)):
            src, dst = block.edge_index
            total = x.new_zeros(block.num_dst, x.shape[1]).index_add_(0, dst, x[src])
            count = torch.bincount(dst, minlength=block.num_dst).clamp(min=1).unsqueeze(1)
            x = lin(torch.cat([x[: block.num_dst], total / count], 1))
            x = torch.relu(x) if lin is self.a else x
        return x


class CountingStore(FeatureStore):
    """Rows of an array, counting what it served (so a test sees every row came from here)."""

    tier = "user"

    def __init__(self, array: np.ndarray) -> None:
        super().__init__(array.shape[0], array.shape[1], torch.float32)
        self.array, self.served = array, 0

    def _gather(self, ids: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(torch.from_numpy(np.asarray(self.array[ids.numpy()], dtype=np.float32)))
        self.served += int(ids.shape[0])


def settings(tmp_path: Path, name: str, **kw: Any) -> dict[str, Any]:
    return {"out": str(tmp_path / name), "batch_size": 128, "epochs": 2, "lr": 0.01, "progress": False,
            "memory_budget": "256M", "threads": 1, "say": lambda _m: None, **kw}


def parts(ds: Dataset) -> dict[str, Any]:
    torch.manual_seed(0)
    return {"sampler": LayerWiseSampler(ds, [64, 64]), "model": TwoLayerMean(ds.feature_dim or 0, ds.num_classes or 1),
            "store": CountingStore(np.asarray(ds.features))}


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics" / "steps.jsonl").read_text().splitlines()]


def test_own_sampler_model_and_store_train_alike_in_every_mode(dataset: Path, tmp_path: Path) -> None:
    ds = Dataset.open(dataset)
    got = {}
    for mode in ("offline", "online", "memory"):
        mine = parts(ds)
        summary = gnn_ooc.train(dataset, mode=mode, **mine, **settings(tmp_path, mode))
        got[mode] = losses(tmp_path / mode)
        assert summary["model"] == "TwoLayerMean" and summary["parts"]["store"].endswith("CountingStore")
        assert summary["parts"]["sampler"]["sampler"].endswith("LayerWiseSampler")
        assert mine["store"].served > 0 and set(summary["hit_rates"]) == {"user"}, summary["hit_rates"]
    # the same batches (planned ahead, or sampled on the spot) and the same model: the same losses
    assert got["offline"] == got["online"] == got["memory"]
    assert not list((dataset / "plans").glob("run-*/packs/*/epoch-*"))  # nothing packed for a user's store


def test_own_sampler_with_the_built_in_model_and_store(dataset: Path, tmp_path: Path) -> None:
    ds = Dataset.open(dataset)
    summary = gnn_ooc.train(dataset, sampler=NeighborSampler(ds, [4, 4]), **settings(tmp_path, "run"))
    reference = gnn_ooc.train(dataset, fanouts="4,4", **settings(tmp_path, "ref"))
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")  # the built-in sampler, passed in, changes nothing
    assert summary["hit_rates"].get("packed", 0) > 0 and summary["model"] == reference["model"] == "sage"


class SeedsLast(NeighborSampler):
    """Breaks the contract: the seeds are not first."""

    def _sample(self, seeds: np.ndarray, key: Any) -> Any:
        out = super()._sample(seeds, key)
        return type(out)(node=out.node[::-1].copy(), row=out.row, col=out.col,
                         num_sampled_nodes=out.num_sampled_nodes, num_sampled_edges=out.num_sampled_edges)


def test_parts_that_break_their_contract_are_refused_before_training(dataset: Path, tmp_path: Path) -> None:
    ds = Dataset.open(dataset)
    with pytest.raises(SamplerError, match="seeds first"):
        gnn_ooc.train(dataset, sampler=SeedsLast(ds, [3, 3]), **settings(tmp_path, "a"))
    with pytest.raises(PartsError, match=r"model: Linear\(blocks, x\) failed on a probe batch"):
        gnn_ooc.train(dataset, model=torch.nn.Linear(8, 3), **settings(tmp_path, "b"))
    with pytest.raises(PartsError, match=r"returned \(\d+, 5\), expected a tensor of shape \(\d+, 3\)"):
        gnn_ooc.train(dataset, model=TwoLayerMean(8, 5), **settings(tmp_path, "c"))
    with pytest.raises(PartsError, match="store: CountingStore holds 10 rows of 8; the dataset has 2000 nodes"):
        gnn_ooc.train(dataset, store=CountingStore(np.zeros((10, 8), np.float32)), **settings(tmp_path, "d"))
    with pytest.raises(PartsError, match="sampler: str is not a gnn_ooc.sampler.base.Sampler"):
        gnn_ooc.train(dataset, sampler="neighbor", **settings(tmp_path, "e"))
    unpicklable = NeighborSampler(ds, [3, 3])
    unpicklable.hook = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(PartsError, match="cannot be pickled.*mode='online'"):
        gnn_ooc.train(dataset, sampler=unpicklable, **settings(tmp_path, "f"))
    for name in "abcdef":  # refused before any checkpoint
        assert not list((tmp_path / name).glob("checkpoints/step-*.pt"))


def test_a_run_resumes_only_with_its_own_parts(dataset: Path, tmp_path: Path) -> None:
    ds = Dataset.open(dataset)
    mine = parts(ds)
    gnn_ooc.train(dataset, mode="online", max_steps=10, **mine, **settings(tmp_path, "run", epochs=3))
    with pytest.raises(PartsError, match="was trained with model .*TwoLayerMean, this call passes none"):
        gnn_ooc.resume(tmp_path / "run", sampler=mine["sampler"], store=mine["store"], max_steps=None)
    with pytest.raises(PartsError, match="sampler"):
        gnn_ooc.resume(tmp_path / "run", sampler=LayerWiseSampler(ds, [32, 32]), model=mine["model"],
                       store=mine["store"])
    done = gnn_ooc.resume(tmp_path / "run", **parts(ds), max_steps=1000, say=lambda _m: None)
    assert done["epochs_done"] == 3
    torch.manual_seed(0)
    gnn_ooc.train(dataset, mode="online", **parts(ds), **settings(tmp_path, "whole", epochs=3))
    assert losses(tmp_path / "run") == losses(tmp_path / "whole")  # exact resume with a user's parts


def test_the_trainer_object_fits_and_resumes_with_its_parts(dataset: Path, tmp_path: Path) -> None:
    ds = Dataset.open(dataset)
    t = gnn_ooc.Trainer(dataset, mode="memory", max_steps=7, **parts(ds), **settings(tmp_path, "run"))
    assert t.fit()["steps"] == 7
    assert t.resume(max_steps=1000)["epochs_done"] == 2
    gnn_ooc.train(dataset, mode="memory", **parts(ds), **settings(tmp_path, "whole"))
    assert losses(tmp_path / "run") == losses(tmp_path / "whole")
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        gnn_ooc.Trainer(dataset, epoch=3)  # checked when made, before any work
