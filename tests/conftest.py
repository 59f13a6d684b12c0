"""Shared fixtures: real media from ../shared/testdata, one Ray session, the tiny config, an indexed database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network from ultralytics in tests
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("VIDSEARCH_TESTDATA", ROOT.parent / "shared" / "testdata")).resolve()


def clip(rel: str) -> str:
    path = TESTDATA / rel
    if not path.exists():
        pytest.skip(f"test media {rel} is not available under {TESTDATA}")
    return str(path)


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.exists():
        pytest.skip(f"test media folder {TESTDATA} is missing")
    return TESTDATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, like this machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def tiny_config(db_path: str | Path, *overrides: str):
    from pipeline.config import load_config

    return load_config("tiny", [f"db.path={db_path}", *overrides])


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
    from pipeline.runner import run_index

    db = tmp_path_factory.mktemp("db") / "vidsearch_db"
    cfg = tiny_config(db)
    summary = run_index(cfg, [str(sample_folder)], progress=False)
    assert summary.failed == 0, summary.failures
    return cfg, summary


def pytest_collection_modifyitems(config, items) -> None:  # type: ignore[no-untyped-def]
    """Fault-injection tests run first, on a fresh Ray session: after the multi-node and browser tests they took
    the whole test process down (exit 1, no report); first in the run they pass, as they do on their own."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_faults.py") else 1)
