"""gnn_ooc.graphstore.ingest: raw graph files to the dataset (``gnn-ooc preprocess``), out of core.

``base`` (``PreprocessSpec``), ``layouts`` (known raw folders), ``sources`` (edge-list readers:
Parquet, CSV/TSV, ``.npy``), ``remap`` (sparse or string ids to ``0..N-1``), ``csc`` and
``kernels`` (the external-sort CSC build) and ``preprocess`` (the command, crash-safe).
"""
