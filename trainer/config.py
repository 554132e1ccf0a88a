"""The one schema of ``gnn-ooc train`` settings: defaults, types, help, and how they are resolved.

Settings come from three layers, later ones winning: the defaults here, a ``--config`` YAML
(or JSON) file, then command-line flags. ``TrainConfig.resolve`` merges them once, checks
every value, and returns a frozen config; components get plain arguments from it, never the
config object itself. The resolved config is saved in the run folder, and ``--resume RUN``
reloads it from there.

Example:
    >>> cfg = TrainConfig.resolve({"dataset": "data/cora", "fanouts": "10,5"}, {"epochs": 3})
    >>> cfg.fanouts, cfg.epochs, cfg.lr
    ((10, 5), 3, 0.003)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from gnn_ooc.errors import GnnOocError
from gnn_ooc.units import parse_size

MODES = ("auto", "offline", "online", "memory", "mmap")
CACHES = ("static", "future")
MODELS = ("sage", "gcn", "gat")
NORMS = ("none", "batch", "layer")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("none", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(GnnOocError):
    """A setting with a wrong name, type or value; the message names the setting and the source."""

    exit_code = 2


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """Every ``gnn-ooc train`` setting with its default (the only place defaults live)."""

    dataset: str = _opt("", "the preprocessed dataset folder")
    out: str = _opt("", "the run folder (metrics, checkpoints, summary.json); default DATASET/runs/<time>")
    mode: str = _opt("auto", "offline (plan + packs + caches), online (sampling + tiers), memory (features in "
                             "RAM), mmap (sampling + page-cache gathers: the naive baseline), or auto: offline",
                 choices=MODES)
    model: str = _opt("sage", "sage | gcn | gat", choices=MODELS)
    fanouts: tuple[int, ...] = _opt((10, 5), "neighbours per hop, seeds' hop first (-1: all); also the depth")
    batch_size: int = _opt(1024, "seed nodes per batch")
    epochs: int = _opt(10, "epochs to train")
    hidden: int = _opt(256, "hidden size")
    dropout: float = _opt(0.5, "dropout between layers")
    norm: str = _opt("none", "normalisation between layers: none | batch | layer", choices=NORMS)
    heads: int = _opt(4, "attention heads (gat)")
    lr: float = _opt(0.003, "learning rate (Adam)")
    weight_decay: float = _opt(0.0, "weight decay")
    scheduler: str = _opt("none", "learning-rate schedule: none | cosine (over the epochs) | step (x0.5 every "
                                  "quarter of the epochs)", choices=SCHEDULERS)
    seed: int = _opt(0, "seed of the epoch orders, the sampling and the model")
    memory_budget: int = _opt(4 << 30, "bytes the run may hold: caches, in-flight batches, planning (e.g. 4G)",
                              size=True)
    gpu_cache: int | None = _opt(None, "device cache bytes (default: from the memory budget)", size=True)
    cpu_cache: int | None = _opt(None, "pinned host cache bytes (default: from the memory budget)", size=True)
    cache: str = _opt("static", "the device cache offline: static (the hottest rows by the plan's access counts, "
                                "fixed) or future (follows the plan: Belady over --cache-window batches, with a victim "
                                "buffer of half the pinned cache; the rows it will hold are not packed)",
                      choices=CACHES)
    cache_window: int = _opt(16, "batches the future-aware cache looks ahead")
    pack_budget: str | None = _opt(None, "disk bytes for packed segments, or a multiple of the feature file (2x)")
    segment_batches: int = _opt(0, "batches per packed segment (0: as many as a segment buffer, an eighth of "
                                   "the memory budget, holds; at most 64)")
    keep_epochs: int = _opt(2, "planned epochs kept on disk (the one training and the next; offline keeps at least 2)")
    plan: str | None = _opt(None, "train on this plan of the dataset (gnn-ooc sample --name NAME) instead of planning "
                                  "a run's own: its epochs are used as they are (and kept), missing ones planned into it; "
                                  "its fan-outs, batch size and seed are the defaults (offline mode)")
    topology: str = _opt("auto", "how planning reads the topology: memory (node by node), external (sweeps over "
                         "groups of batches, for a topology larger than memory), auto (external when it does not fit)",
                         choices=("auto", "memory", "external"))
    threads: int | None = _opt(None, "CPU threads for torch and the samplers (default: all)")
    device: str = _opt("auto", "auto | cpu | cuda", choices=DEVICES)
    precision: str = _opt("fp32", "fp32 | bf16 | fp16 autocast", choices=PRECISIONS)
    eval_fanouts: tuple[int, ...] | None = _opt(None, "fan-outs for evaluation (default: the training ones)")
    eval_batch_size: int | None = _opt(None, "seed nodes per evaluation batch (default: batch size)")
    eval_every: int = _opt(1, "evaluate on valid and test every N epochs and after the last (0: never)")
    patience: int | None = _opt(None, "stop after N evaluations without a better validation accuracy")
    checkpoint_every: int | None = _opt(None, "also checkpoint every N steps inside an epoch")
    prefetch: int = _opt(4, "batches in flight per pipeline stage (capped by the memory budget)")
    progress: bool = _opt(True, "tqdm progress bar with live stage times and hit rates")
    max_steps: int | None = _opt(None, "stop after this many steps in total (for smoke tests)")

    @classmethod
    def resolve(cls, file_values: Mapping[str, Any] | None = None,
                flag_values: Mapping[str, Any] | None = None, *, source: str = "config") -> TrainConfig:
        """Defaults, then ``file_values``, then ``flag_values`` (``None`` flags are not given)."""
        merged: dict[str, Any] = {}
        for where, values in ((source, file_values or {}), ("flags", flag_values or {})):
            for key, value in values.items():
                name = key.replace("-", "_")
                if name not in _FIELDS:
                    raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(_FIELDS))})")
                if value is not None:
                    merged[name] = _coerce(_FIELDS[name], value, where)
        cfg = cls(**merged)
        cfg.check()
        return cfg

    def check(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset: required (gnn-ooc train DATASET or dataset: in the config file)")
        for name in ("batch_size", "epochs", "hidden", "heads", "keep_epochs", "prefetch", "cache_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)}, expected >= 1")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every: {self.eval_every}, expected >= 0 (0: never evaluate)")
        if self.segment_batches < 0:
            raise ConfigError(f"segment_batches: {self.segment_batches}, expected >= 0 (0: fitted to the budget)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: {self.dropout}, expected 0 <= dropout < 1")
        if not self.fanouts or any(f == 0 or f < -1 for f in self.fanouts):
            raise ConfigError(f"fanouts: {self.fanouts}, expected positive counts or -1 (all), one per layer")
        if self.plan is not None and self.mode not in ("auto", "offline"):
            raise ConfigError(f"plan: {self.plan!r} is for offline training; mode is {self.mode}")
        if self.cache == "future" and self.mode not in ("auto", "offline"):
            raise ConfigError(f"cache: future follows a plan (offline training); mode is {self.mode}")
        if self.eval_fanouts is not None and len(self.eval_fanouts) != len(self.fanouts):
            raise ConfigError(f"eval_fanouts: {len(self.eval_fanouts)} hops, the model has {len(self.fanouts)}")

    @property
    def num_layers(self) -> int:
        return len(self.fanouts)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def save(self, path: Path) -> None:
        """Write the resolved config (YAML when PyYAML imports, else JSON) atomically."""
        from gnn_ooc.graphstore.io.atomic import atomic_write_bytes

        atomic_write_bytes(path, _dump(self.to_dict(), path.suffix).encode())

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.resolve(read_config_file(path), source=str(path))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)  # the annotations as types (this module's are strings)


class RunFolderError(GnnOocError):
    """A folder given as a run that is not one (exit 1, like a folder given as a dataset that is not)."""


def saved_config_path(run: Path) -> Path:
    """The resolved config a run folder holds (``config.yaml``; ``config.json`` in runs made before PyYAML was required)."""
    found = next((p for p in (run / "config.yaml", run / "config.json") if p.is_file()), None)
    if found is None:
        raise RunFolderError(f"{run}: no config.yaml or config.json; not a gnn-ooc run folder (gnn-ooc train --out)")
    return found


def resolve_device(name: str) -> Any:
    """``auto`` | ``cpu`` | ``cuda`` as a torch device (``auto``: CUDA when torch sees it)."""
    import torch

    from gnn_ooc.capabilities import cuda_available

    if name not in DEVICES:
        raise ConfigError(f"device must be {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not cuda_available():
        raise ConfigError("device: cuda requested, but torch sees no CUDA device")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and cuda_available()) else "cpu")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON config file as a mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        data = _load_yaml(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _load_yaml(text: str) -> Any:
    import yaml  # a required dependency, imported when a config is read

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def _dump(values: dict[str, Any], suffix: str) -> str:
    if suffix in (".yaml", ".yml"):
        import yaml

        return str(yaml.safe_dump(values, sort_keys=False))
    return json.dumps(values, indent=2) + "\n"


def _base_type(name: str) -> type:
    """The field's type without ``| None``: ``int``, ``float``, ``bool``, ``str`` or ``tuple``."""
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return tuple if typing.get_origin(hint) is tuple else hint


def _coerce(f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    """``value`` as the field's type; sizes accept units, fan-outs accept ``"10,5"``."""
    kind = _base_type(f.name)
    parsers: dict[type, Callable[[Any], Any]] = {tuple: _int_tuple, bool: _bool, int: _int, float: float}
    parse = parsers.get(kind, str)
    try:
        out = parse_size(value if isinstance(value, (int, str)) else int(value)) if f.metadata.get("size") else parse(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {f.name}: {value!r} is not a valid {f.type} ({e})") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{where}: {f.name}: {out!r}, expected one of {', '.join(choices)}")
    return out


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("not an integer")
    return int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if isinstance(value, int):
        value = [value]
    return tuple(_int(v) for v in value)


def cli_fields() -> list[dataclasses.Field[Any]]:
    """The settings the CLI exposes as ``--flags`` (all but ``dataset``, a positional argument)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name != "dataset"]
