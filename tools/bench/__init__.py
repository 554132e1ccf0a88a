"""gnn_ooc.tools.bench: the benchmarks (``python -m gnn_ooc.tools.bench.NAME``, ``make bench-NAME``).

Programs, not tests: each runs its stages in children (under ``memcap.sh`` where the figure is
out of core), prints JSON and writes the README's figures. They use only the public paths of
the packages they measure.
"""
