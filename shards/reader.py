"""The one way to read a shard's samples (training stream, evaluation, labeling jobs, human-label
import, validation): webdataset's own tar iteration, reopened after a dropped connection.

webdataset's ``group_by_keys`` groups members by key exactly as our format needs (``{key}.{ext}``,
extension lower-cased); what we add is what a 73M-image run needs from a network read: reopening
mid-shard within the storage retry budget (``storage.resumable_items``), an exact sample count even
from a truncated shard, and members judged by their header before any byte is read
(:func:`tar_members`): a shard from outside is data.
"""
import functools
import json
import logging
import re
import tarfile
from typing import Dict, Iterator, Optional

from webdataset.tariterators import group_by_keys

from . import storage
from .common.errors import NotFound
from .index import BUILD_NAME, source_folder
from .naming import split_adopted, split_member

MAX_MEMBER_BYTES = 64 * 2 ** 20   # a member larger than this is a corrupt sample (builds refuse to write one)
REFUSED = '__refused__'                 # the part that marks a sample refused by its headers, holding the reason
KEY_SHAPE = re.compile(r'[^/]+/\d+/\d+')   # source/shard/index, as naming.sample_key writes it
META = re.compile(r'__[^/]*__($|/)')        # webdataset's metadata members, skipped as it skips them

log = logging.getLogger(__name__)
# A shard cut short: no reopening brings the missing bytes back.
TRUNCATED = (tarfile.ReadError, EOFError)


def _skip_bad_member(exc: Exception) -> bool:
    log.warning('skipping a tar member: %s', exc)  # e.g. a member name twice in one sample
    return True


def refusal(info: tarfile.TarInfo, key: str, max_bytes: int, own_keys: bool = True) -> Optional[str]:
    """Why a member is not read (webdataset's reader would allocate whatever size a header
    declares: a 10 KB sparse shard declaring 6 GB), or None. ``own_keys``: a shard this project
    built, whose keys must be ``source/shard/index`` (an adopted one's are renamed on reading)."""
    if own_keys and not KEY_SHAPE.fullmatch(key):
        return f'key {key!r} is not of the form source/shard/index (not a shard this project built)'
    if not info.isreg():
        return f'member {info.name!r} is not a regular file'
    if info.issparse():
        return f'member {info.name!r} is a sparse file'
    if info.size > max_bytes:
        return f'member {info.name!r} declares {info.size} bytes, over the limit of {max_bytes}'
    return None


def tar_members(stream, url: str = '', max_bytes: int = MAX_MEMBER_BYTES, own_keys: bool = True) -> Iterator[dict]:
    """The members of a tar stream as webdataset's reader yields them (``{'fname', 'data'}``), each
    judged by its header first: a refused member's data is never read (the tar stream skips it)
    and it becomes ``{key}.__refused__`` holding the reason, so its sample is counted as corrupt."""
    with tarfile.open(fileobj=stream, mode='r|*') as tar:
        for info in tar:
            tar.members = []   # stream mode keeps every header otherwise
            if META.match(info.name) or info.isdir():
                continue
            key = split_member(info.name)[0]
            why = refusal(info, key, max_bytes, own_keys)
            data = why if why else tar.extractfile(info).read()
            yield dict(fname=f'{key}.{REFUSED}' if why else info.name, data=data, __url__=url)


def tar_samples(stream, url: str = '', max_member_bytes: int = MAX_MEMBER_BYTES,
                own_keys: bool = True) -> Iterator[dict]:
    """Samples of a tar stream, ``{'__key__': key, ext: bytes, ...}``, grouped by webdataset."""
    return group_by_keys(tar_members(stream, url, max_member_bytes, own_keys), handler=_skip_bad_member)


def label_value(sample: dict, where: str, foreign_meta: Optional[dict]):
    """What an adopted sample's ``.cls`` member or JSON field holds (None when absent)."""
    if where == 'cls':
        raw = sample.get('cls')
        return raw.decode('utf-8', 'replace').strip() if isinstance(raw, bytes) else raw
    value = foreign_meta
    for step in where.rsplit('json:', 1)[1].split('.'):
        value = value.get(step) if isinstance(value, dict) else None
    return value


def human_label(sample: dict, where: str, foreign_meta: Optional[dict],
                class_index: Optional[Dict[str, int]] = None) -> Optional[int]:
    """The class an adopted sample's ``.cls`` member or JSON field holds, or None (absent, not an
    integer, or negative: tools write -1 for "no label"). A ``name:json:`` field holds a class
    name, looked up in ``class_index`` (the tasks file's names that ``adopt`` recorded)."""
    value = label_value(sample, where, foreign_meta)
    if where.startswith('name:'):
        return (class_index or {}).get(value) if isinstance(value, str) else None
    try:
        number = int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and number >= 0 else None   # -1 and the like: "no label"


@functools.lru_cache(maxsize=64)
def _recorded_classes(build_json_url: str, retry: storage.RetryPolicy) -> Dict[str, Dict[str, int]]:
    plan = json.loads(storage.read_bytes(build_json_url, retry))
    return {task: {name: i for i, name in enumerate(names)} for task, names in (plan.get('classes') or {}).items()}


def class_indices(index_prefix: str, key_prefix: str, labels: Dict[str, str],
                  retry: storage.RetryPolicy) -> Dict[str, Dict[str, int]]:
    """{task: {class name: index}} for the ``name:`` label fields of an adopted shard, as ``adopt``
    recorded them in the source's index under ``index_prefix`` (read once per process and source)."""
    if not any(where.startswith('name:') for where in labels.values()):
        return {}
    return _recorded_classes(f'{source_folder(index_prefix, key_prefix.split("/")[0])}/{BUILD_NAME}', retry)


def foreign_json(sample: dict) -> Optional[dict]:
    """An adopted sample's own ``.json`` member as a dict, or None (absent, unreadable, not an object)."""
    try:
        meta = json.loads(sample['json']) if 'json' in sample else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def as_project_sample(sample: dict, key_prefix: str, position: int, labels: Dict[str, str],
                      classes: Optional[Dict[str, Dict[str, int]]] = None) -> dict:
    """An adopted tar's sample in the project's terms: key ``{source}/{shard}/{position}``, metadata
    ``{"source", "id": the tar's own key, "labels": {task: class}}`` from the label fields
    ``adopt`` recorded; the tar's own JSON is kept as ``foreign_json``."""
    out = {k: v for k, v in sample.items() if k != 'json'}
    foreign_meta = foreign_json(sample)
    if 'json' in sample:
        out['foreign_json'] = sample['json']
    found = {task: human_label(sample, where, foreign_meta, (classes or {}).get(task)) for task, where in labels.items()}
    meta = dict(source=key_prefix.split('/')[0], id=sample['__key__'],
                labels={task: value for task, value in found.items() if value is not None})
    out['json'] = json.dumps(meta).encode()
    out['__key__'] = f'{key_prefix}/{position:06d}'
    return out


def iter_shard_samples(url: str, first: int = 0, count: Optional[int] = None,
                       retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
                       max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict]:
    """Samples ``first .. first+count`` of a shard (``count=None``: to its end).

    A dropped connection reopens the shard and skips what was delivered. A shard that ends early
    (truncated) yields ``{'__key__': 'url#pos', '__missing__': True}`` for each missing sample
    when ``count`` is given, so every reader still gets its exact count and can count the fault."""
    file_url, key_prefix, labels, index = split_adopted(url)
    classes = class_indices(index or file_url.rsplit('/', 1)[0], key_prefix, labels, retry) if key_prefix else {}

    def items(stream, delivered: int):
        for pos, sample in enumerate(tar_samples(stream, url, max_member_bytes, own_keys=key_prefix is None)):
            if pos >= first + delivered:
                yield sample if key_prefix is None else as_project_sample(sample, key_prefix, pos, labels, classes)

    delivered = 0
    try:
        for sample in storage.resumable_items(file_url, items, retry, fatal=TRUNCATED):
            yield sample
            delivered += 1
            if delivered == count:
                return
        if count is not None:
            log.warning('shard %s: ended after %d of %d samples', url, delivered, count)
    except FileNotFoundError:
        raise NotFound(f'shard {file_url} is listed in the index but missing from storage') from None
    except TRUNCATED as exc:
        log.warning('shard %s: truncated after %d samples (%s)', url, delivered, exc)
    for pos in range(first + delivered, first + count if count is not None else 0):
        yield {'__key__': f'{url}#{pos}', '__missing__': True}


def member_keys(url: str, retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> set:
    """The sample keys of a shard, from its tar headers (member data is skipped, not decoded); an
    adopted shard's as its readers name them (``source/shard/position``), from the reader itself:
    a tar another tool wrote can group its members in ways only webdataset's grouping counts right."""
    if split_adopted(url)[1] is not None:
        return {sample['__key__'] for sample in iter_shard_samples(url, retry=retry)}

    def keys(stream, _delivered: int):
        with tarfile.open(fileobj=stream, mode='r|') as tar:
            for info in tar:
                if info.isreg():
                    yield split_member(info.name)[0]
                tar.members = []  # stream mode keeps every header otherwise

    return set(storage.resumable_items(url, keys, retry, fatal=TRUNCATED))
