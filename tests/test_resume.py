"""Resume and exactly-once through the real CLI: a driver SIGKILLed in the middle of a commit, then the same
command again, ends with the same tables as an uninterrupted run; a second concurrent run exits cleanly; search
keeps answering while a run writes.

The CLI runs as a subprocess joined to the test session's Ray (``--address``), so each run skips Ray's start-up.
The uninterrupted reference is the session's ``indexed_db`` (the same folder and config).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import EXIT_LOCKED
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.lock import lock_path
from tests.helpers import TINY_DIM, assert_same_tables, killed_mid_commit_env

ROOT = Path(__file__).resolve().parent.parent
DIM = TINY_DIM


def cli(db: Path, inputs: list[str], address: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "run_pipeline.py"),
        "index",
        *inputs,
        "--config",
        "tiny",
        "--db",
        str(db),
        "--address",
        address,
        "--no-progress",
        "--set",
        "db.commit_every_videos=1",  # one commit per video, so a run has several
        *extra,
    ]


def test_driver_sigkilled_mid_commit_then_rerun_equals_uninterrupted_run(
    tmp_path, sample_folder, indexed_db, ray_session
) -> None:
    ref_cfg, _ = indexed_db
    address = ray_session.get_runtime_context().gcs_address
    db = tmp_path / "db"
    summary_path = tmp_path / "summary.json"
    cmd = cli(db, [str(sample_folder)], address, "--summary-json", str(summary_path))

    # Run 1: the driver SIGKILLs itself in its 2nd commit, after that video's rows are written to every
    # table and before it is marked complete.
    first = subprocess.run(cmd, cwd=ROOT, env=killed_mid_commit_env(2), capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    store = Store(str(db), DIM)
    status = store.status_counts()
    assert status[S.STATUS_COMPLETE] == 1 and status[S.STATUS_STARTED] == 2, status
    started = store.rows(S.VIDEOS, f"status = '{S.STATUS_STARTED}'", ["video_id"]).column("video_id").to_pylist()
    half = {n for n in S.CONTENT_TABLES if store.count(n, f"video_id IN ('{started[0]}', '{started[1]}')")}
    assert {S.FRAMES, S.SEGMENTS, S.THUMBNAILS} <= half  # the killed commit wrote rows of a not-complete video
    assert not summary_path.exists()

    # Run 2: the same command.
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert (summary["recovered"], summary["skipped"], summary["indexed"], summary["failed"]) == (2, 1, 2, 0)
    assert_same_tables(Store(str(db), DIM), Store(ref_cfg.db.path, DIM))
    runs = {r["run_id"]: r for r in store.runs() if r["summary"].get("kind") == "index"}
    assert len(runs) == 2 and sum(r["finished_at"] is None for r in runs.values()) == 1  # the killed run's row


@pytest.mark.slow
def test_driver_killed_from_outside_after_first_commit_then_rerun_equals_uninterrupted_run(
    tmp_path, sample_folder, indexed_db, ray_session
) -> None:
    """The same without the hook: poll the database and SIGKILL the driver once a first video is complete."""
    ref_cfg, _ = indexed_db
    address = ray_session.get_runtime_context().gcs_address
    db = tmp_path / "db"
    # One video decoded at a time and frames passed on one by one, so videos finish (and commit) seconds apart
    # rather than in one burst; none of this changes the rows (the pipeline version ignores ray.*).
    slow = [
        "ray.decode.concurrency=1",
        "ray.detect.batch_size=1",
        "ray.preprocess.batch_size=1",
        "ray.embed.batch_size=1",
    ]
    cmd = cli(db, [str(sample_folder)], address, *[a for item in slow for a in ("--set", item)])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Store(str(db), DIM)
    try:
        while proc.poll() is None and not (store.exists(S.VIDEOS) and store.complete_ids()):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(store.complete_ids()) < 3
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    assert_same_tables(Store(str(db), DIM), Store(ref_cfg.db.path, DIM))


def test_second_concurrent_run_exits_cleanly_and_search_answers_while_a_run_writes(
    tmp_path, testdata, indexed_db, ray_session
) -> None:
    from pipeline.search.searcher import Searcher

    ref_cfg, _ = indexed_db
    address = ray_session.get_runtime_context().gcs_address
    db = tmp_path / "db"
    shutil.copytree(ref_cfg.db.path, db)  # an index with content, as a server would be searching
    cfg = ref_cfg.model_copy(update={"db": ref_cfg.db.model_copy(update={"path": str(db)})})
    new = tmp_path / "new"
    new.mkdir()
    for rel in ("imageio_test_images/realshort.mp4", "decord/video_0.mov", "decord/video_90.mov"):
        shutil.copy(testdata / rel, new / Path(rel).name)
    cmd = cli(db, [str(new)], address)
    before = Store(str(db), DIM)
    n_runs = len(before.runs())

    searcher = Searcher(str(db), cfg)
    searcher.search(text="warm up", k=3)  # loads the encoder before the run starts
    writer = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        holder = lock_path(str(db))
        while writer.poll() is None and f'"pid": {writer.pid}' not in holder.read_text():
            time.sleep(0.05)
        assert writer.poll() is None, "the first run ended before the second could race it"
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert writer.poll() is None, "the first run must still be going while the second is refused"
        assert second.returncode == EXIT_LOCKED, second.stderr[-3000:]
        assert f"another vidsearch run is writing to {db}" in second.stderr and f"pid {writer.pid}" in second.stderr
        assert "Traceback" not in second.stderr

        answered, errors, seen_ids = 0, [], set()
        while writer.poll() is None:
            for level in S.LEVELS:
                try:
                    hits = searcher.search(text="a dog on a bicycle", k=5, level=level, rerank=None)
                    assert hits, level
                    seen_ids |= {h.video_id for h in hits}
                    answered += writer.poll() is None
                except Exception as exc:  # noqa: BLE001 - every failure is reported below
                    errors.append(repr(exc))
                time.sleep(0.2)  # a client's pace, leaving the writer its CPU
        _, err = writer.communicate()
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err[-3000:]
    assert not errors, errors[:3]
    assert answered >= 3  # searches were served while the run was writing
    after = Store(str(db), DIM)
    assert seen_ids <= after.complete_ids() and len(after.complete_ids()) == 6
    index_runs = [r for r in after.runs()[: len(after.runs()) - n_runs] if r["summary"]["kind"] == "index"]
    assert len(index_runs) == 1 and index_runs[0]["summary"]["indexed"] == 3  # the refused run wrote nothing
