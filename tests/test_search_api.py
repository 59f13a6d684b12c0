"""One searcher behind three doors: the CLI (``run_pipeline.py search --json``), the Python API (``Searcher``)
and the HTTP API (``run_pipeline.py serve`` in a subprocess) return the same results for the same query."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.search.searcher import Searcher
from pipeline.store import schema as S
from tests.helpers import AUTH, ROOT, TOKEN, free_port


@pytest.fixture(scope="module")
def searcher(indexed_db) -> Searcher:
    cfg, _ = indexed_db
    return Searcher(cfg.db.path, cfg)


@pytest.fixture(scope="module")
def served(indexed_db) -> Iterator[str]:
    """``run_pipeline.py serve`` on a free port, its token from $VIDSEARCH_TOKEN."""
    cfg, _ = indexed_db
    port = free_port()
    cmd = [sys.executable, "run_pipeline.py", "serve", "--config", "tiny", "--db", cfg.db.path, "--port", str(port)]
    log = open(Path(cfg.db.path).parent / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "VIDSEARCH_TOKEN": TOKEN}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                if httpx.get(f"{url}/api/info", headers=AUTH, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not answer in 180 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _cli(args: list[str], db: str) -> list[dict[str, Any]]:
    cmd = [sys.executable, "run_pipeline.py", "search", *args, "--config", "tiny", "--db", db, "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _same(*result_lists: list[dict[str, Any]]) -> None:
    first = result_lists[0]
    assert first, "the query should find something"
    for other in result_lists[1:]:
        assert [r["id"] for r in other] == [r["id"] for r in first]
        for a, b in zip(first, other, strict=True):
            assert {k: v for k, v in a.items() if "score" not in k} == {k: v for k, v in b.items() if "score" not in k}
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)
            assert a["stage1_score"] == pytest.approx(b["stage1_score"], abs=1e-6)


def test_cli_python_and_http_agree(served, searcher, indexed_db, tmp_path) -> None:
    cfg, _ = indexed_db
    db = cfg.db.path
    with httpx.Client(base_url=served, timeout=300) as anon:
        assert anon.get("/api/videos").status_code == 401  # the token came from the environment

    http = httpx.Client(base_url=served, headers=AUTH, timeout=300)

    # 1. Text, segments, the default re-ranker (attention). (The CLI answers cases 2 and 3: each run costs a
    # cold start of the models.)
    python = [r.as_dict() for r in searcher.search(text="a person reading a book", k=5)]
    web = http.get("/api/search", params={"text": "a person reading a book", "k": 5}).json()["results"]
    _same(python, web)
    assert len(python) == 5 and any(r["score"] != r["stage1_score"] for r in python)  # re-ranked

    # 2. Text, tracks, no re-ranking, class and duration filters.
    tracks = searcher.store.rows(S.TRACKS, None, ["class_name", "duration_s"]).to_pylist()
    cls = tracks[0]["class_name"]
    filters = {"classes": [cls], "min_track_duration": 1.0}
    python = [
        r.as_dict() for r in searcher.search(text="a red flower", k=7, level="tracks", filters=filters, rerank=None)
    ]
    flags = ["--level", "tracks", "--class", cls, "--min-track-duration", "1", "--rerank", "none"]
    cli = _cli(["a red flower", "-k", "7", *flags], db)
    body = {"text": "a red flower", "k": 7, "level": "tracks", "filters": filters, "rerank": None}
    web = http.post("/api/search", json=body).json()["results"]
    _same(python, cli, web)
    assert all(r["class_name"] == cls and r["end_s"] - r["start_s"] >= 1.0 for r in python)

    # 3. An example image, frames, a time range.
    frame = searcher.store.rows(S.FRAMES, "t >= 1.0 AND t <= 3.0", ["frame_id"]).column("frame_id")[0].as_py()
    query = tmp_path / "query.jpg"
    query.write_bytes(searcher.thumbnail(frame) or b"")
    python = [
        r.as_dict()
        for r in searcher.search(image=query.read_bytes(), k=4, level="frames", filters={"time_range": (1, 3)})
    ]
    cli = _cli(["--image", str(query), "-k", "4", "--level", "frames", "--time-range", "1", "3"], db)
    web = http.post(
        "/api/search",
        files={"image": ("query.jpg", query.read_bytes(), "image/jpeg")},
        data={"k": "4", "level": "frames", "filters": json.dumps({"time_range": [1, 3]})},
    ).json()["results"]
    _same(python, cli, web)
    assert python[0]["id"] == frame and all(1 <= r["start_s"] <= 3 for r in python)
    http.close()
