"""Every error a user may meet, and the exit code each one maps to. A leaf: it imports nothing heavy, so the
CLI can map an exception to an exit code without loading LanceDB, Ray or torch.

Exit codes (documented in the README):

====  =========================================================================================================
0     done
1     a storage failure (disk full, permissions, a vanished database folder)
2     a request that cannot be served as given: a config error, a missing checkpoint, a bad search, a database
      that is missing, not a vidsearch database, too old for the request, read-only for a command that writes,
      or behind an object-store endpoint that cannot be reached
3     ``index``: some videos failed (each has a failure record; ``status`` lists them), the others were indexed
4     ``index``: nothing could be indexed: every video it tried failed or ended ``Incomplete``
5     the run lost the database lock of an ``s3://`` database (silent longer than the lease, another run took it
      over) and stopped before its next commit
75    another run holds the database lock (``EX_TEMPFAIL``: a scheduled run leaves without touching anything)
====  =========================================================================================================
"""

from __future__ import annotations

from operators.base import MissingCheckpointError

EXIT_OK = 0
EXIT_STORAGE = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_NOTHING_INDEXED = 4
EXIT_LOCK_LOST = 5
EXIT_LOCKED = 75


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and key."""


class SearchError(ValueError):
    """A search request that cannot be served; the message is safe to show to the caller."""


class AskError(SearchError):
    """A question that cannot be answered as asked; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DatabaseUnusable(ValueError):
    """A database the command cannot use as given (missing, empty, too old, read-only, unreachable); the message
    names it and says what to do."""


class LockLost(RuntimeError):
    """The run lost its database lock (another run took it over): it stopped before its next commit."""


class LockBusy(RuntimeError):
    """Another process holds the database lock; the message names the holder."""

    def __init__(self, db: str, path: str, holder: dict[str, object]) -> None:
        who = (
            f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, {holder.get('command', '?')} "
            f"since {holder.get('since', '?')}"
            if holder
            else "holder unknown"
        )
        super().__init__(f"another vidsearch run is writing to {db} ({who}); lock file {path}")
        self.db, self.path, self.holder = db, path, holder


USAGE_ERRORS = (ConfigError, SearchError, MissingCheckpointError, DatabaseUnusable)


def exit_code(exc: BaseException) -> int | None:
    """The exit code for a user-facing error; None for anything else (a bug: its traceback is the report)."""
    if isinstance(exc, LockBusy):
        return EXIT_LOCKED
    if isinstance(exc, LockLost):
        return EXIT_LOCK_LOST
    if isinstance(exc, USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(exc, OSError):
        return EXIT_STORAGE
    return None
