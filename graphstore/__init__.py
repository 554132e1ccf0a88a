"""gnn_ooc.graphstore: the on-disk dataset (format, manifest, checksums) and its ingest.

Example:
    >>> from gnn_ooc.graphstore import Dataset
    >>> ds = Dataset.open("data/cora")   # doctest: +SKIP
"""

from gnn_ooc.graphstore.base import (
    ChecksumError,
    DatasetError,
    FeatureStore,
    GnnOocError,
    InputError,
    Manifest,
    MemoryBudgetError,
    PreprocessSpec,
    StoreStats,
)
from gnn_ooc.graphstore.dataset import Dataset, DegreeStats

__all__ = [
    "ChecksumError",
    "Dataset",
    "FeatureStore",
    "DatasetError",
    "DegreeStats",
    "GnnOocError",
    "InputError",
    "Manifest",
    "MemoryBudgetError",
    "PreprocessSpec",
    "StoreStats",
]
