"""The HTTP API on a live uvicorn over the indexed sample videos: bearer token on every route, search by
text and by uploaded image, videos and thumbnails, media with HTTP Range, traversal attempts (404), and clear
4xx JSON for bad input (never a 500)."""

from __future__ import annotations

import http.client
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.search.searcher import Searcher
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import AUTH, TOKEN, running

JSON = {"content-type": "application/json"}


def raw_get(base: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (no client-side normalisation of ``..`` or ``%2F``)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def searcher(indexed_db) -> Searcher:
    cfg, _ = indexed_db
    return Searcher(cfg.db.path, cfg)


@pytest.fixture(scope="module")
def live(indexed_db, searcher) -> Iterator[str]:
    cfg, _ = indexed_db
    with running(create_app(cfg, token=TOKEN, searcher=searcher)) as url:
        yield url


@pytest.fixture(scope="module")
def client(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live, headers=AUTH, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def videos(searcher) -> dict[str, dict]:
    """Indexed videos by file suffix (webm, avi, mkv)."""
    return {Path(v["path"]).suffix[1:]: v for v in searcher.store.complete_videos().to_pylist()}


# -- auth --------------------------------------------------------------------------------------------------------


def test_every_route_needs_the_token(live, videos, searcher) -> None:
    vid = videos["webm"]["video_id"]
    thumb = searcher.store.rows(S.THUMBNAILS, None, ["thumb_id"]).column("thumb_id")[0].as_py()
    routes = [
        "/api/info",
        "/api/search?text=a+dog",
        "/api/videos",
        f"/api/videos/{vid}",
        f"/api/thumbnails/{thumb}",
        f"/media/{vid}",
        "/static/app.js",
        "/no/such/route",
    ]
    with httpx.Client(base_url=live, timeout=120) as anon:
        for route in routes:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Cookie": "x=1"}]:
                res = anon.get(route, headers=headers)
                assert res.status_code == 401, (route, headers)
                assert res.json()["detail"].startswith("missing or wrong access token")
                assert res.headers["www-authenticate"] == "Bearer"
        assert anon.post("/api/search", json={"text": "a dog"}).status_code == 401
        page = anon.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"

        for route in routes[:-1]:
            assert anon.get(route, headers=AUTH).status_code == 200, route

        assert anon.post("/login", data={"token": "wrong"}).status_code == 401
        assert "vidsearch_session" not in anon.cookies
        ok = anon.post("/login", data={"token": TOKEN})
        assert ok.status_code == 303 and "httponly" in ok.headers["set-cookie"].lower()
        assert "samesite=strict" in ok.headers["set-cookie"].lower()
        for route in [*routes[:-1], "/"]:  # the page's <img> and <video> requests carry the cookie
            assert anon.get(route).status_code == 200, route


def test_token_from_the_environment_and_open_without_one(indexed_db, searcher, monkeypatch) -> None:
    cfg, _ = indexed_db
    monkeypatch.setenv("VIDSEARCH_TOKEN", "from-env")
    with running(create_app(cfg, searcher=searcher)) as url:
        assert httpx.get(f"{url}/api/videos").status_code == 401
        assert httpx.get(f"{url}/api/videos", headers={"Authorization": "Bearer from-env"}).status_code == 200
    monkeypatch.delenv("VIDSEARCH_TOKEN")
    with running(create_app(cfg, searcher=searcher)) as url:
        assert httpx.get(f"{url}/api/videos").status_code == 200
        assert httpx.get(f"{url}/login", follow_redirects=False).status_code == 303  # nothing to sign in to


# -- API ---------------------------------------------------------------------------------------------------------


def test_videos_and_thumbnails(client, searcher, videos) -> None:
    listed = client.get("/api/videos").json()
    assert listed["count"] == 3
    assert {v["video_id"] for v in listed["videos"]} == {v["video_id"] for v in videos.values()}

    vid = videos["webm"]["video_id"]
    one = client.get(f"/api/videos/{vid}").json()
    assert one["path"] == videos["webm"]["path"] and one["status"] == "complete"
    segments = searcher.store.rows(S.SEGMENTS, f"video_id = '{vid}'", ["segment_id"]).column("segment_id")
    assert sorted(s["segment_id"] for s in one["segments"]) == sorted(segments.to_pylist())
    assert [s["start_s"] for s in one["segments"]] == sorted(s["start_s"] for s in one["segments"])

    thumb_id = one["segments"][0]["thumb_id"]
    res = client.get(f"/api/thumbnails/{thumb_id}")
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    assert res.content == searcher.thumbnail(thumb_id) and res.content[:2] == b"\xff\xd8"

    for route in ["/api/videos/", "/api/thumbnails/"]:
        for bad in ["00000000-0000-0000-0000-000000000000", "nope", "%27%20OR%201%3D1", vid.upper()]:
            res = client.get(route + bad)
            assert res.status_code == 404, route + bad
            assert "no " in res.json()["detail"]


def test_search_by_text_get_and_post_agree(client, searcher, videos) -> None:
    vid = videos["avi"]["video_id"]
    params = {"text": "a person", "k": 5, "level": "frames", "video_ids": [vid], "time_range": [1, 5]}
    got = client.get("/api/search", params=params).json()
    body = {
        "text": "a person",
        "k": 5,
        "level": "frames",
        "filters": {"video_ids": [vid], "time_range": [1, 5]},
    }
    posted = client.post("/api/search", json=body).json()
    direct = searcher.search(text="a person", k=5, level="frames", filters={"video_ids": [vid], "time_range": (1, 5)})
    assert got["results"] == posted["results"] == [r.as_dict() for r in direct]
    assert got["count"] == 5 and got["rerank"] == "attention"
    assert all(r["video_id"] == vid and 1 <= r["start_s"] <= 5 for r in got["results"])

    plain = client.get("/api/search", params={"text": "a person", "rerank": "none", "level": "tracks"}).json()
    assert plain["rerank"] is None
    assert all(r["score"] == r["stage1_score"] for r in plain["results"])
    assert all(r["trajectory"] and r["class_name"] for r in plain["results"])


def test_search_by_uploaded_image_finds_that_frame(client, searcher) -> None:
    frame = searcher.store.rows(S.FRAMES, None, ["frame_id"]).column("frame_id")[5].as_py()
    jpeg = searcher.thumbnail(frame)
    res = client.post(
        "/api/search",
        files={"image": ("query.jpg", jpeg, "image/jpeg")},
        data={"level": "frames", "k": "3", "filters": "", "rerank": "default"},
    )
    assert res.status_code == 200, res.text
    hits = res.json()["results"]
    assert hits[0]["id"] == frame and hits[0]["stage1_score"] > 0.99  # near-duplicates work with random weights
    assert [h["id"] for h in hits] == [r.id for r in searcher.search(image=jpeg, k=3, level="frames")]


def test_concurrent_searches_run_at_once_and_match_sequential_results(indexed_db, searcher, monkeypatch) -> None:
    """No global lock around searching: two searches are inside ``Searcher.search`` at the same moment (a barrier
    that only two concurrent calls pass), and concurrent results equal the sequential ones."""
    cfg, _ = indexed_db
    texts = ["a person", "a flower in the wind", "a book", "hands", "a dog", "a red car", "people", "a table"]
    levels = ["segments", "frames", "tracks", "segments"] * 2
    pairs = list(zip(texts, levels, strict=True))
    expected = [[r.as_dict() for r in searcher.search(text=t, k=4, level=lv)] for t, lv in pairs]
    with running(create_app(cfg, token=TOKEN, searcher=searcher)) as url:
        with httpx.Client(base_url=url, headers=AUTH, timeout=300) as c:
            assert c.get("/api/search", params={"text": "warm up"}).status_code == 200  # loads the models once
        real, together = searcher.search, threading.Barrier(2, timeout=120)

        def paired(*args: Any, **kwargs: Any) -> Any:
            together.wait()  # serialised searches would never meet here: the barrier breaks and the request fails
            return real(*args, **kwargs)

        monkeypatch.setattr(searcher, "search", paired)

        def one(i: int) -> list[dict]:
            with httpx.Client(base_url=url, headers=AUTH, timeout=300) as c:
                res = c.get("/api/search", params={"text": texts[i], "k": 4, "level": levels[i]})
                assert res.status_code == 200, res.text
                return res.json()["results"]

        with ThreadPoolExecutor(len(texts)) as pool:
            got = list(pool.map(one, range(len(texts))))
    assert got == expected


# -- media -------------------------------------------------------------------------------------------------------


def test_media_streams_the_indexed_file_with_ranges(client, videos) -> None:
    v = videos["webm"]
    data = Path(v["path"]).read_bytes()
    full = client.get(f"/media/{v['video_id']}")
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "video/webm"

    part = client.get(f"/media/{v['video_id']}", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert client.get(f"/media/{v['video_id']}", headers={"Range": "bytes=-500"}).content == data[-500:]
    tail = client.get(f"/media/{v['video_id']}", headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    beyond = client.get(f"/media/{v['video_id']}", headers={"Range": f"bytes={len(data) + 5}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    head = client.head(f"/media/{v['video_id']}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data) and not head.content


def test_traversal_and_paths_in_the_request_get_404(live, videos, tmp_path) -> None:
    v = videos["webm"]
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET")
    link = tmp_path / "escape.webm"
    link.symlink_to(outside)
    attempts = [
        "/media/../../etc/passwd",
        "/media/..%2F..%2F..%2Fetc%2Fpasswd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/media/%252e%252e%252fetc%252fpasswd",
        "/media/..%5c..%5cetc%5cpasswd",
        "/media/%2Fetc%2Fpasswd",
        "/media//etc/passwd",
        f"/media/{v['path']}",
        f"/media/{v['path'].replace('/', '%2F')}",
        f"/media/{Path(v['path']).name}",
        "/media/escape.webm",
        f"/media/{link}",
        f"/media/{str(link).replace('/', '%2F')}",
        f"/media/{v['video_id']}/../../../../etc/passwd",
        f"/media/{v['video_id']}%2F..%2F..%2Fetc%2Fpasswd",
        f"/media/{v['video_id']}%00",
        f"/media/{v['video_id']}.webm",
        "/media/C:%5CWindows%5Cwin.ini",
        "/media/",
        "/static/../pipeline/serve/app.py",
        "/static/%2e%2e/server.py",
        "/static/..%2Fserver.py",
        "/api/thumbnails/..%2F..%2Fetc%2Fpasswd",
    ]
    for target in attempts:
        status, body = raw_get(live, target, AUTH)
        assert status in (404, 400), (target, status)  # 400: the HTTP parser refused the target outright
        assert b"TOP SECRET" not in body and b"root:" not in body and b"import" not in body, target


def test_media_only_for_the_indexed_regular_file_inside_the_roots(indexed_db, tmp_path, videos) -> None:
    """Paths that changed after indexing: a symlink leading out of the archive, a file swapped for a link."""
    cfg, _ = indexed_db
    db = tmp_path / "db"
    shutil.copytree(cfg.db.path, db)
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    archive.mkdir()
    elsewhere.mkdir()
    webm, mkv, avi = videos["webm"], videos["mkv"], videos["avi"]
    shutil.copy2(webm["path"], archive / "inside.webm")  # copy2 keeps the modification time, as a move does
    shutil.copy2(mkv["path"], elsewhere / "outside.mkv")
    (archive / "escape.mkv").symlink_to(elsewhere / "outside.mkv")  # a link from the archive to outside it
    (archive / "swapped.avi").symlink_to("/etc/hostname")  # the indexed file replaced by a link elsewhere
    store = Store(str(db), 64)
    store.update_path(webm["video_id"], str(archive / "inside.webm"))
    store.update_path(mkv["video_id"], str(archive / "escape.mkv"))
    store.update_path(avi["video_id"], str(archive / "swapped.avi"))

    copy_cfg = cfg.model_copy(update={"db": cfg.db.model_copy(update={"path": str(db)})})
    with running(create_app(copy_cfg, media_roots=[str(archive)])) as url:
        assert httpx.get(f"{url}/media/{webm['video_id']}").status_code == 200
        assert httpx.get(f"{url}/media/{mkv['video_id']}").status_code == 404  # resolves outside the roots
        assert httpx.get(f"{url}/media/{avi['video_id']}").status_code == 404  # not the file that was indexed
    with running(create_app(copy_cfg)) as url:  # without roots any indexed file may play, still not a swap
        assert httpx.get(f"{url}/media/{mkv['video_id']}").status_code == 200
        assert httpx.get(f"{url}/media/{avi['video_id']}").status_code == 404
    os.remove(archive / "inside.webm")
    with running(create_app(copy_cfg)) as url:
        assert httpx.get(f"{url}/media/{webm['video_id']}").status_code == 404  # gone


# -- errors ------------------------------------------------------------------------------------------------------


def _chunked(text: bytes) -> Iterator[bytes]:
    """A JSON body sent without Content-Length (chunked), so only the server's streaming cap can stop it."""
    yield b'{"text": "'
    for i in range(0, len(text), 2**16):
        yield text[i : i + 2**16]
    yield b'"}'


def test_bad_input_gets_a_clear_4xx_never_a_500(client, monkeypatch) -> None:
    long = "a" * 1001
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/api/search", {"params": {"text": ""}}, 400, "empty"),
        ("GET", "/api/search", {"params": {}}, 400, "exactly one"),
        ("GET", "/api/search", {"params": {"text": long}}, 400, "longer than 1000"),
        ("GET", "/api/search", {"params": {"text": "a", "k": 0}}, 400, "k must be"),
        ("GET", "/api/search", {"params": {"text": "a", "k": "ten"}}, 422, "k"),
        ("GET", "/api/search", {"params": {"text": "a", "level": "videos"}}, 422, "level"),
        ("GET", "/api/search", {"params": {"text": "a", "rerank": "nope"}}, 400, "unknown re-ranker"),
        ("GET", "/api/search", {"params": {"text": "a", "rerank": "vilt"}}, 503, "search.rerankers.vilt"),
        ("GET", "/api/search", {"params": {"text": "a", "time_range": [1]}}, 422, "time_range"),
        ("GET", "/api/search", {"params": {"text": "a", "time_range": [5, 1]}}, 422, "time_range"),
        ("GET", "/api/search", {"params": {"text": "a", "min_track_duration": 1}}, 400, "tracks"),
        ("GET", "/api/search", {"params": {"text": "a", "video_ids": ["x\x00y"]}}, 422, "NUL"),
        ("POST", "/api/search", {"content": b"{not json", "headers": JSON}, 422, ""),
        ("POST", "/api/search", {"json": ["a"]}, 422, "JSON object"),
        ("POST", "/api/search", {"json": {"text": "a", "where": "1=1"}}, 422, "where"),
        ("POST", "/api/search", {"json": {"text": "a", "filters": {"video_id": ["x"]}}}, 422, "video_id"),
        (
            "POST",
            "/api/search",
            {"content": rb'{"text": "a", "filters": {"classes": ["\ud800"]}}', "headers": JSON},
            422,
            "Unicode",
        ),
        ("POST", "/api/search", {"json": {"text": "a", "filters": {"path_glob": "x" * 5000}}}, 422, "path_glob"),
        ("POST", "/api/search", {"json": {"text": 5}}, 422, "text"),
        ("POST", "/api/search", {"json": {"text": "a", "image": "/etc/passwd"}}, 422, "image"),
        ("POST", "/api/search", {"files": {"image": ("x.jpg", b"GIF89a;'--", "image/jpeg")}}, 400, "not a readable"),
        ("POST", "/api/search", {"files": {"image": ("x.jpg", b"", "image/jpeg")}}, 400, "not a readable"),
        ("POST", "/api/search", {"files": {"image": ("x.jpg", b"\xff\xd8" * 600, "image/jpeg")}}, 413, "larger"),
        ("POST", "/api/search", {"files": {"image": ("x.jpg", b"0" * 70_000, "image/jpeg")}}, 413, "request is larger"),
        ("POST", "/api/search", {"content": _chunked(b"a" * 2**21), "headers": JSON}, 413, "JSON request must be"),
        ("POST", "/api/search", {"content": b"\xff\xfe{}", "headers": JSON}, 422, "not valid JSON"),
        ("POST", "/api/search", {"data": {"text": "a", "filters": "{oops"}}, 422, "filters"),
        ("POST", "/api/search", {"content": b"[" * 20_000, "headers": JSON}, 422, "not valid JSON"),
        ("POST", "/api/search", {"data": {"text": "a", "filters": "[" * 20_000}}, 422, "filters"),
        ("POST", "/api/search", {"data": {"text": "a", "k": "many"}}, 422, "k"),
    ]
    monkeypatch.setattr("pipeline.serve.app.MAX_UPLOAD_BYTES", 1000)
    for method, url, kwargs, status, needle in cases:
        res = client.request(method, url, **kwargs)
        assert res.status_code == status, (url, kwargs, res.status_code, res.text)
        detail = res.json()["detail"]
        assert needle in (detail if isinstance(detail, str) else str(detail)), (kwargs, detail)


def test_the_page_and_its_assets_are_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ['id="text"', 'id="image"', 'id="level"', 'id="results"', 'id="video"', "/static/app.js"]:
        assert needle in page.text
    assert "currentTime" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
