"""WebDataset image shards: build, verify and stream (local disk or s3://).

Not built yet: see the shards issue. This package exists so the distribution's layout
(``shards`` <- ``labeling`` <- ``pretrain``) is fixed from the start.
"""
