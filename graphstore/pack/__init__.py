"""gnn_ooc.graphstore.pack: DiskGNN packing of a planned epoch's cache misses into segments.

``format`` (where a pack lives, ``pack.json``, its version check, ``PackSpec``), ``writer``
(``pack_epoch``: one sequential pass over the features per group of segments) and ``reader``
(``PackedEpoch``: a segment back with one sequential read). Batches are assembled from segments
by the trainer's ``assemble.BatchAssembler``.
"""
