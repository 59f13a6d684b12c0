"""``index``'s exit code says what happened (``pipeline/errors.py``): 0 when every video indexed,
``EXIT_SOME_FAILED`` when some failed beside others that indexed, ``EXIT_NOTHING_INDEXED`` when none of those it
tried indexed, ``Incomplete`` ones (the graph ended without a video's result: its assembler lost it) included.

The lost results are made by dropping a video's result rows from the graph's output before the driver reads
them: what the driver sees when an assembler dies with a video's frames. In-process with the session's Ray.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

import pipeline.index.ingest
from pipeline.cli import main
from pipeline.errors import EXIT_NOTHING_INDEXED, EXIT_OK, EXIT_SOME_FAILED
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import TINY_DIM


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys, ray_session):  # type: ignore[no-untyped-def]
    """``main([...])`` in-process; returns (exit code, stdout, stderr); the root logger restored after."""
    monkeypatch.setenv("VIDSEARCH_LOG_DIR", str(tmp_path / "logs"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main([*argv, "--config", "tiny", "--no-progress"])
        out = capsys.readouterr()
        return rc, out.out, out.err

    yield run
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)


def _lose_results_of(monkeypatch, names: set[str]) -> None:  # type: ignore[no-untyped-def]
    """The graph's result rows of the videos at these file names never reach the driver."""
    build = pipeline.index.ingest.build_dataset

    def losing(cfg, items, *args, **kwargs):  # type: ignore[no-untyped-def]
        lost = {i["video_id"] for i in items if Path(i["path"]).name in names}
        return build(cfg, items, *args, **kwargs).filter(lambda row: row["video_id"] not in lost)

    monkeypatch.setattr(pipeline.index.ingest, "build_dataset", losing)


def _folder(tmp_path: Path, sample_folder: Path, *names: str) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in names:
        shutil.copy(sample_folder / name, folder / name)
    return folder


def test_some_videos_failed_and_an_incomplete_one_is_recorded(cli, monkeypatch, tmp_path, sample_folder) -> None:  # type: ignore[no-untyped-def]
    folder = _folder(tmp_path, sample_folder, "flower.webm", "book.mkv")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 100)
    _lose_results_of(monkeypatch, {"book.mkv"})
    db = str(tmp_path / "db")
    rc, out, err = cli("index", str(folder), "--db", db)
    assert rc == EXIT_SOME_FAILED, err[-3000:]
    assert "videos: 1 indexed" in out and "2 failed" in out
    failures = {Path(f["path"]).name: f for f in Store(db, TINY_DIM).rows(S.FAILURES).to_pylist()}
    assert (failures["book.mkv"]["stage"], failures["book.mkv"]["error_type"]) == ("pipeline", "Incomplete")
    assert failures["broken.mp4"]["stage"] == "decode"
    assert len(Store(db, TINY_DIM).complete_ids()) == 1  # flower; the incomplete video left nothing behind
    assert Store(db, TINY_DIM).status_counts().get(S.STATUS_STARTED, 0) == 0


def test_nothing_indexed_is_its_own_exit_code_and_a_rerun_of_a_done_folder_is_ok(  # type: ignore[no-untyped-def]
    cli, monkeypatch, tmp_path, sample_folder
) -> None:
    folder = _folder(tmp_path, sample_folder, "flower.webm")
    db = str(tmp_path / "db")
    with monkeypatch.context() as m:
        _lose_results_of(m, {"flower.webm"})
        rc, out, err = cli("index", str(folder), "--db", db)
    assert rc == EXIT_NOTHING_INDEXED, err[-3000:]
    assert "videos: 0 indexed" in out and "1 failed" in out
    rc, out, err = cli("index", str(folder), "--db", db)  # the Incomplete video is retried, and indexes
    assert rc == EXIT_OK, err[-3000:]
    assert "videos: 1 indexed" in out
    rc, out, err = cli("index", str(folder), "--db", db)  # nothing to do is not a failure
    assert rc == EXIT_OK and "1 skipped" in out, err[-3000:]


def test_a_shot_detection_failure_is_recorded_and_the_video_indexed_as_one_shot(cli, tmp_path, sample_folder) -> None:  # type: ignore[no-untyped-def]
    """Shots are refused past ``shots.max_frames`` (a real limit of the detector's reader); decode reads the same
    file fine, so the video is indexed as one shot and the reason is a failure record of stage ``shots``."""
    folder = _folder(tmp_path, sample_folder, "flower.webm")
    db = str(tmp_path / "db")
    rc, out, err = cli("index", str(folder), "--db", db, "--set", "segments.shots={detector: content, max_frames: 5}")
    assert rc == EXIT_OK, err[-3000:]
    assert "videos: 1 indexed" in out and "1 videos indexed as one shot" in out
    store = Store(db, TINY_DIM)
    (failure,) = store.rows(S.FAILURES).to_pylist()
    assert (failure["stage"], failure["error_type"]) == ("shots", "ShotDetectionError")
    assert "max_frames" in failure["message"] and not failure["quarantined"]
    assert len(store.complete_ids()) == 1
    assert set(store.rows(S.SEGMENTS, columns=["shot_idx"]).column("shot_idx").to_pylist()) == {0}
