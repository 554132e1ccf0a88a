"""The one schema of ``gnn-ooc train`` settings: defaults, types, help, and how they are resolved.

Settings come from three layers, later ones winning: the defaults here, a ``--config`` YAML
(or JSON) file, then command-line flags. ``TrainConfig.resolve`` merges them once and
validates them with pydantic against this schema (types, units, choices, bounds and the
checks across settings), and returns a frozen config; errors name the setting and where it
came from. Components get plain arguments from it, never the config object itself. The
resolved config is saved in the run folder, and ``--resume RUN`` reloads it from there.

Example:
    >>> cfg = TrainConfig.resolve({"dataset": "data/cora", "fanouts": "10,5"}, {"epochs": 3})
    >>> cfg.fanouts, cfg.epochs, cfg.lr
    ((10, 5), 3, 0.003)
    >>> TrainConfig.resolve({"dataset": "x"}, {"memory_budget": "2G"}).memory_budget
    2147483648
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gnn_ooc.errors import GnnOocError
from gnn_ooc.units import parse_size

Mode = Literal["auto", "offline", "online", "memory", "mmap"]
Cache = Literal["static", "future"]
ModelName = Literal["sage", "gcn", "gat"]
Norm = Literal["none", "batch", "layer"]
Precision = Literal["fp32", "bf16", "fp16"]
Scheduler = Literal["none", "cosine", "step"]
Device = Literal["auto", "cpu", "cuda"]
Topology = Literal["auto", "memory", "external"]
MODES, CACHES, MODELS, NORMS, PRECISIONS, SCHEDULERS, DEVICES = (
    typing.get_args(t) for t in (Mode, Cache, ModelName, Norm, Precision, Scheduler, Device))


class ConfigError(GnnOocError):
    """A setting with a wrong name, type or value; the message names the setting and the source."""

    exit_code = 2


def _not_bool(value: Any) -> Any:
    """Integers from ints, integral floats or digit strings, never from ``true``/``false``."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return value


def _size(value: Any) -> int:
    """Bytes from an int or a size with a unit (``"2G"``, ``"512MiB"``)."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes (e.g. 4G), got a boolean")
    return parse_size(value if isinstance(value, (int, str)) else int(value))


def _int_list(value: Any) -> Any:
    """Fan-outs from ``"10,5"``, ``10`` or ``[10, 5]``."""
    if isinstance(value, str):
        return [v for v in value.replace(" ", "").split(",") if v]
    return [value] if isinstance(value, int) else value


def _fanouts(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value or any(f == 0 or f < -1 for f in value):
        raise ValueError("expected positive counts or -1 (all), one per layer")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Positive = Annotated[Int, Field(ge=1)]
NonNegative = Annotated[Int, Field(ge=0)]
Size = Annotated[int, BeforeValidator(_size)]
FanOuts = Annotated[tuple[Int, ...], BeforeValidator(_int_list), AfterValidator(_fanouts)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


def _opt(default: Any, help: str) -> Any:
    return Field(default=default, description=help)


class TrainConfig(BaseModel):
    """Every ``gnn-ooc train`` setting with its default (the only place defaults live).

    Example:
        >>> TrainConfig(dataset="data/cora", epochs="2").epochs
        2
    """

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True,
                              validate_default=False)

    dataset: str = _opt("", "the preprocessed dataset folder")
    out: str = _opt("", "the run folder (metrics, checkpoints, summary.json); default DATASET/runs/<time>")
    mode: Mode = _opt("auto", "offline (plan + packs + caches), online (sampling + tiers), memory (features in "
                             "RAM), mmap (sampling + page-cache gathers: the naive baseline), or auto: offline")
    model: ModelName = _opt("sage", "sage | gcn | gat")
    fanouts: FanOuts = _opt((10, 5), "neighbours per hop, seeds' hop first (-1: all); also the depth")
    batch_size: Positive = _opt(1024, "seed nodes per batch")
    epochs: Positive = _opt(10, "epochs to train")
    hidden: Positive = _opt(256, "hidden size")
    dropout: Dropout = _opt(0.5, "dropout between layers")
    norm: Norm = _opt("none", "normalisation between layers: none | batch | layer")
    heads: Positive = _opt(4, "attention heads (gat)")
    lr: PositiveFloat = _opt(0.003, "learning rate (Adam)")
    weight_decay: NonNegativeFloat = _opt(0.0, "weight decay")
    scheduler: Scheduler = _opt("none", "learning-rate schedule: none | cosine (over the epochs) | step (x0.5 every "
                                  "quarter of the epochs)")
    seed: Int = _opt(0, "seed of the epoch orders, the sampling and the model")
    memory_budget: Size = _opt(4 << 30, "bytes the run may hold: caches, in-flight batches, planning (e.g. 4G)")
    gpu_cache: Size | None = _opt(None, "device cache bytes (default: from the memory budget)")
    cpu_cache: Size | None = _opt(None, "pinned host cache bytes (default: from the memory budget)")
    cache: Cache = _opt("static", "the device cache offline: static (the hottest rows by the plan's access counts, "
                                "fixed) or future (follows the plan: Belady over --cache-window batches, with a victim "
                                "buffer of half the pinned cache; the rows it will hold are not packed)")
    cache_window: Positive = _opt(16, "batches the future-aware cache looks ahead")
    pack_budget: str | None = _opt(None, "disk bytes for packed segments, or a multiple of the feature file (2x)")
    segment_batches: NonNegative = _opt(0, "batches per packed segment (0: as many as a segment buffer, an eighth of "
                                   "the memory budget, holds; at most 64)")
    keep_epochs: Positive = _opt(2, "planned epochs kept on disk (the one training and the next; offline keeps at least 2)")
    plan: str | None = _opt(None, "train on this plan of the dataset (gnn-ooc sample --name NAME) instead of planning "
                                  "a run's own: its epochs are used as they are (and kept), missing ones planned into it; "
                                  "its fan-outs, batch size and seed are the defaults (offline mode)")
    topology: Topology = _opt("auto", "how planning reads the topology: memory (node by node), external (sweeps over "
                         "groups of batches, for a topology larger than memory), auto (external when it does not fit)")
    threads: Positive | None = _opt(None, "CPU threads for torch and the samplers (default: all)")
    device: Device = _opt("auto", "auto | cpu | cuda")
    precision: Precision = _opt("fp32", "fp32 | bf16 | fp16 autocast")
    eval_fanouts: FanOuts | None = _opt(None, "fan-outs for evaluation (default: the training ones)")
    eval_batch_size: Positive | None = _opt(None, "seed nodes per evaluation batch (default: batch size)")
    eval_every: NonNegative = _opt(1, "evaluate on valid and test every N epochs and after the last (0: never)")
    patience: Positive | None = _opt(None, "stop after N evaluations without a better validation accuracy")
    checkpoint_every: Positive | None = _opt(None, "also checkpoint every N steps inside an epoch")
    prefetch: Positive = _opt(4, "batches in flight per pipeline stage (capped by the memory budget)")
    progress: bool = _opt(True, "tqdm progress bar with live stage times and hit rates")
    max_steps: Positive | None = _opt(None, "stop after this many steps in total (for smoke tests)")

    @model_validator(mode="after")
    def _across(self) -> TrainConfig:
        """The checks that involve more than one setting."""
        if not self.dataset:
            raise ValueError("dataset: required (gnn-ooc train DATASET or dataset: in the config file)")
        if self.plan is not None and self.mode not in ("auto", "offline"):
            raise ValueError(f"plan: {self.plan!r} is for offline training; mode is {self.mode}")
        if self.cache == "future" and self.mode not in ("auto", "offline"):
            raise ValueError(f"cache: future follows a plan (offline training); mode is {self.mode}")
        if self.eval_fanouts is not None and len(self.eval_fanouts) != len(self.fanouts):
            raise ValueError(f"eval_fanouts: {len(self.eval_fanouts)} hops, the model has {len(self.fanouts)}")
        return self

    @classmethod
    def resolve(cls, file_values: Mapping[str, Any] | None = None,
                flag_values: Mapping[str, Any] | None = None, *, source: str = "config") -> TrainConfig:
        """Defaults, then ``file_values``, then ``flag_values`` (``None`` flags are not given)."""
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for where, values in ((source, file_values or {}), ("flags", flag_values or {})):
            for key, value in values.items():
                name = key.replace("-", "_")
                if name not in cls.model_fields:
                    known = ", ".join(sorted(cls.model_fields))
                    raise ConfigError(f"{where}: unknown setting {key!r} (known: {known})")
                if value is not None:
                    merged[name], origin[name] = value, where
        try:
            return cls(**merged)
        except ValidationError as e:
            raise ConfigError(_one_line(e, merged, origin, source)) from None

    @property
    def num_layers(self) -> int:
        return len(self.fanouts)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``, validated like any other config."""
        return type(self).resolve({**self.to_dict(), **changes}, source="replace")

    def to_dict(self) -> dict[str, Any]:
        return {name: (list(v) if isinstance(v := getattr(self, name), tuple) else v) for name in type(self).model_fields}

    def save(self, path: Path) -> None:
        """Write the resolved config (YAML for ``.yaml``/``.yml``, else JSON) atomically."""
        from gnn_ooc.graphstore.io.atomic import atomic_write_bytes

        atomic_write_bytes(path, _dump(self.to_dict(), path.suffix).encode())

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.resolve(read_config_file(path), source=str(path))


def _one_line(error: ValidationError, given: Mapping[str, Any], origin: Mapping[str, str], source: str) -> str:
    """pydantic's first error as ``SOURCE: SETTING: VALUE: [item N: ]what was expected``."""
    first = error.errors(include_url=False)[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:  # a check across settings: its message names them
        return f"{source}: {message}"
    name, *inner = first["loc"]
    item = "".join(f"item {i + 1}: " for i in inner if isinstance(i, int))
    return f"{origin.get(str(name), source)}: {name}: {given.get(str(name), first['input'])!r}: {item}{message}"


@dataclass(frozen=True)
class Setting:
    """One setting as the CLI shows it: ``--NAME`` (underscores as dashes), its default and help."""

    name: str
    default: Any
    help: str
    is_flag: bool  # a boolean: --NAME / --no-NAME


def cli_fields() -> list[Setting]:
    """The settings the CLI exposes as ``--flags`` (all but ``dataset``, a positional argument)."""
    return [Setting(name, f.default, f.description or "", f.annotation is bool)
            for name, f in TrainConfig.model_fields.items() if name != "dataset"]


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
