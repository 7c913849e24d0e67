"""Local paths and ``s3://`` (and any fsspec URL) with retries, backoff and atomic writes.

S3 endpoints and credentials come from the standard AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), which botocore reads itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import random
import tempfile
import time
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import fsspec
from pydantic import Field, model_validator

from .common import local_files
from .common.config import checked, section
from .common.errors import BadValue, NoAccess, NotFound, ReplkError
from .common.local_files import open_staged  # noqa: F401  (kept importable here, where callers have always found it)

log = logging.getLogger(__name__)
T = TypeVar('T')

# Errors that no retry can fix: report them at once.
PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                    ValueError, KeyError, TypeError,
                    MemoryError)   # no retry frees memory; retrying an allocation can take the host down


# botocore's errors when no credentials can be found or used: no retry fixes them.
CREDENTIAL_ERRORS = ('NoCredentialsError', 'PartialCredentialsError', 'CredentialRetrievalError')


class StorageError(ReplkError, RuntimeError):
    """Storage stayed unreachable for the whole retry budget."""


class NoSpace(StorageError):
    """A local or shared disk is full: no retry helps, freeing space does."""


def missing_bucket(url: str) -> Optional[FileNotFoundError]:
    """For an S3 URL whose bucket does not exist, the error that says so (asked only after a read
    found nothing or a write was refused: servers answer both for a missing bucket too)."""
    if not url.startswith('s3://'):
        return None
    bucket = url[len('s3://'):].split('/', 1)[0]
    fs, _ = filesystem(url)
    try:
        fs.call_s3('head_bucket', Bucket=bucket)
        return None
    except FileNotFoundError:   # s3fs's translation of a 404 / NoSuchBucket: the one answer that proves it
        pass
    except Exception:  # noqa: BLE001  403, network: no evidence either way, keep the original error
        return None
    where = os.environ.get('AWS_ENDPOINT_URL') or 'AWS'
    return NotFound(f'{url}: the bucket {bucket!r} does not exist on {where}; create it or fix the URL')


@contextlib.contextmanager
def s3_write(url: str):
    """A refused S3 write into a bucket that does not exist says that, at once (servers answer it
    as 403 or, as AWS does, 404 NoSuchBucket)."""
    try:
        yield
    except (PermissionError, FileNotFoundError, StorageError) as exc:
        missing = missing_bucket(url)
        if missing is not None:
            raise missing from exc
        raise


@contextlib.contextmanager
def local_write(staged: Optional[str], url: str):
    """Writing ``staged`` on the way to ``url``: a failure removes the partial file (``None``: the
    writer inside removes its own), and a full disk is one error naming where (finished work is
    kept; a rerun writes only what is missing)."""
    try:
        yield
    except OSError as exc:
        if staged is not None:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        if exc.errno == errno.ENOSPC:
            raise NoSpace(f'no space left on the disk holding {url}: free space (or point the output elsewhere) '
                          'and rerun; what was finished is kept') from None
        raise


@section(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter until ``budget_s`` is spent (s3fs alone gives up in ~2 s)."""
    budget_s: float = Field(300.0, ge=0)
    """seconds to keep retrying a storage operation before giving up"""
    initial_backoff_s: float = Field(0.5, gt=0)
    """the first wait; each retry doubles it (with jitter)"""
    max_backoff_s: float = Field(30.0, gt=0)
    """the longest wait between two tries"""

    @model_validator(mode='after')
    def _backoff_grows(self):
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(f'max_backoff_s {self.max_backoff_s} is below initial_backoff_s {self.initial_backoff_s}')
        return self


DEFAULT_RETRY = RetryPolicy()


def add_retry_option(parser) -> None:
    """The ``--retry-budget`` option every storage-touching command takes (read back by ``retry_from``)."""
    parser.add_argument('--retry-budget', type=float, default=DEFAULT_RETRY.budget_s,
                        help='seconds to keep retrying storage')


def retry_from(args) -> RetryPolicy:
    return checked(RetryPolicy, '--retry-budget', budget_s=args.retry_budget)


def _naming(exc: Exception, what: str) -> Exception:
    """``exc`` naming the object it concerns; a missing or forbidden one as what it is: the user's to fix."""
    message = str(exc) if what in str(exc) else f'{what}: {exc}'
    for builtin, ours in ((FileNotFoundError, NotFound), (PermissionError, NoAccess)):
        if isinstance(exc, builtin) and not isinstance(exc, ReplkError):
            return ours(message)
    if message == str(exc):
        return exc
    try:
        return type(exc)(message)
    except Exception:  # an exception type with another constructor: keep it as it is
        return exc


class Backoff:
    """The one retry loop's state: exponential backoff with jitter within one budget.

    ``failed(exc)`` raises at once for what no retry fixes (named), raises ``StorageError`` when
    the budget is spent, and otherwise sleeps; ``remaining()`` is the policy for a nested call
    (reopening a stream) so that every attempt draws on the same budget."""

    def __init__(self, what: str, policy: RetryPolicy = DEFAULT_RETRY):
        self.what, self.policy = what, policy
        self.start, self.delay, self.attempt = time.monotonic(), policy.initial_backoff_s, 0

    def remaining(self) -> RetryPolicy:
        spent = time.monotonic() - self.start
        return dataclasses.replace(self.policy, budget_s=max(0.0, self.policy.budget_s - spent))

    def failed(self, exc: Exception) -> None:
        self.attempt += 1
        if isinstance(exc, StorageError):
            raise exc
        if isinstance(exc, PERMANENT_ERRORS):
            named = _naming(exc, self.what)  # "Access Denied" alone does not say which object
            if named is exc:
                raise exc
            raise named from exc
        if type(exc).__name__ in CREDENTIAL_ERRORS:
            raise StorageError(f'{self.what}: no usable credentials ({type(exc).__name__}: {exc}); set '
                               'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and '
                               'AWS_ENDPOINT_URL for a non-AWS server') from None
        elapsed = time.monotonic() - self.start
        if elapsed + self.delay > self.policy.budget_s:  # network, throttling, 5xx: worth another try
            raise StorageError(f'{self.what}: still failing after {self.attempt} attempts over {elapsed:.1f}s '
                               f'(retry budget {self.policy.budget_s:.0f}s): {type(exc).__name__}: {exc}') from exc
        log.warning('%s failed (%s: %s); retry %d in %.1fs', self.what, type(exc).__name__, exc, self.attempt,
                    self.delay)
        time.sleep(self.delay * (0.5 + random.random() / 2))
        self.delay = min(self.delay * 2, self.policy.max_backoff_s)


def with_retries(fn: Callable[[], T], what: str, policy: RetryPolicy = DEFAULT_RETRY) -> T:
    backoff = Backoff(what, policy)
    while True:
        try:
            return fn()
        except Exception as exc:
            backoff.failed(exc)


def resumable_items(url: str, items: Callable[[BinaryIO, int], Iterator[T]], policy: RetryPolicy = DEFAULT_RETRY,
                    fatal: Tuple[type, ...] = ()) -> Iterator[T]:
    """``items(stream, skip)`` of ``url``, reopened after a dropped connection: the new stream
    is asked to skip what was already delivered. One budget for the whole read; exceptions in
    ``fatal`` (e.g. a truncated file) propagate unretried."""
    backoff, delivered = Backoff(f'reading {url}', policy), 0
    while True:
        try:
            with open_read(url, backoff.remaining()) as stream:
                for item in items(stream, delivered):
                    yield item
                    delivered += 1
            return
        except fatal:
            raise
        except Exception as exc:
            backoff.failed(exc)


def _storage_options(url: str) -> dict:
    if url.startswith('s3://'):
        # Quick attempts inside botocore (s3fs adds ~2 s of its own); the budget above does the waiting.
        # No listings cache: other processes (build and labeling jobs) write under the same
        # prefixes, and s3fs answers "not found" from a stale cached listing.
        return dict(config_kwargs=dict(connect_timeout=5, read_timeout=60,
                                                  retries={'max_attempts': 1}), use_listings_cache=False)
    return {}


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a local path or URL."""
    return fsspec.core.url_to_fs(url, **_storage_options(url))


def join(prefix: str, name: str) -> str:
    return prefix.rstrip('/') + '/' + name


def is_local(url: str) -> bool:
    return '://' not in url or url.startswith('file://')


def exists(url: str, policy: RetryPolicy = DEFAULT_RETRY) -> bool:
    fs, path = filesystem(url)
    return with_retries(lambda: fs.exists(path), f'checking {url}', policy)


def read_bytes(url: str, policy: RetryPolicy = DEFAULT_RETRY) -> bytes:
    fs, path = filesystem(url)
    return with_retries(lambda: fs.cat_file(path), f'reading {url}', policy)


def read_many(urls: List[str], policy: RetryPolicy = DEFAULT_RETRY, batch: int = 500) -> List[bytes]:
    """The bytes of many small objects of one filesystem, in order: fsspec's batched ``cat``
    (concurrent requests on S3, one round of latency per batch instead of one per object), each
    batch retried as a whole."""
    if not urls:
        return []
    fs, _ = filesystem(urls[0])
    paths = [fs._strip_protocol(u) for u in urls]  # one filesystem, not one url_to_fs per object
    out: List[bytes] = []
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        got = with_retries(lambda: fs.cat(chunk, on_error='raise'), f'reading {len(chunk)} objects under '
                           f'{urls[start].rsplit("/", 1)[0]}', policy)
        out += [got[p] for p in chunk]
    return out


def open_read(url: str, policy: RetryPolicy = DEFAULT_RETRY):
    """A binary file object for streaming reads (opening is retried; reads are not)."""
    fs, path = filesystem(url)
    return with_retries(lambda: fs.open(path, 'rb', block_size=8 << 20), f'opening {url}', policy)


def write_bytes_atomic(url: str, data: bytes, policy: RetryPolicy = DEFAULT_RETRY) -> None:
    """Readers see the old object or the whole new one, never a part."""
    if is_local(url):
        with _local_destination(url) as dst:
            dst.write(data)
        return
    with tempfile.NamedTemporaryFile(delete=False) as tmp, local_write(tmp.name, tmp.name):
        tmp.write(data)
        tmp.flush()   # a full disk shows here, inside local_write, not when the file closes
    try:
        put_file_atomic(tmp.name, url, policy)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


@contextlib.contextmanager
def _local_destination(url: str) -> Iterator[BinaryIO]:
    """A file that becomes the local ``url`` whole and durably (``local_files.replacing``) once the
    block finishes; a full disk is one error naming ``url``."""
    path = filesystem(url)[1]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with local_write(None, url), local_files.replacing(path) as dst:
        yield dst


def put_file_atomic(local_path: str, url: str, policy: RetryPolicy = DEFAULT_RETRY) -> None:
    """Move a finished local file to ``url``: rename locally, one whole PUT on object stores."""
    fs, path = filesystem(url)
    if is_local(url):
        with _local_destination(url) as dst, open(local_path, 'rb') as src:
            while chunk := src.read(16 << 20):
                dst.write(chunk)
    else:
        # An S3 object (single or multipart upload) becomes visible only once complete.
        with s3_write(url):
            with_retries(lambda: fs.put_file(local_path, path), f'uploading {url}', policy)


def create_exclusive(url: str, data: bytes, policy: RetryPolicy = DEFAULT_RETRY) -> bool:
    """Write ``url`` only if nothing is there; True if this call created it, False if it existed.

    First writer wins: on local (and shared POSIX) disks by a hard link, which fails if the name
    exists; on S3 by a conditional PUT (``If-None-Match: *``, AWS since 2024, SeaweedFS). A retried
    PUT that had in fact succeeded answers False: callers compare the content they read back."""
    fs, path = filesystem(url)
    if is_local(url):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        staged, f = open_staged(path)
        with local_write(staged, url), f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(staged, path)
            local_files.fsync_folder(os.path.dirname(os.path.abspath(path)))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(staged)
    if not url.startswith('s3://'):
        # No first-writer-wins primitive we can rely on elsewhere: refuse rather than race silently.
        raise BadValue(f'{url}: records that must be created once (a label store\'s task and teacher) need a local '
                         'or shared disk or s3://; other object stores lack a conditional create here')

    def put() -> bool:
        try:
            fs.pipe_file(path, data, IfNoneMatch='*')
            return True
        except OSError as exc:
            if 'pre-condition' in str(exc).lower() or 'PreconditionFailed' in str(exc) or '412' in str(exc):
                return False
            raise
    with s3_write(url):
        return with_retries(put, f'creating {url}', policy)


def remove(url: str, policy: RetryPolicy = DEFAULT_RETRY) -> None:
    """Delete one object; one that is already gone (another process removed it) is not an error."""
    fs, path = filesystem(url)

    def rm():
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass
    with_retries(rm, f'removing {url}', policy)


def list_names(prefix: str, policy: RetryPolicy = DEFAULT_RETRY) -> list[str]:
    fs, path = filesystem(prefix)
    if not with_retries(lambda: fs.exists(path), f'listing {prefix}', policy):
        return []
    # refresh: s3fs would otherwise answer from its listing cache, blind to other processes' writes.
    return sorted(os.path.basename(p.rstrip('/'))
                  for p in with_retries(lambda: fs.ls(path, detail=False, refresh=True), f'listing {prefix}', policy))


def list_prefixed(folder: str, name_prefix: str, policy: RetryPolicy = DEFAULT_RETRY) -> list[str]:
    """Names in ``folder`` that start with ``name_prefix``: one prefix-limited listing on S3, not
    the whole folder (a label store's commit folder holds a record per shard)."""
    import glob as globmod
    fs, path = filesystem(folder)
    pattern = f'{path.rstrip("/")}/{globmod.escape(name_prefix)}*'
    if not is_local(folder):
        fs.invalidate_cache(path)   # other processes' writes: never answer from s3fs's listing cache
    found = with_retries(lambda: fs.glob(pattern), f'listing {folder}/{name_prefix}*', policy)
    return sorted(os.path.basename(p.rstrip('/')) for p in found)


def list_details(prefix: str, policy: RetryPolicy = DEFAULT_RETRY) -> Dict[str, tuple]:
    """name -> (size, version) of the objects under ``prefix`` (version: ETag on S3, mtime on disk),
    in one listing: enough to tell whether a cached copy of them is current."""
    fs, path = filesystem(prefix)
    try:
        infos = with_retries(lambda: fs.ls(path, detail=True, refresh=True), f'listing {prefix}', policy)
    except FileNotFoundError:
        return {}
    return {os.path.basename(i['name'].rstrip('/')): (i.get('size'), i.get('ETag') or i.get('mtime')
                                                      or str(i.get('LastModified'))) for i in infos}


def worker_start_method(urls) -> Optional[str]:
    """The multiprocessing start method for DataLoader workers reading ``urls``.

    With data on an object store the parent keeps async HTTP sessions (s3fs/aiohttp); a
    forked worker inherits them, and the parent's next request can then hang (seen with
    SeaweedFS: a labeling job's parent writing parts while its workers read shards).
    Workers from a fork server start clean; local data keeps the cheaper plain fork.
    """
    return 'forkserver' if any(not is_local(u) for u in urls) else None


def register_webdataset_opener() -> None:
    """Let plain ``webdataset`` open ``s3://`` URLs through fsspec (webdataset 1.0.2 has none).

    Call again in DataLoader workers started with ``spawn`` (fork workers inherit it).
    """
    import webdataset

    webdataset.gopen_schemes['s3'] = lambda url, mode='rb', bufsize=8192, **kw: open_read(url)
