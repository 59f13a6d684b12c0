"""The database lock of an ``s3://`` database: a lease object in the bucket, taken and kept with S3's
conditional writes, so it excludes runs started from any machine.

- take: ``PutObject(If-None-Match: *)`` of ``<db>/_vidsearch.lock`` (holder, expiry); a 412 means it exists;
- keep: a thread re-writes it every ``lease_s / 3`` with ``If-Match: <etag it wrote>``; a 412 there means the
  lease was lost (the run went silent longer than the lease and another run took over). A lease not renewed
  for ``lease_s`` (the store unreachable meanwhile) counts as lost too: another run may have taken it.
  ``check()`` raises ``LockLost`` once it is lost; the runner calls it before every commit, so a writer that lost
  its lock stops before writing anything more;
- release: ``DeleteObject(If-Match: <etag>)``;
- a holder that died (SIGKILL, node loss) stops renewing: once its expiry has passed (at once when it ran
  on this machine and its process is gone), the next run deletes the object with ``If-Match`` on the etag it
  read (two runs racing for a stale lease: one delete wins) and takes it.
Endpoint and credentials come from the standard variables (``pipeline/fragments.storage_options``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

LEASE_NAME = "_vidsearch.lock"
#: How long a lease lasts without renewal (renewed every third of it).
LEASE_S = 60.0


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _client() -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url(), region_name=region())


def _status(exc: Exception) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether the holder ran on this machine and its process is gone (killed): no need to wait for its lease
    to expire. A holder on another machine is only known dead by its expiry."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


class S3Lease:
    """``acquire()`` returns None when taken, else the current holder (a dict); ``release()`` gives it back."""

    def __init__(self, db: str, command: str, lease_s: float | None = None) -> None:
        url = urlparse(db)
        self.bucket = url.netloc
        self.key = f"{url.path.strip('/')}/{LEASE_NAME}".lstrip("/")
        self.path = f"s3://{self.bucket}/{self.key}"
        self.command = command
        self.lease_s = LEASE_S if lease_s is None else lease_s
        self.s3 = _client()
        self.etag: str | None = None
        self.renewed = 0.0  # time.monotonic() of the last write of the lease that succeeded
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "expires": time.time() + self.lease_s,
            "argv": sys.argv,
        }
        return json.dumps(holder).encode()

    def acquire(self) -> dict[str, Any] | None:
        for _ in range(3):
            try:
                t = time.monotonic()
                self.etag = self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")[
                    "ETag"
                ]
                self.renewed = t
            except Exception as exc:  # noqa: BLE001 - botocore's ClientError; 412 = someone holds it
                if _status(exc) not in (409, 412):
                    raise
            else:
                self._thread = threading.Thread(target=self._renew, name="vidsearch-lease", daemon=True)
                self._thread.start()
                return None
            holder, etag = self._read()
            if holder is None:
                continue  # released meanwhile: try again
            if float(holder.get("expires", 0)) > time.time() and not _dead_here(holder):
                return holder
            log.warning("taking over the expired lock %s of %s", self.path, holder)
            try:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
            except Exception as exc:  # noqa: BLE001 - another run took or renewed it first
                if _status(exc) != 412:
                    raise
        holder, _ = self._read()
        return holder or {}

    def _read(self) -> tuple[dict[str, Any] | None, str]:
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return None, ""
            raise
        try:
            holder = json.loads(obj["Body"].read() or b"{}")
        except ValueError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), obj["ETag"]

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                t = time.monotonic()
                self.etag = self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=self.etag)[
                    "ETag"
                ]
                self.renewed = t
            except Exception as exc:  # noqa: BLE001
                if _status(exc) == 412:
                    log.error("lost the database lock %s: another run took it over", self.path)
                    self.lost.set()
                    return
                log.warning("could not renew the database lock %s: %s", self.path, exc)
                if time.monotonic() - self.renewed >= self.lease_s:  # expired: another run may hold it now
                    log.error("lost the database lock %s: not renewed for %.0f s", self.path, self.lease_s)
                    self.lost.set()
                    return

    def check(self) -> None:
        """Raise ``LockLost`` when the lease is lost, or has gone unrenewed for its whole length."""
        from pipeline.errors import LockLost

        expired = self.etag is not None and time.monotonic() - self.renewed >= self.lease_s
        if self.lost.is_set() or expired:
            raise LockLost(
                f"lost the database lock {self.path} (another run took it over, or it was not renewed for "
                f"{self.lease_s:.0f} s); stopped before the next commit: run again once the other run is done"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.etag and not self.lost.is_set():
            try:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself
                log.warning("could not release the database lock %s: %s", self.path, exc)
        self.etag = None
