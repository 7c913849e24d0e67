"""Programs that drive the whole system: the demo and the synthetic data set of the tests.

They stand above the three layers (``shards`` <- ``labeling`` <- ``pretrain``) and import them as
a user's program would; no library module imports from here. They live under ``pretrain/``
because the repository's top level is fixed and ``pretrain`` is the layer allowed to import the
other two.
"""
