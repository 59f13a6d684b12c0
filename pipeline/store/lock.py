"""One writer per database: an exclusive, non-blocking lock taken by ``index``, ``prune`` and ``maintain``.

Why: the store's exactly-once protocol assumes a single committer. A second run on the same database would
``recover()`` (delete) the first run's ``started`` videos and race it on every commit, so a scheduled run that
finds the lock taken must leave without touching anything. It exits with ``EXIT_LOCKED`` (75, ``EX_TEMPFAIL``
from sysexits.h: "try again later"), which cron wrappers and schedulers can tell apart from a failure.

Local (or shared-filesystem) databases: ``fcntl.flock`` on ``<db>/.vidsearch.lock``. The kernel drops the lock
when the holder exits, however it exits (SIGKILL, OOM, node loss on NFSv4 after the lease expires), so a crash
never leaves a stale lock behind. The file also records who holds it, for the message the second run prints.

``s3://`` databases: a lease object in the bucket taken with S3's conditional writes (``pipeline/store/lease.py``),
so runs started from different machines exclude each other; a killed holder's lease expires (60 s).

Other object stores (``gs://``, ``az://``...): the lock file lives on the driver's local disk (``db.lock_dir``,
default ``~/.cache/vidsearch/locks``) keyed by the URI. That excludes overlapping runs launched on the same
machine (cron on one host, ``ray job submit`` drivers, which all run on the head node), not runs started from
different machines: schedule one launcher per database (Kubernetes CronJob ``concurrencyPolicy: Forbid``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.errors import LockBusy

log = logging.getLogger(__name__)

LOCK_NAME = ".vidsearch.lock"

_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth): re-entrant within one process
_leases: dict[str, Any] = {}  # lock path -> the S3Lease held for an s3:// database
_guard = threading.Lock()


def is_object_store(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def lock_path(db: str, lock_dir: str | None = None) -> Path:
    """Where the lock for database ``db`` lives (see the module docstring)."""
    if not is_object_store(db):
        return Path(db.removeprefix("file://")).expanduser().resolve() / LOCK_NAME
    base = Path(lock_dir or Path.home() / ".cache" / "vidsearch" / "locks").expanduser()
    return base / f"{hashlib.sha256(db.encode()).hexdigest()[:24]}.lock"


def _read_holder(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def check_held(db: str, lock_dir: str | None = None) -> None:
    """Raise ``LockLost`` when this process held the lease of ``db`` (an ``s3://`` database) and lost it; called
    before each commit. A local lock cannot be lost while the process lives."""
    lease = _leases.get(str(lock_path(db, lock_dir)))
    if lease is not None:
        lease.check()


class DatabaseLock:
    """``with DatabaseLock(db, "index"):`` holds the database's write lock or raises ``LockBusy`` at once."""

    def __init__(self, db: str, command: str = "index", lock_dir: str | None = None) -> None:
        self.db = db
        self.command = command
        self.path = lock_path(db, lock_dir)

    def acquire(self) -> None:
        key = str(self.path)
        with _guard:
            if key in _held:  # this process already holds it (the CLI took it before the runner did)
                fd, depth = _held[key]
                _held[key] = (fd, depth + 1)
                return
            if self.db.startswith("s3://"):
                self._acquire_lease(key)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if is_object_store(self.db):
                log.warning(
                    "database %s is in an object store: its lock %s only excludes runs on this machine; "
                    "launch runs for one database from one place",
                    self.db,
                    self.path,
                )
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockBusy(self.db, key, _read_holder(self.path)) from None
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": self.command,
                "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "argv": sys.argv,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            _held[key] = (fd, 1)

    def _acquire_lease(self, key: str) -> None:
        from pipeline.store.lease import S3Lease

        lease = S3Lease(self.db, self.command)
        holder = lease.acquire()
        if holder is not None:
            raise LockBusy(self.db, lease.path, holder)
        _leases[key] = lease
        _held[key] = (-1, 1)

    def release(self) -> None:
        key = str(self.path)
        with _guard:
            if key not in _held:
                return
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
                return
            del _held[key]
            if key in _leases:
                _leases.pop(key).release()
                return
            os.ftruncate(fd, 0)  # the file stays (deleting it would race a waiting locker); only the lock goes
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
