"""Fault injection for tests, loaded only by processes a test starts with this folder on PYTHONPATH
(``tests.helpers.killed_mid_commit_env``): ``VIDSEARCH_FAULT=after-rows:N`` makes the process SIGKILL itself
in its N-th commit, after the content tables are committed and before the videos are marked complete (the
worst moment for a crash); ``VIDSEARCH_FAULT=lose-lease-after:N`` (an ``s3://`` database) shortens the lease to
1.5 s and, once the N-th commit is done, overwrites the lease object as a run that took it over would, then waits
until the renewal has noticed. Production code carries no hook: ``pipeline.store.db`` is patched as it is
imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
from typing import Any

SPEC = os.environ.get("VIDSEARCH_FAULT", "")


def _lose_lease_after(store_module: Any, nth: int) -> None:
    import time

    from pipeline.store import lease, lock

    lease.LEASE_S = 1.5  # renewed every 0.5 s
    original = store_module.Store.commit_fragments
    seen = {"commits": 0}

    def commit_fragments(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        seen["commits"] += 1
        if seen["commits"] != nth:
            return
        for held in list(lock._leases.values()):
            body = b'{"pid": 1, "host": "elsewhere", "command": "index"}'
            held.s3.put_object(Bucket=held.bucket, Key=held.key, Body=body)  # no If-Match: a takeover
            deadline = time.monotonic() + 60  # a loaded machine may delay the renewal thread for seconds
            while not held.lost.is_set() and time.monotonic() < deadline:
                time.sleep(0.1)

    store_module.Store.commit_fragments = commit_fragments


def _patch(store_module: Any) -> None:
    point, _, nth = SPEC.partition(":")
    if point == "lose-lease-after":
        _lose_lease_after(store_module, int(nth))
        return
    if point != "after-rows":
        return
    original = store_module.Store._upsert
    seen = {"commits": 0}

    def upsert(self: Any, name: str, rows: Any) -> None:
        # The flip of a group's videos to complete is the one videos upsert whose rows are all complete.
        if name == "videos" and set(rows.column("status").to_pylist()) == {"complete"}:
            seen["commits"] += 1
            if str(seen["commits"]) == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        original(self, name, rows)

    store_module.Store._upsert = upsert


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "pipeline.store.db":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def patched(module: Any) -> None:
            exec_module(module)
            _patch(module)

        loader.exec_module = patched  # type: ignore[method-assign]
        return spec


if SPEC:
    sys.meta_path.insert(0, _Finder())
