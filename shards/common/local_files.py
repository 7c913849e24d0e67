"""Atomic writes to a local (or shared POSIX) disk, in one place: a reader sees the old file or the
whole new one, and once the write returns, a crash or power loss keeps the new one.

Durable means two fsyncs: the file's before the rename (else the rename can reach the disk before
the data, leaving a named but empty or torn file) and its folder's after it (else the rename itself
can be lost). A marker that lists files (a checkpoint's ``COMMITTED``) is only as good as the files
it lists, so every writer goes through here."""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from typing import BinaryIO, Iterator, Tuple

# Folders some filesystems cannot fsync (they answer EINVAL and the like): the rename is as durable as they make it.
_NO_FOLDER_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES)


def open_staged(path: str) -> Tuple[str, BinaryIO]:
    """A new file beside ``path``, to write and then rename onto it: an unpredictable name
    (``{path}.tmp-{pid}-{random}``, a pattern the orphan sweeps know), created exclusively and never
    through a link planted at its name, with the user's umask like any file they write."""
    staged = f'{path}.tmp-{os.getpid()}-{secrets.token_hex(8)}'
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0), 0o666)
    return staged, os.fdopen(fd, 'wb')


def fsync_folder(folder: str) -> None:
    """Make a rename or link in ``folder`` durable."""
    fd = os.open(folder or '.', os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_FSYNC:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str, hidden: bool = False) -> Iterator[BinaryIO]:
    """``with replacing(path) as f: f.write(...)``: the staged file becomes ``path`` only if the block
    finishes, fsynced before the rename and the folder fsynced after it. Any failure (a full disk
    included, raised as the OSError it is) removes the staged file. ``hidden`` stages it as a dot
    file, for folders whose other readers list every name in them."""
    folder, name = os.path.split(os.path.abspath(path))
    staged, f = open_staged(os.path.join(folder, f'.{name}' if hidden else name))
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):   # a staged name is never reused: remove it
            os.unlink(staged)
        raise
    fsync_folder(folder)
