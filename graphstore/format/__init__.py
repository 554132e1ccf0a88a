"""gnn_ooc.graphstore.format: the on-disk dataset, a versioned contract.

``base`` (format constants, the manifest), ``dataset`` (``Dataset.open``: memory-mapped arrays and
metadata), ``arrays`` (per-node readers: features, labels, splits), ``npyfile`` (aligned ``.npy``
writing with running checksums) and ``integrity`` (what is checked when, on what is read back).
"""
