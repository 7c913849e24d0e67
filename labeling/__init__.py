"""Teachers, sharded pseudo-labeling jobs and the multi-task label store (MuST-style)."""
