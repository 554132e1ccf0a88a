"""gnn-ooc: out-of-core training of graph neural networks.

The package is split into subpackages, each a folder of the repository:
``gnn_ooc.graphstore`` (the on-disk dataset and feature tiers), ``gnn_ooc.sampler``,
``gnn_ooc.trainer``, ``gnn_ooc.cuda`` and ``gnn_ooc.tools`` (command line, generator,
benchmarks).

Example:
    >>> from gnn_ooc.graphstore import Dataset
    >>> ds = Dataset.open("data/cora")            # doctest: +SKIP
    >>> ds.num_nodes, ds.num_edges                 # doctest: +SKIP
    (2708, 10556)
"""

__version__ = "0.1.0"
