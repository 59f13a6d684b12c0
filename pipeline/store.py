"""The LanceDB database: tables, the single-committer write protocol, failures and run records.

Exactly-once protocol (all writes come from the one committer in the driver):
1. ``begin(videos)`` writes each video's ``videos`` row with status ``started``.
2. ``commit(...)`` writes the rows of a group of finished videos to every content table (merge on the
   deterministic key, so a retried commit cannot duplicate), deletes rows of those videos that the new
   version no longer has, then flips the videos to ``complete`` in one ``merge_insert``.
3. ``recover()`` at start deletes every content row of videos still ``started`` (a crashed run).
Readers only trust videos that are ``complete``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import lancedb
import pyarrow as pa

from pipeline import schema as S


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def quote(value: str) -> str:
    """A SQL string literal for LanceDB filters: single quotes doubled, NULs refused."""
    if "\x00" in value:
        raise ValueError("NUL character in a filter value")
    return "'" + value.replace("'", "''") + "'"


def in_list(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(quote(v) for v in values)})"


class Store:
    """Typed access to the database at ``uri`` for embeddings of width ``dim``."""

    def __init__(self, uri: str, dim: int) -> None:
        self.uri = uri
        self.dim = dim
        self.db = lancedb.connect(uri)
        self._tables: dict[str, Any] = {}

    # -- tables -------------------------------------------------------------------------------------------
    def table(self, name: str) -> Any:
        if name not in self._tables:
            if name in self.db.table_names(limit=1000):
                self._tables[name] = self.db.open_table(name)
            else:
                self._tables[name] = self.db.create_table(name, schema=S.table_schema(name, self.dim), exist_ok=True)
        return self._tables[name]

    def exists(self, name: str) -> bool:
        return name in self.db.table_names(limit=1000)

    def rows(self, name: str, where: str | None = None, columns: list[str] | None = None) -> pa.Table:
        if not self.exists(name):
            return S.table_schema(name, self.dim).empty_table()
        q = self.table(name).search()
        if where:
            q = q.where(where)
        if columns:
            q = q.select(columns)
        return q.limit(None).to_arrow()

    def count(self, name: str, where: str | None = None) -> int:
        return int(self.table(name).count_rows(where)) if self.exists(name) else 0

    # -- write protocol -----------------------------------------------------------------------------------
    def begin(self, videos: list[dict[str, Any]]) -> None:
        """Record videos as ``started`` (their old complete rows, if any, stay until the commit replaces them)."""
        if not videos:
            return
        fresh = [v for v in videos if v["video_id"] not in self.complete_ids()]
        if fresh:
            rows = [{**v, "status": S.STATUS_STARTED} for v in fresh]
            self._upsert(S.VIDEOS, pa.Table.from_pylist(rows, schema=S.videos_schema()))

    def commit(self, videos: list[dict[str, Any]], tables: dict[str, list[pa.Table]]) -> None:
        """Write the content rows of ``videos`` to every table, then mark the videos complete."""
        ids = [v["video_id"] for v in videos]
        for name in S.CONTENT_TABLES:
            parts = [t for t in tables.get(name, []) if t.num_rows]
            new = pa.concat_tables(parts) if parts else S.table_schema(name, self.dim).empty_table()
            if new.num_rows:
                self._upsert(name, new)
            key = S.KEYS[name]
            stale = f"{in_list('video_id', ids)}"
            if new.num_rows:
                stale += f" AND NOT {in_list(key, new.column(key).to_pylist())}"
            if self.exists(name):
                self.table(name).delete(stale)
        rows = [{**v, "status": S.STATUS_COMPLETE, "indexed_at": now()} for v in videos]
        self._upsert(S.VIDEOS, pa.Table.from_pylist(rows, schema=S.videos_schema()))

    def _upsert(self, name: str, rows: pa.Table) -> None:
        table = self.table(name)
        if table.count_rows() == 0:
            table.add(rows)
            return
        key = S.KEYS[name]
        (table.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(rows))

    def recover(self) -> list[str]:
        """Delete the rows of videos a crashed run left ``started``; returns their ids."""
        if not self.exists(S.VIDEOS):
            return []
        stale = self.rows(S.VIDEOS, f"status = {quote(S.STATUS_STARTED)}", ["video_id"]).column("video_id").to_pylist()
        if stale:
            for name in S.CONTENT_TABLES:
                if self.exists(name):
                    self.table(name).delete(in_list("video_id", stale))
            self.table(S.VIDEOS).delete(f"{in_list('video_id', stale)} AND status = {quote(S.STATUS_STARTED)}")
        return stale

    def delete_videos(self, ids: list[str]) -> None:
        if not ids:
            return
        for name in (*S.CONTENT_TABLES, S.VIDEOS):
            if self.exists(name):
                self.table(name).delete(in_list("video_id", ids))

    # -- reads used by the runner and search ----------------------------------------------------------------
    def complete_videos(self) -> pa.Table:
        return self.rows(S.VIDEOS, f"status = {quote(S.STATUS_COMPLETE)}")

    def complete_ids(self) -> set[str]:
        return set(self.complete_videos().column("video_id").to_pylist())

    def update_path(self, video_id: str, path: str) -> None:
        self.table(S.VIDEOS).update(where=f"video_id = {quote(video_id)}", values={"path": path})

    # -- failures and runs ----------------------------------------------------------------------------------
    def record_failure(
        self, path: str, video_id: str, stage: str, error_type: str, message: str, quarantine_after: int
    ) -> int:
        """Add or bump a failure of (path, stage); returns its attempt count."""
        fid = S.make_id("failure", path, stage)
        old = self.rows(S.FAILURES, f"failure_id = {quote(fid)}")
        attempts = (old.column("attempts")[0].as_py() if old.num_rows else 0) + 1
        first = old.column("first_seen")[0].as_py() if old.num_rows else now()
        row = {
            "failure_id": fid,
            "path": path,
            "video_id": video_id,
            "stage": stage,
            "error_type": error_type,
            "message": message,
            "attempts": attempts,
            "quarantined": attempts >= quarantine_after,
            "first_seen": first,
            "last_seen": now(),
        }
        self._upsert(S.FAILURES, pa.Table.from_pylist([row], schema=S.failures_schema()))
        return attempts

    def clear_failure(self, path: str) -> None:
        if self.exists(S.FAILURES):
            self.table(S.FAILURES).delete(f"path = {quote(path)}")

    def quarantined_paths(self) -> set[str]:
        return set(self.rows(S.FAILURES, "quarantined = true", ["path"]).column("path").to_pylist())

    def record_run(self, run_id: str, started: dt.datetime, version: str, summary: dict[str, Any]) -> None:
        row = {
            "run_id": run_id,
            "started_at": started,
            "finished_at": now(),
            "pipeline_version": version,
            "summary_json": json.dumps(summary, default=str),
        }
        self._upsert(S.RUNS, pa.Table.from_pylist([row], schema=S.runs_schema()))
