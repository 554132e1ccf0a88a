"""gnn_ooc.graphstore.features.policies: which rows a cache holds, one module per policy.

``static`` (the hottest rows by a plan's access counts, or by in-degree without a plan: the
trainer's placement), ``future`` (Belady over a plan's look-ahead window with a victim buffer),
``sieve`` and ``clock`` (online host caches, no plan; ``hosttable`` is what they share).
"""
