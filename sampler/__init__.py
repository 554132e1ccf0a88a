"""gnn_ooc.sampler: see DESIGN.md; filled in by later issues."""
