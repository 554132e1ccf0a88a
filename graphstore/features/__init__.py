"""gnn_ooc.graphstore.features: feature stores and their tiers.

``base`` (the ``FeatureStore`` contract and its ``StoreStats``), ``stores`` (rows in RAM, rows in a
memory map), ``direct`` (rows read with O_DIRECT), ``cache`` (one cache tier on a device or in
pinned memory), ``tiered`` (the tiered store: each id from the fastest tier holding it) and
``tiering`` (sizes from byte budgets). Which rows a cache holds is a policy: ``policies/``.
"""
