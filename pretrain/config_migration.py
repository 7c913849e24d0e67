"""Old run configs keep loading: a document of an older layout is upgraded to this one before it
is validated (a user's config file, a run folder's saved config.json, a checkpoint's record of its
config, an export's), and an override spelled the old way (``--set data.image_size=320``) is
moved to the new place, each said once in the log.

Versions: 1 (no ``version`` key): the ``data`` section held the augmentation and stream settings
flat; 2: ``data.transform`` and ``data.stream`` are the shards layer's own configs.
"""
from __future__ import annotations

import copy
import logging

from shards.common.config import ConfigError

log = logging.getLogger('pretrain')

CONFIG_VERSION = 2

# version 1 path -> version 2 path
RENAMED_IN_2 = {
    'data.image_size': 'data.transform.image_size', 'data.mean': 'data.transform.mean',
    'data.std': 'data.transform.std', 'data.auto_augment': 'data.transform.auto_augment',
    'data.re_prob': 'data.transform.re_prob', 'data.interpolation': 'data.transform.interpolation',
    'data.crop_scale': 'data.transform.scale', 'data.hflip': 'data.transform.hflip',
    'data.val_crop_pct': 'data.transform.crop_pct',
    'data.shuffle_buffer': 'data.stream.shuffle_buffer', 'data.few_shards': 'data.stream.few_shards',
    'data.max_corrupt_fraction': 'data.stream.max_corrupt_fraction', 'data.exclude': 'data.stream.exclude',
}


# where a key of no version went, for the error that meets it
NOT_HERE = {'data.stream.seed': 'train.seed', 'data.stream.batch_size': 'train.micro_batch'}
MOVED = dict(RENAMED_IN_2, **NOT_HERE)


def upgrade(doc: dict, where: str) -> dict:
    """``doc`` in this version's layout (a copy when it was older); a newer one is refused."""
    if not isinstance(doc, dict):
        raise ConfigError(f'{where}: a run config is a JSON object, got {type(doc).__name__}')
    version = doc.get('version', 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f'{where}: version={version!r}: expected a layout version (1 or {CONFIG_VERSION})')
    if version > CONFIG_VERSION:
        raise ConfigError(f'{where}: config version {version} was written by a newer replk-pretrain (this one reads '
                          f'up to {CONFIG_VERSION}): upgrade replk-pretrain')
    if version == CONFIG_VERSION:
        return doc
    doc = copy.deepcopy(doc)
    moved = [old for old in RENAMED_IN_2 if _move(doc, old, RENAMED_IN_2[old], where)]
    if moved:
        log.info('%s: version 1 config read as version %d (%s)', where, CONFIG_VERSION,
                 ', '.join(f'{old} -> {RENAMED_IN_2[old]}' for old in moved))
    doc['version'] = CONFIG_VERSION
    return doc


def current_path(path: str) -> str:
    """An override's dotted path in this version's layout."""
    new = RENAMED_IN_2.get(path)
    if new is None:
        return path
    log.info('--set %s: now %s (config version %d)', path, new, CONFIG_VERSION)
    return new


def _move(doc: dict, old: str, new: str, where: str) -> bool:
    *old_parents, old_key = old.split('.')
    source = _section(doc, old_parents)
    if not isinstance(source, dict) or old_key not in source:
        return False
    *new_parents, new_key = new.split('.')
    target = doc
    for key in new_parents:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            return False   # not a section: validation names it
    if new_key in target:
        raise ConfigError(f'{where}: {old} (version 1) and {new} both given: keep {new}')
    target[new_key] = source.pop(old_key)
    return True


def _section(doc: dict, keys: list):
    node = doc
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node
