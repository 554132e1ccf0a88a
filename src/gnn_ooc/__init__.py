"""gnn-ooc: out-of-core training of graph neural networks.

The package is split into subpackages, each a folder of the repository:
``gnn_ooc.graphstore`` (the on-disk dataset and feature tiers), ``gnn_ooc.sampler``,
``gnn_ooc.trainer``, ``gnn_ooc.cuda`` and ``gnn_ooc.tools`` (command line, generator,
benchmarks).

``gnn_ooc.train(dataset, sampler=..., model=..., store=..., **settings)`` trains with the
user's own parts (``gnn_ooc.api``).

Example:
    >>> from gnn_ooc.graphstore import Dataset
    >>> ds = Dataset.open("data/cora")            # doctest: +SKIP
    >>> ds.num_nodes, ds.num_edges                 # doctest: +SKIP
    (2708, 10556)
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Trainer", "resume", "train"]


def __getattr__(name: str) -> Any:
    # ``gnn_ooc.train`` imports torch and the trainer only when it is first used
    if name in ("train", "resume", "Trainer"):
        from gnn_ooc import api

        return getattr(api, name)
    raise AttributeError(f"module 'gnn_ooc' has no attribute {name!r}")
