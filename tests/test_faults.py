"""Fault injection during a real index run on the session's Ray: a decode worker, the encoder actor and the
driver (the single writer) are SIGKILLed by pid in turn; the database directory fills up; a LanceDB commit fails
once. After each fault the run either finishes correctly or stops with a clear message, and a rerun ends with
every video indexed exactly once.

Worker pids come from Ray itself: actors from the GCS actor table (``ray._private.state.actors()``: class,
job, state, pid) and task workers as children of this session's raylet whose process title Ray set to the task
they are running. ``ray.util.state`` (``list_actors``/``list_tasks``) would be the public way, but it queries the
dashboard, which the shared test session does not start (``include_dashboard=False``); the GCS table and the
process titles need nothing extra and cannot pick up another Ray instance's workers on the same machine.
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.store import schema as S
from pipeline.store.db import Store, quote
from tests.helpers import TINY_DIM, tiny_config

ROOT = Path(__file__).resolve().parent.parent
DIM = TINY_DIM
CLIPS = [
    "mdn/friday.mp4",  # 6 s, 185 frames at 640x480: its decode task runs long enough to be caught
    "imageio_test_images/realshort.mp4",
    "decord/video_0.mov",
]
LONG = "friday.mp4"
#: Detection off: runs are shorter.
OVERRIDES = ("detect.enabled=false", "db.commit_every_videos=1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, testdata) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("fault_videos")
    for rel in CLIPS:
        shutil.copy(testdata / rel, out / Path(rel).name)
    return out


def assert_exactly_once(db: str | Path, folder: Path) -> None:
    """Every video in ``folder`` is complete once, with all its rows once; nothing else is in the database."""
    store = Store(str(db), DIM)
    videos = store.rows(S.VIDEOS).to_pylist()
    assert sorted(v["path"] for v in videos) == sorted(str(folder / Path(c).name) for c in CLIPS)
    assert {v["status"] for v in videos} == {S.STATUS_COMPLETE}
    ids = [v["video_id"] for v in videos]
    for name in S.CONTENT_TABLES:
        keys = store.rows(name, columns=[S.KEYS[name], "video_id"]).to_pylist()
        assert len({k[S.KEYS[name]] for k in keys}) == len(keys), f"duplicate keys in {name}"
        assert {k["video_id"] for k in keys} <= set(ids), f"rows of unknown videos in {name}"
    for v in videos:
        frames = store.count(S.FRAMES, f"video_id = {quote(v['video_id'])}")
        assert frames == v["n_samples"] > 0, v["path"]
        assert store.count(S.SEGMENTS, f"video_id = {quote(v['video_id'])}") >= 1
    assert store.count(S.FAILURES) == 0


def run_in_thread(cfg: Any, inputs: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    from pipeline.index.runner import run_index

    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["summary"] = run_index(cfg, inputs, progress=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def kill_when(find: Callable[[], int | None], thread: threading.Thread, timeout: float = 240.0) -> int | None:
    """Poll ``find`` until it names a pid, SIGKILL it and return it; None if the run ended first."""
    end = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < end:
        pid = find()
        if pid:
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.02)
    return None


def session_workers() -> list[psutil.Process]:
    """Worker processes of this test session's Ray node (children of its raylet)."""
    import ray

    node = ray._private.worker._global_node
    raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return psutil.Process(raylet).children(recursive=True)


def decode_worker_reading(name: str) -> Callable[[], int | None]:
    """A task worker running a decode task (title ``ray::MapBatches(decode)``) that has ``name`` open."""

    def find() -> int | None:
        for p in session_workers():
            try:
                if p.cmdline()[0].startswith("ray::MapBatches(decode)") and any(
                    f.path.endswith(name) for f in p.open_files()
                ):
                    return p.pid
            except (psutil.Error, IndexError):
                continue
        return None

    return find


def encoder_actor_busy() -> int | None:
    """The encoder's actor (Ray Data's MapWorker around the embed stage's adapter) once it runs a method other
    than ``__init__``."""
    import ray
    from ray._private import state

    job = ray.get_runtime_context().get_job_id()
    for actor in state.actors().values():
        if (
            "MapBatches(embed)" in actor["ActorClassName"]
            and actor["State"] == "ALIVE"
            and actor["JobID"] == job
            and actor["Pid"]
        ):
            try:
                title = psutil.Process(actor["Pid"]).cmdline()[0]
            except (psutil.Error, IndexError):
                continue
            # ray::MapWorker(MapBatches(embed)).submit, or with a CPU stage fused in front of it:
            # ray::MapWorker(MapBatches(preprocess)->MapBatches(embed)).submit
            if title.startswith("ray::MapWorker(") and "MapBatches(embed))." in title and "__init__" not in title:
                return int(actor["Pid"])
    return None


def rerun(db: Path, folder: Path) -> Any:
    from pipeline.index.runner import run_index

    summary = run_index(tiny_config(db, *OVERRIDES), [str(folder)], progress=False)
    assert summary.failed == 0, summary.failures
    assert_exactly_once(db, folder)
    return summary


@pytest.mark.parametrize("target", ["decode worker", "encoder actor"])
def test_killed_ray_worker_is_retried_and_the_run_finishes(target, folder, ray_session, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "db"
    thread, out = run_in_thread(tiny_config(db, *OVERRIDES), [str(folder)])
    killed = kill_when(decode_worker_reading(LONG) if target == "decode worker" else encoder_actor_busy, thread)
    thread.join(600)
    assert killed, f"the run ended before a {target} could be killed"
    assert "error" not in out, out.get("error")
    summary = out["summary"]
    assert (summary.indexed, summary.failed) == (len(CLIPS), 0), summary.failures
    assert_exactly_once(db, folder)
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    again = rerun(db, folder)
    assert (again.indexed, again.skipped) == (0, len(CLIPS))


def test_writer_killed_mid_run_then_rerun_indexes_each_video_once(folder, ray_session, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The driver is the single writer: SIGKILL it (by pid, from outside) as soon as its first content rows land."""
    db = tmp_path / "db"
    # The CLI starts its own local Ray: a driver SIGKILLed while attached to this session's cluster took the
    # test process down with it inside the full suite.
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "index", str(folder), "--config", "tiny", "--db", str(db)]
    cmd += ["--no-progress"] + [a for o in OVERRIDES for a in ("--set", o)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not (db / f"{S.FRAMES}.lance").exists():
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    store = Store(str(db), DIM)
    assert len(store.complete_ids()) < len(CLIPS)  # killed before the end
    summary = rerun(db, folder)
    assert summary.indexed + summary.skipped == len(CLIPS)


def _fail_once(original: Callable[..., Any], table: str, exc: BaseException) -> Callable[..., Any]:
    """Wraps the per-table commit (``pipeline.store.fragments.commit_table``) so that its first call on ``table``
    raises ``exc``."""
    fired = []

    def call(db_uri: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == table and not fired:
            fired.append(1)
            raise exc
        return original(db_uri, name, *args, **kwargs)

    return call


def test_lancedb_commit_failing_once_stops_the_run_and_a_rerun_recovers(
    folder, ray_session, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The segments commit of the first group fails (the frames of that group are already committed): the run
    stops with the storage error; the rerun deletes the half-committed video and indexes everything once."""
    import pipeline.store.db
    from pipeline.index.runner import run_index

    db = tmp_path / "db"
    failure = RuntimeError("lance error: Commit conflict for version 3 (injected)")
    monkeypatch.setattr(
        pipeline.store.db, "commit_table", _fail_once(pipeline.store.db.commit_table, S.SEGMENTS, failure)
    )
    with pytest.raises(RuntimeError, match="Commit conflict"):
        run_index(tiny_config(db, *OVERRIDES), [str(folder)], progress=False)
    gc.collect()  # the abandoned Ray Data iterator shuts its executor down now, not at exit (see the report)
    store = Store(str(db), DIM)
    assert store.count(S.FRAMES) > 0 and not store.complete_ids()  # half a commit is on disk, nothing complete
    monkeypatch.undo()
    summary = rerun(db, folder)
    assert summary.recovered >= 1 and summary.indexed == len(CLIPS)


@pytest.fixture
def small_disk(tmp_path):  # type: ignore[no-untyped-def]
    """A 256 KiB tmpfs for the database (a full run needs about 650 KiB) when this process may mount one (root
    on Linux), else None."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]
    ok = sys.platform == "linux" and os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    yield mnt if ok else None
    if ok:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_stops_the_run_with_enospc_and_a_rerun_after_freeing_space_finishes(
    folder, ray_session, small_disk, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from pipeline.index.runner import run_index

    if small_disk is not None:
        db = small_disk / "db"
    else:  # no tmpfs: every Store write after the first few raises ENOSPC at the storage boundary
        db = tmp_path / "db"
        calls = {"n": 0}
        upsert = Store._upsert

        def full(self: Store, name: str, rows: Any) -> None:
            calls["n"] += 1
            if calls["n"] > 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            upsert(self, name, rows)

        monkeypatch.setattr(Store, "_upsert", full)
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is LanceDB's; the message is what matters
        run_index(tiny_config(db, *OVERRIDES), [str(folder)], progress=False)
    gc.collect()
    assert "No space left on device" in str(info.value) or getattr(info.value, "errno", None) == errno.ENOSPC
    print(f"disk full ({'tmpfs' if small_disk else 'write hook'}): {type(info.value).__name__}: {info.value}")
    # Free space: grow the tmpfs in place (the half-written database stays), or lift the hook.
    if small_disk is not None:
        subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    monkeypatch.undo()
    summary = rerun(db, folder)
    assert summary.indexed + summary.skipped == len(CLIPS)


def test_table_left_half_created_by_a_killed_writer_is_usable(tmp_path) -> None:
    """What the writer leaves when killed inside ``create_table``: the table's folder with no version yet."""
    db = tmp_path / "db"
    Store(str(db), DIM).table(S.VIDEOS)
    (db / f"{S.FRAMES}.lance" / "_transactions").mkdir(parents=True)
    store = Store(str(db), DIM)
    assert store.exists(S.FRAMES)  # LanceDB lists it...
    assert store.rows(S.FRAMES).num_rows == 0  # ...and it reads as empty instead of "was not found"
    assert store.count(S.FRAMES) == 0


def test_recovery_after_a_kill_inside_create_table_repairs_the_table(tmp_path) -> None:
    """The next run's recovery (the first thing it does) meets the version-less folder before anything opens it."""
    db = tmp_path / "db"
    Store(str(db), DIM).table(S.VIDEOS)
    (db / f"{S.SEGMENTS}.lance" / "_transactions").mkdir(parents=True)
    store = Store(str(db), DIM)
    assert store.recover() == []
    store.table(S.SEGMENTS).add(S.table_schema(S.SEGMENTS, DIM).empty_table())
    assert Store(str(db), DIM).count(S.SEGMENTS) == 0
