"""What several test modules share: paths and test media, the tiny config, synthetic store rows, table
comparison, and a live server. Test modules import from here, never from each other or from ``conftest.py``."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.evaluation.ocr_clips import DrawnText
from pipeline.store import schema as S
from pipeline.store.db import Store

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("VIDSEARCH_TESTDATA", ROOT.parent / "shared" / "testdata")).resolve()


def clip(rel: str) -> str:
    path = TESTDATA / rel
    if not path.exists():
        pytest.skip(f"test media {rel} is not available under {TESTDATA}")
    return str(path)


#: On-screen text drawn into a real clip by tests that read text (the ``text_clip`` fixture).
GATE = DrawnText(text="GATE 7 CLOSED", start=1.4, end=4.6, font="DejaVuSans-Bold.ttf", size=36, x=0.08, y=0.72)

#: The tiny config with a randomly initialised YOLO11n made to box every frame (it scores every box near 2e-4), for
#: tests about the code around detection that need boxes and tracks on clips with no objects (the sample flower).
RANDOM_BOXES = (
    "detect.model=yolo11n.yaml",
    "detect.imgsz=160",
    "detect.conf=0.0001",
    "detect.max_det=8",
    "detect.tracker_config=configs/trackers/bytetrack-random.yaml",
)

TINY_DIM = 64  # the tiny config's embedding width
SYNTHETIC_DIM = 8  # the width of the synthetic rows below


def gate_manifest(path: Path) -> Path:
    """A small OCR manifest written to ``path``: a 4 s real clip with GATE drawn in, a 3 s distractor without text,
    and two queries for it (exact, and with one OCR error)."""
    import yaml

    manifest = {
        "kind": "ocr",
        "clips": [
            {"id": "gate", "source": "intel_sample_videos/car-detection.mp4", "duration": 4.0,
             "texts": [GATE.model_dump()]},
            {"id": "other", "source": "intel_sample_videos/car-detection.mp4", "offset": 20.0, "duration": 3.0},
        ],
        "queries": [
            {"id": "exact", "clip": "gate", "target": 0, "text": "GATE 7 CLOSED"},
            {"id": "typo", "clip": "gate", "target": 0, "kind": "one-error", "text": "GATE 7 CL0SED"},
        ],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(manifest))
    return path


def tiny_config(db_path: str | Path, *overrides: str):
    from pipeline.config import load_config

    return load_config("tiny", [f"db.path={db_path}", *overrides])


def video_row(vid: str, path: str = "/videos/x.mp4", version: str = "v1") -> dict:
    return {
        "video_id": vid,
        "fingerprint": f"fp-{vid}",
        "path": path,
        "size_bytes": 1,
        "duration_s": 4.0,
        "fps": 25.0,
        "n_frames": 100,
        "width": 64,
        "height": 48,
        "rotation": 0,
        "backend": "test",
        "n_samples": 4,
        "status": S.STATUS_STARTED,
        "pipeline_version": version,
        "run_id": "",
        "indexed_at": None,
    }


def content(
    vid: str, times: list[float], seed: int = 0, classes: tuple[str, ...] = ("person", "dog"), dim: int = SYNTHETIC_DIM
) -> dict:
    """One video's rows for every content table; keys derive from (video, t) like the assembler's. ``dim``: the
    embedding width (``TINY_DIM`` where the tiny config's encoder must query them)."""
    rng = np.random.default_rng(seed)
    n = len(times)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * dim).astype(np.float32)), dim)
    fid = [S.make_id("frame", vid, t) for t in times]
    names = [[classes[i % len(classes)]] for i in range(n)]
    frames = S.columns_table(
        {
            "frame_id": fid,
            "video_id": [vid] * n,
            "t": pa.array(times, pa.float64()),
            "frame_idx": pa.array([int(t * 25) for t in times], pa.int64()),
            "embedding": emb,
            "boxes": pa.array([[] for _ in times], pa.list_(S.BOX)),
            "class_names": pa.array(names, pa.list_(pa.string())),
        },
        schema=S.frames_schema(dim),
    )
    segments = S.columns_table(
        {
            "segment_id": [S.make_id("segment", vid, t) for t in times],
            "video_id": [vid] * n,
            "start_s": pa.array(times, pa.float64()),
            "end_s": pa.array([t + 1 for t in times], pa.float64()),
            "n_frames": pa.array([1] * n, pa.int32()),
            "embedding": emb,
            "thumb_id": fid,
            "class_names": pa.array(names, pa.list_(pa.string())),
        },
        schema=S.segments_schema(dim),
    )
    tracks = pa.table(
        {
            "track_id": [S.make_id("track", vid, i) for i in range(n)],
            "video_id": [vid] * n,
            "tracker_id": pa.array(range(n), pa.int64()),
            "class_name": [classes[i % len(classes)] for i in range(n)],
            "conf_mean": pa.array([0.5] * n, pa.float32()),
            "t_first": pa.array(times, pa.float64()),
            "t_last": pa.array(times, pa.float64()),
            "duration_s": pa.array([0.0] * n, pa.float64()),
            "n_obs": pa.array([1] * n, pa.int32()),
            "trajectory": pa.array([[] for _ in times], pa.list_(S.OBSERVATION)),
            "embedding": emb,
            "best_t": pa.array(times, pa.float64()),
            "best_box": pa.array([[0.1, 0.1, 0.5, 0.5]] * n, pa.list_(pa.float32(), 4)),
            "thumb_id": fid,
        },
        schema=S.tracks_schema(dim),
    )
    thumbs = pa.table(
        {
            "thumb_id": fid,
            "video_id": [vid] * n,
            "t": pa.array(times, pa.float64()),
            "width": pa.array([4] * n, pa.int32()),
            "height": pa.array([3] * n, pa.int32()),
            "jpeg": pa.array([b"jpeg"] * n, pa.binary()),
        },
        schema=S.thumbnails_schema(),
    )
    return {S.FRAMES: frames, S.SEGMENTS: segments, S.TRACKS: tracks, S.THUMBNAILS: thumbs}


def tables_of(*groups: dict) -> dict[str, list[pa.Table]]:
    return {name: [g[name] for g in groups if name in g] for name in S.CONTENT_TABLES}


def table(store: Store, name: str) -> pa.Table:
    return store.rows(name).sort_by(S.KEYS[name])


def assert_same_tables(got: Store, want: Store) -> None:
    """Same ids in every table, no duplicates, nothing missing, same content (embeddings up to float noise)."""
    for name in (S.VIDEOS, *S.CONTENT_TABLES):
        a, b = table(got, name), table(want, name)
        key = S.KEYS[name]
        ids = a.column(key).to_pylist()
        assert len(ids) == len(set(ids)), f"duplicate keys in {name}"
        assert ids == b.column(key).to_pylist(), f"{name}: different ids"
        if name == S.VIDEOS:
            assert set(a.column("status").to_pylist()) == {S.STATUS_COMPLETE}
            for col in ("fingerprint", "path", "n_samples", "pipeline_version"):
                assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
        if "embedding" in a.column_names:
            ea = np.asarray(a.column("embedding").to_pylist(), np.float32)
            eb = np.asarray(b.column("embedding").to_pylist(), np.float32)
            np.testing.assert_allclose(ea, eb, atol=2e-4, err_msg=name)


TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app, **settings) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 in a thread with the settings ``serve`` uses
    (``pipeline/serve/server.py``; ``settings`` override them); yields its base URL."""
    import uvicorn

    from pipeline.serve.server import server_config

    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, **settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def http_request(
    base: str,
    method: str,
    target: str,
    headers: dict[str, Any] | list[tuple[str, Any]] | None = None,
    body: bytes = b"",
) -> Any:
    """A request with headers sent byte for byte (Host included; a list may repeat a header), so tests choose
    exactly what arrives. The response carries its body as ``.body``."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, target, skip_host=any(k == "Host" for k, _ in items), skip_accept_encoding=True)
        for key, value in items:
            conn.putheader(key, value)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        res = conn.getresponse()
        res.body = res.read()
        return res
    finally:
        conn.close()


def killed_mid_commit_env(nth: int) -> dict[str, str]:
    """The environment of a CLI run that SIGKILLs itself in its ``nth`` commit, after the content tables are
    committed and before the videos are marked complete (see ``tests/faultinject/sitecustomize.py``)."""
    hooks = str(ROOT / "tests" / "faultinject")
    path = os.pathsep.join(p for p in (hooks, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "VIDSEARCH_FAULT": f"after-rows:{nth}"}


CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium, driven by Playwright in the browser tests (never a download)


def wait_until(page, expression: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a JavaScript expression through the debugging protocol (``page.wait_for_function`` evaluates its
    predicate with ``eval`` inside the page, which the page's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout_s:.0f} s: {expression}")
        page.wait_for_timeout(100)
