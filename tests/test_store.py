"""The store's exactly-once protocol, failures and quarantine, pruning and the database lock, on LanceDB in
``tmp_path`` with rows built from the real schemas (no Ray, no models)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import EXIT_LOCKED, LockBusy
from pipeline.index.catalog import prune
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.lock import DatabaseLock, lock_path
from tests.helpers import SYNTHETIC_DIM, content, tables_of, video_row

DIM = SYNTHETIC_DIM
ROOT = Path(__file__).resolve().parent.parent


def keys(store: Store, name: str, where: str | None = None) -> list[str]:
    return sorted(store.rows(name, where, [S.KEYS[name]]).column(S.KEYS[name]).to_pylist())


def test_commit_then_crash_leftovers_are_recovered_and_a_retried_commit_adds_nothing(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    store.begin([video_row("a", "/v/a.mp4"), video_row("b", "/v/b.mp4")])
    assert store.status_counts() == {S.STATUS_STARTED: 2}
    a, b = content("a", [0.0, 1.0, 2.0]), content("b", [0.0, 1.0], seed=1)
    store.commit([video_row("a", "/v/a.mp4")], tables_of(a))
    # "b" dies half-written: its rows are in every table but it never became complete.
    for name in b:
        store._upsert(name, b[name])
    assert store.count(S.FRAMES, "video_id = 'b'") == 2
    assert store.complete_ids() == {"a"}

    assert store.recover() == ["b"]
    for name in (*S.CONTENT_TABLES, S.VIDEOS):
        assert store.count(name, "video_id = 'b'") == 0, name
    assert store.count(S.FRAMES, "video_id = 'a'") == 3

    store.commit([video_row("a", "/v/a.mp4")], tables_of(a))  # a retried commit of the same group
    for name in a:
        ids = keys(store, name)
        assert len(ids) == len(set(ids)) == 3, name
    assert store.count(S.VIDEOS) == 1 and store.complete_ids() == {"a"}


def test_reindex_swaps_old_rows_for_new_in_one_commit(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    store.begin([video_row("a")])
    store.commit([video_row("a")], tables_of(content("a", [0.0, 1.0, 2.0, 3.0])))
    first_version = store.table(S.FRAMES).version

    # New pipeline version samples differently: t=2,3 are kept (same keys), 0,1 are gone, 4,5 are new.
    store.begin([video_row("a", version="v2")])  # a complete video stays complete while it is re-indexed
    assert store.complete_ids() == {"a"}
    store.commit([video_row("a", version="v2")], tables_of(content("a", [2.0, 3.0, 4.0, 5.0], seed=9)), {"a"})

    assert sorted(store.rows(S.FRAMES, columns=["t"]).column("t").to_pylist()) == [2.0, 3.0, 4.0, 5.0]
    assert store.complete_videos().column("pipeline_version").to_pylist() == ["v2"]
    table = store.table(S.FRAMES)
    seen = []
    for v in range(first_version, table.version + 1):  # every version a reader could have opened
        table.checkout(v)
        seen.append(sorted(table.to_arrow().column("t").to_pylist()))
    table.checkout_latest()
    # Every version a reader could have opened holds the old rows or the new ones: never neither, never a mix
    # (the old rows' deletion and the new fragments are one commit).
    assert set(map(tuple, seen)) == {(0.0, 1.0, 2.0, 3.0), (2.0, 3.0, 4.0, 5.0)}, seen
    # Stored keys are unique: the rows kept under the same frame ids (t=2, 3) were replaced, not doubled.
    ids = store.rows(S.FRAMES, columns=["frame_id"]).column("frame_id").to_pylist()
    assert len(ids) == len(set(ids)) == 4


def test_a_replaced_file_drops_the_old_video_only_when_the_new_one_is_complete(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    store.begin([video_row("old", "/v/a.mp4")])
    store.commit([video_row("old", "/v/a.mp4")], tables_of(content("old", [0.0, 1.0])))
    store.begin([video_row("new", "/v/a.mp4")])
    assert store.count(S.FRAMES, "video_id = 'old'") == 2  # begin touches nothing of the old video
    store.commit([video_row("new", "/v/a.mp4")], tables_of(content("new", [0.0])), replaces={"new": ["old"]})
    for name in (*S.CONTENT_TABLES, S.VIDEOS):
        assert store.count(name, "video_id = 'old'") == 0, name
    assert store.complete_ids() == {"new"}


def test_failures_count_attempts_quarantine_after_n_and_restart_for_new_content(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    attempts = [store.record_failure("/v/bad.mp4", "x", "decode", "DecodeError", "boom", 3) for _ in range(3)]
    assert attempts == [1, 2, 3]
    assert store.quarantined() == {"/v/bad.mp4": {"x"}}
    row = store.rows(S.FAILURES).to_pylist()[0]
    assert row["quarantined"] and row["attempts"] == 3 and row["error_type"] == "DecodeError"
    # The file was replaced by other content: a fresh start, not quarantined.
    assert store.record_failure("/v/bad.mp4", "y", "decode", "DecodeError", "boom", 3) == 1
    assert store.quarantined() == {}
    store.clear_failure("/v/bad.mp4")
    assert store.count(S.FAILURES) == 0


def test_prune_removes_only_videos_whose_files_are_gone_under_existing_roots(tmp_path) -> None:
    (tmp_path / "archive").mkdir()
    kept = tmp_path / "archive" / "kept.mp4"
    kept.write_bytes(b"x")
    store = Store(str(tmp_path / "db"), DIM)
    rows = [
        video_row("kept", str(kept)),
        video_row("gone", str(tmp_path / "archive" / "gone.mp4")),
        video_row("elsewhere", str(tmp_path / "other" / "gone.mp4")),
    ]
    store.begin(rows)
    store.commit(rows, tables_of(*(content(r["video_id"], [0.0]) for r in rows)))
    store.record_failure(str(tmp_path / "archive" / "broken.mp4"), "z", "decode", "DecodeError", "boom", 3)

    assert prune(store, roots=[str(tmp_path / "unmounted")]) == []  # a missing root prunes nothing
    assert [v["video_id"] for v in prune(store, roots=[str(tmp_path / "archive")], dry_run=True)] == ["gone"]
    assert store.complete_ids() == {"kept", "gone", "elsewhere"}
    assert [v["video_id"] for v in prune(store, roots=[str(tmp_path / "archive")])] == ["gone"]
    assert store.complete_ids() == {"kept", "elsewhere"} and store.count(S.FRAMES, "video_id = 'gone'") == 0
    assert store.count(S.FAILURES) == 0  # the failure of a file that is gone goes too
    assert [v["video_id"] for v in prune(store)] == ["elsewhere"]


HOLDER = """
import sys, time
from pipeline.store.lock import DatabaseLock
with DatabaseLock(sys.argv[1], "index"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_lock_refuses_a_second_writer_names_the_holder_and_dies_with_it(tmp_path) -> None:
    db = str(tmp_path / "db")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockBusy) as err:
            DatabaseLock(db, "index").acquire()
        assert f"pid {holder.pid}" in str(err.value) and db in str(err.value)
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel still releases the lock
        holder.wait(timeout=30)
        with DatabaseLock(db, "index"):
            with DatabaseLock(db, "maintain"):  # re-entrant within one process (CLI, then runner)
                pass
            assert "index" in Path(lock_path(db)).read_text()
        assert Path(lock_path(db)).read_text() == ""  # released
    finally:
        if holder.poll() is None:
            holder.kill()
    assert EXIT_LOCKED == 75


def test_object_store_databases_lock_a_local_file_keyed_by_uri(tmp_path) -> None:
    """Stores other than S3 (whose lease lives in the bucket: tests/test_object_store.py)."""
    a = lock_path("gs://bucket/a", str(tmp_path))
    assert a.parent == tmp_path and a != lock_path("gs://bucket/b", str(tmp_path))
    assert lock_path(str(tmp_path / "db")) == tmp_path / "db" / ".vidsearch.lock"
    with DatabaseLock("gs://bucket/a", "index", str(tmp_path)):
        assert a.exists()


def test_cli_second_writer_exits_75_with_a_message(tmp_path) -> None:
    db = str(tmp_path / "db")
    with DatabaseLock(db, "index"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run_pipeline.py"), "prune", "--config", "tiny", "--db", db],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == EXIT_LOCKED, proc.stderr
    assert "another vidsearch run is writing to" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_store_opens_without_the_embedding_width_and_reads_it_from_the_tables(tmp_path) -> None:
    db = str(tmp_path / "db")
    with pytest.raises(ValueError, match="no vector table"):
        Store(db).table(S.FRAMES)  # nothing to read the width from, and none given
    Store(db, DIM).begin([video_row("a")])
    assert Store(db).dim == DIM


def test_migrate_adds_new_columns_to_tables_of_an_older_release_and_keeps_their_rows(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    store.begin([video_row("a")])
    store.commit([video_row("a")], tables_of(content("a", [0.0, 1.0])))
    # Make the segments and frames tables look like an older release's: drop the columns added since.
    for name in (S.FRAMES, S.SEGMENTS):
        newer = [f.name for f in S.table_schema(name, DIM) if S.is_added(f)]
        assert newer, name
        store.table(name).drop_columns(newer)
    reopened = Store(store.uri)
    assert "caption" not in reopened.table(S.SEGMENTS).schema.names

    migrated = reopened.migrate()
    assert migrated[S.SEGMENTS] == [
        "shot_idx", "shot_start_s", "shot_end_s", "caption", "screen_text", "speech",
        "caption_vector", "screen_text_vector", "speech_vector", S.TEXT_MODEL,
    ]  # fmt: skip
    assert migrated[S.FRAMES] == ["shot_idx", "text_lines"]
    assert reopened.migrate() == {}  # nothing left to add
    old = reopened.rows(S.SEGMENTS)
    assert old.num_rows > 0 and old.column("caption").null_count == old.num_rows
    # A video indexed after the migration writes the new columns next to the old rows.
    reopened.begin([video_row("b")])
    rows = content("b", [0.0, 1.0], seed=1)
    seg = rows[S.SEGMENTS]
    rows[S.SEGMENTS] = seg.set_column(
        seg.schema.get_field_index("caption"), "caption", pa.array(["a cat"] * seg.num_rows)
    )
    reopened.commit([video_row("b")], tables_of(rows))
    assert reopened.rows(S.SEGMENTS, "video_id = 'b'", ["caption"]).column("caption").to_pylist()[0] == "a cat"
    assert reopened.count(S.SEGMENTS, "video_id = 'a'") == old.num_rows


def test_a_sentence_embedder_of_another_width_replaces_the_text_vectors_and_keeps_the_rows(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    store.begin([video_row("a")])
    store.commit([video_row("a")], tables_of(content("a", [0.0, 1.0])))
    seg = store.table(S.SEGMENTS)
    assert seg.schema.field("speech_vector").type.value_type.list_size == S.TEXT_DIM
    n = seg.count_rows()
    wider = Store(store.uri, DIM, text_dim=S.TEXT_DIM * 2)  # a model of 768 dimensions
    migrated = wider.migrate()
    assert migrated[S.SEGMENTS] == ["caption_vector", "screen_text_vector", "speech_vector"]
    assert S.SPEECH not in migrated or migrated[S.SPEECH] == ["text_vector"]
    table = wider.table(S.SEGMENTS)
    assert table.count_rows() == n and table.schema.field("speech_vector").type.value_type.list_size == S.TEXT_DIM * 2
    assert table.count_rows("speech_vector IS NOT NULL") == 0
    assert Store(store.uri).text_dim == S.TEXT_DIM * 2  # a reader reads the width from the table
    assert wider.migrate() == {}
