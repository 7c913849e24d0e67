"""What a user can fix, as one family of exceptions.

Every command line of the project (``replk-shards``, ``replk-label``, ``pretrain.run``,
``pretrain.evaluate``, ``pretrain.export``) prints a :class:`ReplkError` as one line naming the
thing at fault and the fix, and exits 2. Anything else is a bug: its traceback is shown. So a
``KeyError`` from a typo in our code is never mistaken for a typo in the user's config.

Each class also derives from the builtin a caller would catch (``BadValue`` is a ``ValueError``,
``NotFound`` a ``FileNotFoundError``, ...), so code that handles "absent" or "invalid" keeps
working unchanged."""
from __future__ import annotations


class ReplkError(Exception):
    """Something the user can fix: a config value, an input, a file, an object store."""


class BadValue(ReplkError, ValueError):
    """A value the user gave (a config field, an option, a file's content) that cannot be used."""


class NotFound(ReplkError, FileNotFoundError):
    """A file, object, shard or store the user named that is not there."""


class NoAccess(ReplkError, PermissionError):
    """A file or object the user named that this process may not read or write."""


class UnknownName(ReplkError, KeyError):
    """A name (a task, a source) that is not among the known ones."""

    def __str__(self) -> str:   # KeyError's own str() quotes the message
        return str(self.args[0]) if self.args else ''


class DataFault(ReplkError, RuntimeError):
    """The data is damaged beyond what a run tolerates (too many undecodable samples)."""
