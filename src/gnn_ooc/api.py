"""The Python entry points: ``gnn_ooc.train``, ``gnn_ooc.resume`` and ``gnn_ooc.Trainer``, with the
user's own parts.

``gnn-ooc train`` is a thin layer over these. Settings are ``TrainConfig``'s (the CLI's flags,
with underscores: ``batch_size=512``, ``memory_budget="2G"``), checked once; ``config`` reads a
YAML or JSON file first, keyword settings win over it. A ``sampler`` (any ``Sampler``), a
``model`` (any ``nn.Module`` taking ``(blocks, x)``) and a ``store`` (any ``FeatureStore``)
replace the built-ins in every mode: offline planning pickles the sampler into its background
planner, online mode calls it; the store serves every row (offline mode then plans ahead but
packs nothing). Progress goes to the ``gnn_ooc`` logger unless ``say`` is given.

Example:
    >>> import gnn_ooc
    >>> summary = gnn_ooc.train("demo/dataset", sampler=MySampler(ds), model=MyModel(), epochs=2)  # doctest: +SKIP
    >>> summary["best_valid_acc"]                                                                 # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("gnn_ooc")

PathLike = str | os.PathLike[str]


def train(dataset: PathLike, *, sampler: Any = None, eval_sampler: Any = None, model: Any = None, store: Any = None,
          config: PathLike | None = None, say: Callable[[str], None] | None = None, **settings: Any) -> dict[str, Any]:
    """Train on ``dataset`` (a preprocessed folder) into a new run; returns the run's summary
    (also written to ``RUN/summary.json``)."""
    return Trainer(dataset, sampler=sampler, eval_sampler=eval_sampler, model=model, store=store, config=config,
                   say=say, **settings).fit()


class Trainer:
    """``train`` as an object: the parts and settings are checked when it is made, ``fit()`` trains
    a new run, ``resume()`` continues it (or another run made with the same parts).

    Example:
        >>> t = Trainer("demo/dataset", sampler=MySampler(ds), epochs=3, out="runs/a")  # doctest: +SKIP
        >>> summary = t.fit()                                                            # doctest: +SKIP
        >>> summary = t.resume(epochs=5)                                                 # doctest: +SKIP
    """

    def __init__(self, dataset: PathLike, *, sampler: Any = None, eval_sampler: Any = None, model: Any = None,
                 store: Any = None, config: PathLike | None = None, say: Callable[[str], None] | None = None,
                 **settings: Any) -> None:
        from gnn_ooc.trainer.config import TrainConfig, read_config_file
        from gnn_ooc.trainer.parts import Parts

        values = read_config_file(config) if config is not None else {}
        self.config = TrainConfig.resolve({**values, "dataset": str(dataset)}, settings,
                                          source=str(config) if config is not None else "settings")
        self.parts = Parts(sampler=sampler, eval_sampler=eval_sampler, model=model, store=store)
        self.say = say or log.info
        self.run: Path | None = None

    def fit(self) -> dict[str, Any]:
        """Train from scratch into the configured run folder (``out``; default DATASET/runs/<time>)."""
        from gnn_ooc.trainer.run import train as run_train

        summary = run_train(self.config, say=self.say, parts=self.parts)
        self.run = Path(summary["run"])
        return summary

    def resume(self, run: PathLike | None = None, **overrides: Any) -> dict[str, Any]:
        """Continue ``run`` (default: the one ``fit`` made) with these parts; ``overrides`` may
        change only the resumable settings."""
        from gnn_ooc.trainer.run import resume as run_resume

        where = run if run is not None else self.run or self.config.out
        if not where:
            raise ValueError("resume: which run? fit() first, or pass run=")
        return run_resume(Path(where), overrides, say=self.say, parts=self.parts)


def resume(run: PathLike, *, sampler: Any = None, eval_sampler: Any = None, model: Any = None, store: Any = None,
           dataset: PathLike | None = None, say: Callable[[str], None] | None = None,
           **overrides: Any) -> dict[str, Any]:
    """Continue ``run`` from its newest checkpoint, with the parts it was trained with (checked);
    ``overrides`` may change only the resumable settings (``epochs``, ``max_steps``, ...)."""
    from gnn_ooc.trainer.parts import Parts
    from gnn_ooc.trainer.run import resume as run_resume

    parts = Parts(sampler=sampler, eval_sampler=eval_sampler, model=model, store=store)
    return run_resume(Path(run), overrides, say=say or log.info, dataset=dataset, parts=parts)
