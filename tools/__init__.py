"""gnn_ooc.tools: the gnn-ooc command line, the synthetic graph generator and benchmarks."""
