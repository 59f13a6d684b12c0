"""An ``s3://`` database on a local S3-compatible server (moto, 127.0.0.1 only): index -> search -> rerun ->
driver SIGKILLed mid-commit then resumed, through the CLI with the standard AWS_* variables; the lease lock in
the bucket refuses a second writer (exit 75) from any process.

The CLI joins the test session's Ray (``--address``); the object-store variables travel to its workers in the
job's runtime_env (``pipeline.store.fragments.job_runtime_env``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import EXIT_LOCKED, LockBusy
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.lock import DatabaseLock
from tests.helpers import assert_same_tables, killed_mid_commit_env

ROOT = Path(__file__).resolve().parent.parent
DIM = 64
BUCKET = "archive"


@pytest.fixture(scope="module")
def s3_env():  # type: ignore[no-untyped-def]
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def cli(*args: str, address: str | None = None) -> list[str]:
    joined = ["--address", address] if address else []
    return [sys.executable, str(ROOT / "run_pipeline.py"), *args, "--config", "tiny", *joined]


def test_index_search_rerun_and_resume_on_an_s3_database(s3_env, sample_folder, indexed_db, ray_session) -> None:
    ref_cfg, ref = indexed_db
    address = ray_session.get_runtime_context().gcs_address
    db = f"s3://{BUCKET}/runs/db"
    index = cli(
        "index", str(sample_folder), "--db", db, "--no-progress", "--set", "db.commit_every_videos=1", address=address
    )

    # Killed in its 2nd commit (rows of a video committed, the video not complete), then the same command.
    first = subprocess.run(index, cwd=ROOT, env=killed_mid_commit_env(2), capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    store = Store(db, DIM)
    assert store.status_counts().get(S.STATUS_STARTED) == 2
    summary_path = Path(sample_folder).parent / "s3-summary.json"
    second = subprocess.run([*index, "--summary-json", str(summary_path)], cwd=ROOT, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert (summary["recovered"], summary["indexed"], summary["failed"]) == (2, 2, 0)
    assert sum(summary["fragments_by_node"].values()) > 0
    assert_same_tables(Store(db, DIM), Store(ref_cfg.db.path, DIM))

    # A rerun indexes nothing.
    third = subprocess.run([*index, "--summary-json", str(summary_path)], cwd=ROOT, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads(summary_path.read_text())["skipped"] == ref.indexed

    # Search reads the same store.
    search = cli("search", "a person", "--db", db, "--json", "-k", "3")
    out = subprocess.run(search, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    hits = json.loads(out.stdout)
    assert len(hits) == 3 and {h["video_id"] for h in hits} <= Store(db, DIM).complete_ids()


def test_the_lease_in_the_bucket_refuses_a_second_writer(s3_env, sample_folder, ray_session) -> None:
    address = ray_session.get_runtime_context().gcs_address
    db = f"s3://{BUCKET}/locked/db"
    with DatabaseLock(db, "index"):
        # Another process (as if on another machine: nothing local is shared but the bucket) is refused.
        run = subprocess.run(
            cli("index", str(sample_folder), "--db", db, "--no-progress", address=address),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert run.returncode == EXIT_LOCKED, run.stderr[-3000:]
        assert "another vidsearch run" in run.stderr
        # A second lock object in this process is refused too (the lease, not a local file, decides).
        from pipeline.store.lease import S3Lease

        assert S3Lease(db, "index").acquire() is not None
    # Released: the next run takes it.
    with DatabaseLock(db, "index"):
        pass


def test_an_expired_lease_of_a_dead_holder_is_taken_over(s3_env) -> None:
    from pipeline.store.lease import S3Lease

    db = f"s3://{BUCKET}/stale/db"
    dead = S3Lease(db, "index", lease_s=0.5)
    assert dead.acquire() is None
    dead._stop.set()  # the holder dies: it stops renewing and never releases
    import time

    time.sleep(0.8)
    taker = S3Lease(db, "index")
    assert taker.acquire() is None, "an expired lease must be taken over"
    with pytest.raises(LockBusy):
        DatabaseLock(db, "index").acquire()
    taker.release()


def test_a_writer_that_loses_its_lease_stops_before_its_next_commit(s3_env, sample_folder, ray_session) -> None:  # type: ignore[no-untyped-def]
    """The lease is taken over after the run's first commit (as by a run that found it expired): the renewal
    gets a 412, and the run stops before its second commit with one sentence and ``EXIT_LOCK_LOST``."""
    import boto3

    from pipeline.errors import EXIT_LOCK_LOST
    from pipeline.store.lease import LEASE_NAME

    address = ray_session.get_runtime_context().gcs_address
    db = f"s3://{BUCKET}/lost/db"
    index = cli("index", str(sample_folder), "--db", db, "--no-progress", "--set", "db.commit_every_videos=1",
                address=address)  # fmt: skip
    hooks = str(ROOT / "tests" / "faultinject")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (hooks, os.environ.get("PYTHONPATH")) if p),
           "VIDSEARCH_FAULT": "lose-lease-after:1"}  # fmt: skip
    run = subprocess.run(index, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == EXIT_LOCK_LOST, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lost the database lock" in errors[0], run.stderr[-3000:]
    assert len(Store(db, DIM).complete_ids()) == 1  # the first commit landed; none after the lease was lost
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    holder = s3.get_object(Bucket=BUCKET, Key=f"lost/db/{LEASE_NAME}")["Body"].read()
    assert b"elsewhere" in holder  # the taker's lease stays: the loser never deletes it
