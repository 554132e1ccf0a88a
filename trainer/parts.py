"""The parts of a run a user may bring: a sampler, a model, a feature store.

``Parts`` holds them (None: the built-in the config names: ``NeighborSampler`` with the config's
fan-outs, ``make_model(cfg.model)``, the mode's own store). Each is checked once, before any
work: the sampler must be a ``Sampler`` (offline planning pickles it into the background
planner, so it must pickle), the model an ``nn.Module`` whose ``forward`` takes ``(blocks, x)``,
the store a ``FeatureStore`` whose rows match the dataset's features. ``record`` is what a run
folder remembers of them, so that ``--resume`` can refuse other parts than the run's.

Example:
    >>> Parts().record()
    {'sampler': None, 'eval_sampler': None, 'model': None, 'store': None}
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any

import torch

from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.sampler.base import Sampler
from gnn_ooc.trainer.config import ConfigError


class PartsError(ConfigError):
    """A user's part that does not fit the run (exit 2, like a bad flag: the call is wrong)."""


@dataclass(frozen=True)
class Parts:
    """A run's own parts (None: the built-in). ``eval_sampler`` defaults to ``sampler``."""

    sampler: Sampler | None = None
    eval_sampler: Sampler | None = None
    model: torch.nn.Module | None = None
    store: FeatureStore | None = None

    def __post_init__(self) -> None:
        for name, kind in (("sampler", Sampler), ("eval_sampler", Sampler), ("model", torch.nn.Module),
                           ("store", FeatureStore)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise PartsError(f"{name}: {type(value).__name__} is not a {kind.__module__}.{kind.__qualname__}; "
                                 f"subclass it (docs/custom_parts.md)")

    @property
    def custom(self) -> bool:
        return any(v is not None for v in (self.sampler, self.eval_sampler, self.model, self.store))

    def evaluation_sampler(self) -> Sampler | None:
        return self.eval_sampler if self.eval_sampler is not None else self.sampler

    def check_picklable(self) -> None:
        """Offline planning runs the samplers in a child process: refuse one that cannot go there."""
        for name in ("sampler", "eval_sampler"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                pickle.dumps(value)
            except Exception as e:  # noqa: BLE001 - pickling raises many kinds; every one means the same here
                raise PartsError(f"{name}: {type(value).__name__} cannot be pickled ({e}); offline mode plans "
                                 "in a background process: make it picklable, or train with mode='online'") from None

    def check_store(self, num_rows: int, dim: int | None) -> None:
        store = self.store
        if store is not None and (store.num_rows != num_rows or store.dim != dim):
            raise PartsError(f"store: {type(store).__name__} holds {store.num_rows} rows of {store.dim}; the dataset "
                             f"has {num_rows} nodes with {dim} features")

    def record(self) -> dict[str, Any]:
        """What a run remembers of its parts: sampler settings, model and store classes."""
        out = {"sampler": _settings(self.sampler), "eval_sampler": _settings(self.eval_sampler),
               "model": _class(self.model), "store": _class(self.store)}
        return dict(json.loads(json.dumps(out)))  # as a run folder holds it (lists, not tuples)


def check_same(recorded: dict[str, Any] | None, parts: Parts, run: Any) -> None:
    """Refuse resuming ``run`` (whose parts were ``recorded``) with other parts."""
    want = recorded or Parts().record()
    have = parts.record()
    for key in want:
        if want.get(key) != have.get(key):
            raise PartsError(f"{run}: was trained with {key} {want.get(key) or 'built in'}, this call passes "
                             f"{have.get(key) or 'none'}: resume with the run's own parts")


def _settings(sampler: Sampler | None) -> dict[str, Any] | None:
    return None if sampler is None else sampler.settings()


def _class(obj: Any) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def check_model(model: torch.nn.Module, sub: Any, dim: int, dtype: torch.dtype, classes: int,
                device: torch.device) -> None:
    """One forward of a user's model on a probe batch (eval mode, no gradients, random state
    restored: training is untouched): it must take ``(blocks, x)`` and return one row of
    ``classes`` scores per seed."""
    from gnn_ooc.trainer.base import torch_blocks

    if sub is None:
        return
    x = torch.zeros((sub.num_nodes, dim), dtype=dtype, device=device)
    x = x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model([b.to(device) for b in torch_blocks(sub)], x)
    except Exception as e:  # noqa: BLE001 - the user's code: any error means the contract is broken
        raise PartsError(f"model: {type(model).__name__}(blocks, x) failed on a probe batch of {sub.num_seeds} seeds "
                         f"({sub.num_layers} blocks, x {tuple(x.shape)}): {type(e).__name__}: {e}") from e
    finally:
        model.train(was)
    want = (sub.num_seeds, classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PartsError(f"model: {type(model).__name__}(blocks, x) returned {got}, expected a tensor of shape "
                         f"{want} (one row of class scores per seed)")
