"""The names of the data format, in one place: shard files, sample keys, tar members.

    shard file   {source}-{shard:06d}.tar        (its stem, {source}-{shard:06d}, names label parts)
    sample key   {source}/{shard:06d}/{index:06d}
    tar member   {key}.{ext}                      (grouped into samples as webdataset groups them)
"""
import re
from typing import Dict, NamedTuple, Optional, Tuple

from webdataset.tariterators import base_plus_ext

from .common.errors import BadValue

SHARD_SUFFIX = '.tar'


def shard_name(source: str, shard: int) -> str:
    return f'{source}-{shard:06d}{SHARD_SUFFIX}'


def shard_stem(name: str) -> str:
    """``in1k-000012.tar`` -> ``in1k-000012``."""
    return name[:-len(SHARD_SUFFIX)] if name.endswith(SHARD_SUFFIX) else name


def shard_source(name: str) -> str:
    """``in1k-000012.tar`` -> ``in1k`` (source names hold no "-")."""
    stem = shard_stem(name)
    if '-' not in stem:
        raise BadValue(f'shard {name!r} is not named {{source}}-{{number}}{SHARD_SUFFIX}')
    return stem.rsplit('-', 1)[0]


def sample_key(source: str, shard: int, index: int) -> str:
    return f'{source}/{shard:06d}/{index:06d}'


def shard_stem_of_key(key: str) -> str:
    """``in1k/000012/000003`` -> ``in1k-000012``: the shard (and label part) a sample belongs to."""
    parts = key.split('/')
    if len(parts) != 3:
        raise BadValue(f'key {key!r} is not of the form source/shard/index')
    return f'{parts[0]}-{parts[1]}'


def split_member(name: str) -> Tuple[str, str]:
    """``in1k/000001/000002.jpg`` -> (``in1k/000001/000002``, ``jpg``): webdataset's own split (the key
    is everything before the first dot of the base name), the extension lower-cased; a name
    without a dot is all key."""
    key, ext = base_plus_ext(name)
    return (name, '') if key is None else (key, ext.lower())


# --- adopted shards (tars other tools wrote; ``adopt.py``) -------------------------------------
# Readers address an adopted shard as its file's URL plus a fragment naming what the project calls
# it and where its human labels are: ``{file url}#{source}/{shard:06d};{task}={where};...``
# (``where``: ``cls``, the ``.cls`` member, or ``json:FIELD``). Keys then are
# ``{source}/{shard:06d}/{position:06d}`` whatever the tar's own keys (kept as the sample's id).
ADOPTED_MARK = '#'
LABEL_FIELDS = re.compile(r'cls|(?:name:)?json:[A-Za-z0-9_.-]+')   # name:json: the field holds a class name
INDEX_FIELD = '@index'   # where the index is, when not beside the tars (adopt --index-to): no task is named so
# What adopted_url appends: a folder named "exp#2" stays part of a path, not an adopted shard.
ADOPTED_FRAGMENT = re.compile(r'[^/#;=]+/\d{6}(;[^/#;=@]+=(?:cls|(?:name:)?json:[A-Za-z0-9_.-]+))*(;@index=[^#;=\s]+)?')


class Adopted(NamedTuple):
    file_url: str                   # the tar's own URL
    key_prefix: Optional[str]       # ``source/shard``; None for a shard this project built
    labels: Dict[str, str]          # task -> where its human label is
    index: Optional[str]            # the index's prefix when it is not the tars' folder


def adopted_url(file_url: str, source: str, shard: int, labels: Dict[str, str], index: Optional[str] = None) -> str:
    fields = ''.join(f';{task}={where}' for task, where in sorted(labels.items()))
    elsewhere = f';{INDEX_FIELD}={index}' if index else ''
    return f'{file_url}{ADOPTED_MARK}{source}/{shard:06d}{fields}{elsewhere}'


def split_adopted(url: str) -> Adopted:
    """What ``adopted_url`` put together; a URL without its fragment is a shard this project built."""
    file_url, mark, fragment = url.rpartition(ADOPTED_MARK)
    if not mark or not ADOPTED_FRAGMENT.fullmatch(fragment):
        return Adopted(url, None, {}, None)
    key_prefix, *fields = fragment.split(';')
    pairs = dict(field.split('=', 1) for field in fields)
    index = pairs.pop(INDEX_FIELD, None)
    return Adopted(file_url, key_prefix, pairs, index)
