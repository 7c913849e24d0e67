"""WebDataset image shards: build, adopt, verify and stream them (local disk or s3://).

The public API, importable from here::

    from shards import ShardStream, ResumableLoader, SourceSpec, StreamConfig, TransformConfig, train_transform

Names load on first use (PEP 562), so ``import shards.storage`` stays light for the processes that
only need storage (a labeling worker, a CLI printing its help). The functions named like their
modules (``build``, ``adopt``, ``verify``) are not exported: once the module is imported the package
attribute is the module, so ``from shards import build`` would depend on import order; use
``from shards.build import build``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    'ShardStream': 'shards.loader', 'ResumableLoader': 'shards.loader',
    'SourceSpec': 'shards.stream', 'StreamConfig': 'shards.stream', 'resolve_source': 'shards.stream',
    'TransformConfig': 'shards.transforms', 'train_transform': 'shards.transforms', 'eval_transform': 'shards.transforms',
    'BuildOptions': 'shards.build', 'AdoptOptions': 'shards.adopt', 'ShardIndex': 'shards.index',
    'ReplkError': 'shards.common.errors',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
