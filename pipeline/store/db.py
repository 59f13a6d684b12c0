"""The LanceDB database: tables, the single-committer write protocol, failures and run records.

Exactly-once protocol (one index run at a time holds the database lock of ``pipeline/store/lock.py``; its workers
write data files, only its driver commits, so no two commits race):
1. ``begin(videos)`` writes each new video's ``videos`` row with status ``started``.
2. The assembler actors write each video's rows as uncommitted Lance fragments (``pipeline/index/assembly.py``);
   nobody sees them yet.
3. ``commit_fragments(...)`` appends the fragments of a group of finished videos to each content table in one
   atomic commit per table, then flips the videos to ``complete`` in one ``merge_insert``. For a video that
   already has complete rows (re-indexed under a new pipeline version, or a retried commit), the same commit
   deletes its old rows, so a reader sees the old rows or the new ones, never neither and never both; for a
   file whose content changed (new id), the old video's rows are deleted only after the new video is complete.
4. ``recover()`` at start deletes every content row of videos still ``started`` (a crashed run) and the data
   files of fragments nobody committed.
Readers only trust videos that are ``complete`` and read ``videos`` before the content tables, so rows written
by a run in progress are invisible to them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import lancedb
import pyarrow as pa

from pipeline.store import schema as S
from pipeline.store.fragments import cleanup_uncommitted, commit_table, storage_options, table_uri, write_fragments


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
    """Typed access to the database at ``uri`` for embeddings of width ``dim``.

    Tables are re-checked for new versions on every read (``read_consistency_s=0``), so a long-lived reader
    (the search server) sees each commit of a concurrent index run as soon as it lands.
    """

    def __init__(
        self, uri: str, dim: int | None = None, read_consistency_s: float | None = 0.0, text_dim: int | None = None
    ) -> None:
        self.uri = uri
        self._dim = dim
        self._text_dim = text_dim
        interval = None if read_consistency_s is None else dt.timedelta(seconds=read_consistency_s)
        self.db = lancedb.connect(uri, read_consistency_interval=interval)
        self._tables: dict[str, Any] = {}

    @property
    def dim(self) -> int:
        """The embedding width: as given, else read from a vector table of the database."""
        if self._dim is None:
            for name in S.LEVELS:
                try:
                    self._dim = int(self.db.open_table(name).schema.field("embedding").type.list_size)
                    break
                except (ValueError, FileNotFoundError):  # no such table, or one without a committed version
                    continue
            else:
                raise ValueError(f"{self.uri} has no vector table yet: give the embedding dimension to create one")
        return self._dim

    @property
    def text_dim(self) -> int:
        """The sentence-embedding width: as given, else read from a table that has text vectors, else the default
        model's."""
        if self._text_dim is None:
            self._text_dim = S.TEXT_DIM
            for v in S.TEXT_VECTORS:
                try:
                    self._text_dim = int(self.db.open_table(v.table).schema.field(v.column).type.value_type.list_size)
                    break
                except (ValueError, FileNotFoundError, KeyError):  # no such table or column yet
                    continue
        return self._text_dim

    def schema(self, name: str) -> pa.Schema:
        return S.table_schema(name, self.dim, self.text_dim)

    # -- tables -------------------------------------------------------------------------------------------
    def table(self, name: str) -> Any:
        if name not in self._tables:
            if not self.exists(name):
                self._tables[name] = self.db.create_table(name, schema=self.schema(name), exist_ok=True)
                return self._tables[name]
            try:
                self._tables[name] = self.db.open_table(name)
            except ValueError as exc:
                # Listed but without a committed version: a writer was killed while creating it. It holds no
                # rows, so create it afresh (otherwise every later run fails to open it).
                if "not found" not in str(exc):
                    raise
                self._tables[name] = self.db.create_table(name, schema=self.schema(name), mode="overwrite")
        return self._tables[name]

    def exists(self, name: str) -> bool:
        return name in self._tables or name in self.db.list_tables(limit=1000).tables

    def rows(self, name: str, where: str | None = None, columns: list[str] | None = None) -> pa.Table:
        if not self.exists(name):
            return self.schema(name).empty_table()
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
        """Record videos as ``started`` (their old complete rows, if any, stay until the commit replaces them) and
        make sure every content table exists before workers write fragments into it."""
        if not videos:
            return
        for name in S.CONTENT_TABLES:
            self.table(name)
        done = self.complete_ids()  # once: a scan of the videos table
        fresh = [v for v in videos if v["video_id"] not in done]
        if fresh:
            rows = [{**v, "status": S.STATUS_STARTED} for v in fresh]
            self._upsert(S.VIDEOS, pa.Table.from_pylist(rows, schema=S.videos_schema()))

    def commit(
        self,
        videos: list[dict[str, Any]],
        tables: dict[str, list[pa.Table]],
        reindexed: Iterable[str] = (),
        replaces: dict[str, list[str]] | None = None,
    ) -> None:
        """``commit_fragments`` for rows made in this process (tests, the sequential baseline): the rows are
        written as fragments here, then committed exactly as the workers' fragments are."""
        opts = storage_options(self.uri)
        fragments = {
            name: [f for t in parts if t.num_rows for f in write_fragments(table_uri(self.uri, name), t, opts)]
            for name, parts in tables.items()
            if self.table(name) is not None
        }
        self.commit_fragments(videos, fragments, reindexed, replaces)

    def commit_fragments(
        self,
        videos: list[dict[str, Any]],
        fragments: dict[str, list[str]],
        reindexed: Iterable[str] = (),
        replaces: dict[str, list[str]] | None = None,
    ) -> None:
        """Commit the written fragments (JSON metadata, see ``pipeline/store/fragments.py``) of a group of finished
        videos, one atomic commit per content table, then mark the videos complete.

        Videos of the group that already have complete rows (``reindexed``: a new pipeline version; or a
        retried commit of the same group) lose their old rows in the same commit that adds the new ones.
        ``replaces``: new id -> ids of the videos whose file it replaced (same path, new content), deleted once
        the new video is complete.
        """
        ids = [v["video_id"] for v in videos]
        again = sorted((set(reindexed) & set(ids)) | self._complete_among(ids))
        for name in S.CONTENT_TABLES:
            self.table(name)  # exists before the first commit
            commit_table(self.uri, name, fragments.get(name, []), in_list("video_id", again) if again else None)
        rows = [{**v, "status": S.STATUS_COMPLETE, "indexed_at": now()} for v in videos]
        self._upsert(S.VIDEOS, pa.Table.from_pylist(rows, schema=S.videos_schema()))
        old_ids = sorted({o for i in ids for o in (replaces or {}).get(i, []) if o not in ids})
        self.delete_videos(old_ids)

    def _complete_among(self, ids: list[str]) -> set[str]:
        if not ids or not self.exists(S.VIDEOS):
            return set()
        where = f"{in_list('video_id', ids)} AND status = {quote(S.STATUS_COMPLETE)}"
        return set(self.rows(S.VIDEOS, where, ["video_id"]).column("video_id").to_pylist())

    def _upsert(self, name: str, rows: pa.Table) -> None:
        table = self.table(name)
        # a null vector is a row without one (text embedding off, or empty text), not a bad vector
        if table.count_rows() == 0:
            table.add(rows, on_bad_vectors="null")
            return
        key = S.KEYS[name]
        merge = table.merge_insert(key).when_matched_update_all().when_not_matched_insert_all()
        merge.execute(rows, on_bad_vectors="null")

    def migrate(self) -> dict[str, list[str]]:
        """Add to each existing table the columns its schema gained since the table was created (all null there);
        returns them by table. Called under the database lock, before a run writes fragments of the new schema
        (a commit of fragments with columns the table lacks would fail). A text-vector column of another width
        (another sentence-embedding model) is replaced by an empty one: its vectors could never be compared with
        the new model's, and the version change re-indexes the videos that held them."""
        out: dict[str, list[str]] = {}
        for name in (*S.CONTENT_TABLES, S.VIDEOS):
            if not self.exists(name):
                continue
            table = self.table(name)
            want = self.schema(name)
            resized = [
                v.column
                for v in S.text_vectors(name)
                if v.column in table.schema.names and table.schema.field(v.column).type != want.field(v.column).type
            ]
            if resized:
                table.drop_columns(resized)
            have = set(table.schema.names)
            missing = [f for f in want if f.name not in have]
            if missing:
                bad = [f.name for f in missing if not S.is_added(f)]
                if bad:
                    raise ValueError(f"table {name} of {self.uri} lacks columns {bad} that cannot be added: re-index")
                table.add_columns(pa.schema([pa.field(f.name, f.type, nullable=True) for f in missing]))
                out[name] = [f.name for f in missing]
        return out

    def recover(self) -> list[str]:
        """Delete the rows of videos a crashed run left ``started`` and the fragments its workers wrote but
        nobody committed; returns the ids. Called under the database lock (no other writer runs)."""
        for name in S.CONTENT_TABLES:
            if self.exists(name):
                self.table(name)  # repairs a table a writer was killed while creating (no version to clean)
                cleanup_uncommitted(self.uri, name)
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

    def update_path(self, video_id: str, path: str, mtime_ns: int | None = None) -> None:
        values: dict[str, Any] = {"path": path} if mtime_ns is None else {"path": path, "mtime_ns": mtime_ns}
        self.table(S.VIDEOS).update(where=f"video_id = {quote(video_id)}", values=values)

    def status_counts(self) -> dict[str, int]:
        """Videos per status (``started`` ones belong to a run in progress or a crashed one)."""
        counts: dict[str, int] = {}
        for status in self.rows(S.VIDEOS, columns=["status"]).column("status").to_pylist():
            counts[status] = counts.get(status, 0) + 1
        return counts

    # -- failures and runs ----------------------------------------------------------------------------------
    def record_failure(
        self, path: str, video_id: str, stage: str, error_type: str, message: str, quarantine_after: int
    ) -> int:
        """Add or bump a failure of (path, stage); returns its attempt count.

        Attempts count only while the content stays the same: a file replaced by new content (another
        ``video_id``) starts again from one.
        """
        fid = S.make_id("failure", path, stage)
        old = self.rows(S.FAILURES, f"failure_id = {quote(fid)}")
        same = bool(old.num_rows) and old.column("video_id")[0].as_py() == video_id
        attempts = (old.column("attempts")[0].as_py() if same else 0) + 1
        first = old.column("first_seen")[0].as_py() if same else now()
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
        self.clear_failures([path])

    def clear_failures(self, paths: list[str]) -> None:
        """Forget the failures of ``paths`` (they indexed now); one delete for a whole commit group."""
        if paths and self.exists(S.FAILURES):
            self.table(S.FAILURES).delete(in_list("path", paths))

    def quarantined(self) -> dict[str, set[str]]:
        """Quarantined path -> the video ids (content) that failed there (``""`` for a file that never listed)."""
        out: dict[str, set[str]] = {}
        for r in self.rows(S.FAILURES, "quarantined = true", ["path", "video_id"]).to_pylist():
            out.setdefault(r["path"], set()).add(r["video_id"] or "")
        return out

    def record_run(
        self, run_id: str, started: dt.datetime, version: str, summary: dict[str, Any], finished: bool = True
    ) -> None:
        """Write (or overwrite) a run's row; a row with no ``finished_at`` is a run in progress or one that died."""
        row = {
            "run_id": run_id,
            "started_at": started,
            "finished_at": now() if finished else None,
            "pipeline_version": version,
            "summary_json": json.dumps(summary, default=str),
        }
        self._upsert(S.RUNS, pa.Table.from_pylist([row], schema=S.runs_schema()))

    def runs(self, last: int | None = None) -> list[dict[str, Any]]:
        """Run rows, newest first, with ``summary`` parsed."""
        rows = sorted(self.rows(S.RUNS).to_pylist(), key=lambda r: r["started_at"], reverse=True)
        for r in rows:
            r["summary"] = json.loads(r.pop("summary_json") or "{}")
        return rows[:last] if last else rows
