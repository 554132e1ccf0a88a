"""gnn_ooc.graphstore: the on-disk dataset (format, manifest, checksums) and its ingest.

Example:
    >>> from gnn_ooc.graphstore import Dataset
    >>> ds = Dataset.open("data/cora")   # doctest: +SKIP
"""

from gnn_ooc.errors import ChecksumError, DatasetError, GnnOocError, InputError, MemoryBudgetError
from gnn_ooc.graphstore.features.base import FeatureStore, StoreStats
from gnn_ooc.graphstore.format.base import Manifest
from gnn_ooc.graphstore.format.dataset import Dataset, DegreeStats
from gnn_ooc.graphstore.ingest.base import PreprocessSpec

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
