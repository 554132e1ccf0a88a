"""gnn_ooc.graphstore.io: low-level file I/O and the safety of what gnn-ooc writes.

``directio`` (O_DIRECT writes and reads, page alignment), ``uring`` (a small io_uring reader over
raw syscalls: 1.5x the thread pool, and no maintained binding exists), ``runstreams`` (many append
streams at known offsets), ``rowops`` (moving rows between tensors), ``atomic`` (crash-safe
output folders) and ``owned`` (what gnn-ooc owns, checked before anything is replaced).
"""
