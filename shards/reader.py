"""The one way to read a shard's samples (training stream, evaluation, labeling jobs, human-label
import, validation): webdataset's own tar iteration, reopened after a dropped connection.

webdataset's ``tar_file_iterator`` and ``group_by_keys`` group members by key exactly as our format
needs (``{key}.{ext}``, extension lower-cased); what we add is what a 73M-image run needs from a
network read: reopening mid-shard within the storage retry budget (``storage.resumable_items``)
and an exact sample count even from a truncated shard.
"""
import logging
import tarfile
from typing import Iterator, Optional

from webdataset.tariterators import group_by_keys, tar_file_iterator

from . import storage
from .naming import split_member

log = logging.getLogger(__name__)
# A shard cut short: no reopening brings the missing bytes back.
TRUNCATED = (tarfile.ReadError, EOFError)


def _skip_bad_member(exc: Exception) -> bool:
    log.warning('skipping a tar member: %s', exc)  # e.g. a member name twice in one sample
    return True


def tar_samples(stream, url: str = '') -> Iterator[dict]:
    """Samples of a tar stream, ``{'__key__': key, ext: bytes, ...}``, grouped by webdataset."""
    files = (dict(f, __url__=url) for f in tar_file_iterator(stream))
    return group_by_keys(files, handler=_skip_bad_member)


def iter_shard_samples(url: str, first: int = 0, count: Optional[int] = None,
                       retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> Iterator[dict]:
    """Samples ``first .. first+count`` of a shard (``count=None``: to its end).

    A dropped connection reopens the shard and skips what was delivered. A shard that ends early
    (truncated) yields ``{'__key__': 'url#pos', '__missing__': True}`` for each missing sample
    when ``count`` is given, so every reader still gets its exact count and can count the fault."""
    def items(stream, delivered: int):
        for pos, sample in enumerate(tar_samples(stream, url)):
            if pos >= first + delivered:
                yield sample

    delivered = 0
    try:
        for sample in storage.resumable_items(url, items, retry, fatal=TRUNCATED):
            yield sample
            delivered += 1
            if delivered == count:
                return
        if count is not None:
            log.warning('shard %s: ended after %d of %d samples', url, delivered, count)
    except FileNotFoundError:
        raise FileNotFoundError(f'shard {url} is listed in the index but missing from storage') from None
    except TRUNCATED as exc:
        log.warning('shard %s: truncated after %d samples (%s)', url, delivered, exc)
    for pos in range(first + delivered, first + count if count is not None else 0):
        yield {'__key__': f'{url}#{pos}', '__missing__': True}


def member_keys(url: str, retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> set:
    """The sample keys of a shard, from its tar headers (member data is skipped, not decoded)."""
    def keys(stream, _delivered: int):
        with tarfile.open(fileobj=stream, mode='r|') as tar:
            for info in tar:
                if info.isreg():
                    yield split_member(info.name)[0]
                tar.members = []  # stream mode keeps every header otherwise

    return set(storage.resumable_items(url, keys, retry, fatal=TRUNCATED))
