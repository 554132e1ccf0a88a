"""Build a built-in sampler from plain settings (what the command line and configs hold).

Example:
    >>> import numpy as np
    >>> make_sampler((np.array([0, 1, 1]), np.array([1], np.int32)), "neighbor", "5,5").settings()["fanouts"]
    [5, 5]
"""

from __future__ import annotations

import os
from typing import Any

from gnn_ooc.sampler.base import Sampler, SamplerError

SAMPLERS = ("neighbor", "layerwise")


def make_sampler(graph: Any, kind: str, fanouts: Any, *, weights: str | os.PathLike[str] | None = None,
                 edge_ids: bool = False, threads: int | None = None) -> Sampler:
    """``neighbor``: fan-outs per hop; ``layerwise``: new nodes per hop (LADIES importance)."""
    if kind == "neighbor":
        from gnn_ooc.sampler.neighbor import NeighborSampler

        return NeighborSampler(graph, fanouts, weights=weights, return_edge_ids=edge_ids, threads=threads)
    if kind == "layerwise":
        from gnn_ooc.sampler.layerwise import LayerWiseSampler

        if weights is not None:
            raise SamplerError("--weights applies to the neighbor sampler only")
        return LayerWiseSampler(graph, fanouts)
    raise SamplerError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
