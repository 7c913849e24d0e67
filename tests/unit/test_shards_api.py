"""The shards package exports its public API: what the README's examples import."""
import importlib
import pkgutil

import shards


def test_every_exported_name_is_the_object_its_module_defines():
    for name in shards.__all__:
        module = importlib.import_module(shards._EXPORTS[name])
        assert getattr(shards, name) is getattr(module, name)
    from shards import ResumableLoader, ShardStream, SourceSpec, StreamConfig, TransformConfig, train_transform  # noqa: F401


def test_no_export_shares_its_name_with_a_submodule_which_would_shadow_it_after_an_import():
    submodules = {m.name for m in pkgutil.iter_modules(shards.__path__)}
    assert not submodules & set(shards.__all__)
