"""Teachers, sharded pseudo-labeling jobs and the multi-task label store.

Not built yet: see the labeling issue. This package exists so the distribution's layout
(``shards`` <- ``labeling`` <- ``pretrain``) is fixed from the start.
"""
