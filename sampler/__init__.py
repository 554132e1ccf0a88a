"""gnn_ooc.sampler: the sampler contract, the built-in samplers, offline epoch plans, PyG/DGL interop.

Example:
    >>> import numpy as np
    >>> from gnn_ooc.sampler import NeighborSampler, SampleKey
    >>> s = NeighborSampler((np.array([0, 1, 2]), np.array([1, 0], np.int32)), fanouts=[1, 1])
    >>> s.sample([0], SampleKey(seed=0)).node.tolist()
    [0, 1]
"""

from gnn_ooc.sampler.background import BackgroundPlanner
from gnn_ooc.sampler.base import (
    Block,
    CorruptGraphError,
    CscGraph,
    SampledSubgraph,
    SampleKey,
    Sampler,
    SamplerError,
    as_key,
    parse_fanouts,
)
from gnn_ooc.sampler.factory import make_sampler
from gnn_ooc.sampler.layerwise import LayerWiseSampler
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import (
    EpochPlan,
    Plan,
    PlanError,
    Planner,
    PlanSpec,
    plan_epochs,
)

__all__ = [
    "BackgroundPlanner",
    "Block",
    "CorruptGraphError",
    "CscGraph",
    "EpochPlan",
    "LayerWiseSampler",
    "NeighborSampler",
    "Plan",
    "PlanError",
    "PlanSpec",
    "Planner",
    "SampleKey",
    "SampledSubgraph",
    "Sampler",
    "SamplerError",
    "as_key",
    "make_sampler",
    "parse_fanouts",
    "plan_epochs",
]
