"""gnn_ooc.cuda: see DESIGN.md; filled in by later issues."""
