"""Shared fixtures: real media from ../shared/testdata, one Ray session, the tiny config, an indexed database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TESTDATA, tiny_config

os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network from ultralytics in tests
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.exists():
        pytest.skip(f"test media folder {TESTDATA} is missing")
    return TESTDATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, like this machine)."""
    import ray

    from pipeline.logs import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _session_ray_talks_to_its_own_gcs():
    """After each test, the session's driver still sends its internal-KV calls to its own GCS. Ray's state API
    given another cluster's GCS address re-points them there (see tests/test_cluster.py); once that cluster
    stopped, the driver terminated the whole test process 60 s later with no report."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    from ray.experimental import internal_kv

    own, client = ray.get_runtime_context().gcs_address, internal_kv.internal_kv_get_gcs_client()
    if client is not None and client.address != own:
        internal_kv._initialize_internal_kv(ray._private.worker.global_worker.gcs_client)  # keep the session alive
        pytest.fail(f"this test pointed the session driver's internal KV at another Ray cluster ({client.address})")


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory, testdata) -> Path:
    """A folder of three real clips of different containers/codecs (copied so tests may add files beside them)."""
    folder = tmp_path_factory.mktemp("videos")
    for rel in ("mdn/flower.webm", "mmaction2/test.avi", "intel_sample_videos/asl_gestures/book.mkv"):
        shutil.copy(testdata / rel, folder / Path(rel).name)
    return folder


@pytest.fixture(scope="session")
def indexed_db(tmp_path_factory, sample_folder, ray_session):
    """The sample folder indexed once with the tiny config; tests must not modify it (copy it first)."""
    from pipeline.index.runner import run_index

    db = tmp_path_factory.mktemp("db") / "vidsearch_db"
    cfg = tiny_config(db)
    summary = run_index(cfg, [str(sample_folder)], progress=False)
    assert summary.failed == 0, summary.failures
    return cfg, summary


@pytest.fixture(scope="session")
def text_clip(testdata, tmp_path_factory) -> Path:
    """A folder holding one real clip (6 s) with ``GATE`` ("GATE 7 CLOSED", tests/helpers.py) drawn in by ffmpeg."""
    from pipeline.evaluation.ocr_clips import FONT_DIR, ClipSpec, build_clip
    from tests.helpers import GATE

    if shutil.which("ffmpeg") is None or not (FONT_DIR / GATE.font).exists():
        pytest.skip("ffmpeg and the DejaVu fonts are needed to draw text into clips (.ci/run installs them)")
    spec = ClipSpec(id="gate", source="intel_sample_videos/car-detection.mp4", duration=6.0, texts=[GATE])
    video, _ = build_clip(spec, testdata, tmp_path_factory.mktemp("ocr_clip"))
    folder = tmp_path_factory.mktemp("ocr_videos")
    shutil.copy(video, folder / "gate.mp4")
    return folder


@pytest.fixture(scope="session")
def text_db(tmp_path_factory, text_clip, ray_session):
    """``text_clip`` indexed once on Ray with the tiny config and the bundled OCR models on every sampled frame
    (detection off: it reads no text); tests must not modify it."""
    from pipeline.index.runner import run_index

    db = tmp_path_factory.mktemp("text_db") / "vidsearch_db"
    cfg = tiny_config(db, "ocr.engine=rapidocr", "ocr.select=all", "detect.enabled=false")
    summary = run_index(cfg, [str(text_clip)], progress=False)
    assert summary.failed == 0, summary.failures
    return cfg, summary


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright, one for the session (skipped where either is missing)."""
    from tests.helpers import CHROMIUM

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def media_db(tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """A database written directly (no indexing) whose only complete video is a copy of a real .webm clip,
    recorded as the index records it: size, fingerprint and modification time."""
    import lancedb
    import pyarrow as pa

    from pipeline.index.catalog import fingerprint
    from pipeline.store import schema as S

    src = TESTDATA / "mdn" / "flower.webm"
    if not src.exists():
        pytest.skip(f"{src} is missing")
    archive = tmp_path / "archive"
    archive.mkdir()
    path = archive / "clip.webm"
    shutil.copy(src, path)
    size, fp = fingerprint(str(path))
    row = {
        "video_id": S.make_id("video", fp), "fingerprint": fp, "path": str(path), "size_bytes": size,
        "duration_s": 5.0, "fps": 24.0, "n_frames": 120, "width": 640, "height": 360, "rotation": 0,
        "backend": "pyav", "n_samples": 5, "status": S.STATUS_COMPLETE, "pipeline_version": "test", "run_id": "",
        "indexed_at": None, "mtime_ns": path.stat().st_mtime_ns,
    }  # fmt: skip
    cfg = tiny_config(tmp_path / "db")
    lancedb.connect(cfg.db.path).create_table(S.VIDEOS, pa.Table.from_pylist([row], schema=S.videos_schema()))
    return cfg, row
