"""The server's second round of hostile-client findings (issue 22): image decodes bounded in size and in number,
forwarded addresses believed only from a configured proxy, every wrong token counted, huge Range numbers, sign-out,
slow heads and bodies cut off and a per-client connection cap, hang-ups logged quietly, files edited since
indexing, paths relative to the media root, cross-origin POSTs, no CDN page, and repeated headers. Runs on a
database written directly (``media_db``), against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageFile

from pipeline.errors import SearchError
from pipeline.index.catalog import fingerprint, list_videos
from pipeline.search.images import DECODE_SIDE, load_image
from pipeline.serve.app import DECODE_SLOTS, create_app
from tests.helpers import http_request, running

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def encoded(size: tuple[int, int], fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, fmt, **options)
    return out.getvalue()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (bounded by the socket's 10 s timeout)."""
    out = b""
    while part := sock.recv(4096):
        out += part
    return out


# -- 1: image decodes --------------------------------------------------------------------------------------------


def test_images_are_decoded_no_larger_than_the_encoder_needs(media_db, monkeypatch) -> None:
    decoded: list[tuple[int, int]] = []  # the size of every image Pillow actually decodes
    real = ImageFile.ImageFile.load

    def recording(self: Any) -> Any:
        decoded.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    bomb = encoded((4100, 4000), "PNG")  # 49 KB that decode to 49 MB of RGB
    with pytest.raises(SearchError, match="too large"):
        load_image(bomb)
    assert decoded == []  # refused on its header
    with pytest.raises(SearchError, match="too large"):
        load_image(encoded((4800, 3400), "JPEG", progressive=True))  # progressive: decoded at full size
    assert decoded == []

    rgb = load_image(encoded((4800, 3400), "JPEG"))  # a 16.3 MP baseline JPEG: DCT-scaled while decoding
    assert max(w * h for w, h in decoded) <= 1200 * 850, decoded
    assert min(rgb.shape[:2]) == DECODE_SIDE
    assert load_image(encoded((64, 48), "PNG")).shape == (48, 64, 3)  # small images stay as they are

    cfg, _ = media_db
    with running(create_app(cfg, token=None)) as url:
        res = httpx.post(f"{url}/api/search", files={"image": ("b.png", bomb, "image/png")}, timeout=60)
    assert res.status_code == 400 and "too large" in res.json()["detail"]


def test_decodes_beyond_the_slots_are_refused_with_retry_after(media_db) -> None:
    cfg, _ = media_db
    app = create_app(cfg, token=None)
    slots = app.state.decode_slots
    png = encoded((64, 48), "PNG")
    with running(app) as url:
        for _ in range(DECODE_SLOTS):
            assert slots.acquire(blocking=False)  # every slot taken, as by uploads still decoding
        try:
            busy = httpx.post(f"{url}/api/search", files={"image": ("q.png", png, "image/png")}, timeout=60)
        finally:
            for _ in range(DECODE_SLOTS):
                slots.release()
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
        assert busy.headers["x-content-type-options"] == "nosniff"
        text_search = httpx.post(f"{url}/api/search", json={"text": "a flower", "k": 1}, timeout=300)
        assert text_search.status_code == 200  # only image decodes take a slot


# -- 2, 3: the failure limit -------------------------------------------------------------------------------------


def test_forwarded_for_is_believed_only_from_a_configured_proxy(media_db) -> None:
    cfg, _ = media_db
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with running(create_app(cfg, token=TOKEN, login_attempts=(3, 600.0))) as url:
        codes = [
            http_request(url, "POST", "/login", {**form, "X-Forwarded-For": f"10.0.0.{i}"}, b"token=guess").status
            for i in range(4)
        ]
        assert codes == [401, 401, 401, 429]  # the socket peer is the client, whatever the header says
        right = http_request(url, "POST", "/login", {**form, "X-Forwarded-For": "10.9.9.9"}, f"token={TOKEN}".encode())
        assert right.status == 429

    with running(create_app(cfg, token=TOKEN, login_attempts=(3, 600.0)), trusted_proxies=["127.0.0.1"]) as url:
        for _ in range(3):
            http_request(url, "POST", "/login", {**form, "X-Forwarded-For": "10.0.0.1"}, b"token=guess")
        assert http_request(url, "POST", "/login", {**form, "X-Forwarded-For": "10.0.0.1"}, b"token=x").status == 429
        other = http_request(url, "POST", "/login", {**form, "X-Forwarded-For": "10.0.0.2"}, f"token={TOKEN}".encode())
        assert other.status == 303  # behind the proxy each client is counted by its forwarded address

    from pipeline.cli import parser

    args = parser().parse_args(["serve", "--trusted-proxy", "10.1.1.1", "--trusted-proxy", "10.1.1.2"])
    assert args.trusted_proxies == ["10.1.1.1", "10.1.1.2"]


def test_wrong_bearer_tokens_count_against_the_limit_on_every_route(media_db) -> None:
    cfg, row = media_db
    with running(create_app(cfg, token=TOKEN, login_attempts=(3, 600.0))) as url:
        stale = {"Cookie": "vidsearch_session=" + "x" * 43}
        assert [http_request(url, "GET", "/api/info", stale).status for _ in range(5)] == [401] * 5  # no guess
        wrong = {"Authorization": "Bearer guess"}
        routes = ["/api/info", f"/media/{row['video_id']}", "/api/videos"]
        assert [http_request(url, "GET", r, wrong).status for r in routes] == [401] * 3
        for target in ["/api/info", "/api/search?text=a", f"/media/{row['video_id']}"]:
            locked = http_request(url, "GET", target, AUTH)  # even the right token waits now
            assert locked.status == 429 and int(locked.getheader("retry-after")) > 0, target
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert http_request(url, "POST", "/login", form, f"token={TOKEN}".encode()).status == 429  # one limit


# -- lows --------------------------------------------------------------------------------------------------------


def test_a_range_with_thousands_of_digits_is_answered_never_a_500(media_db) -> None:
    cfg, row = media_db
    data = Path(row["path"]).read_bytes()
    huge = "9" * 5000
    with running(create_app(cfg, token=None)) as url:
        target = f"/media/{row['video_id']}"
        beyond = http_request(url, "GET", target, {"Range": f"bytes={huge}-"})
        assert beyond.status == 416 and beyond.getheader("content-range") == f"bytes */{len(data)}"
        assert beyond.getheader("x-frame-options") == "DENY"
        for value in [f"bytes=0-{huge}", f"bytes=-{huge}"]:
            whole = http_request(url, "GET", target, {"Range": value})
            assert whole.status == 206 and whole.body == data, value
        assert http_request(url, "GET", target, {"Range": f"bytes={huge}-1"}).status == 200  # last < first: ignored


def test_logout_ends_the_session_and_clears_the_cookie(media_db) -> None:
    cfg, _ = media_db
    with running(create_app(cfg, token=TOKEN)) as url:
        with httpx.Client(base_url=url, timeout=60) as browser:
            assert browser.post("/login", data={"token": TOKEN}).status_code == 303
            sid = browser.cookies["vidsearch_session"]
            assert browser.get("/api/info").status_code == 200
            out = browser.post("/logout")
            assert out.status_code == 303 and out.headers["location"] == "/login"
            assert 'vidsearch_session=""' in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
            assert "vidsearch_session" not in browser.cookies
        replayed = http_request(url, "GET", "/api/info", {"Cookie": f"vidsearch_session={sid}"})
        assert replayed.status == 401  # the session ended on the server, not only in the browser


def test_slow_heads_and_bodies_are_cut_off(media_db) -> None:
    cfg, _ = media_db
    with running(create_app(cfg, token=TOKEN, body_timeout_s=0.5), head_timeout_s=0.5) as url:
        slow_head = connect(url)
        slow_head.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
        assert read_all(slow_head) == b""  # closed by the server long before the socket's own timeout
        slow_head.close()

        silent = connect(url)  # connects and sends nothing
        assert read_all(silent) == b""
        silent.close()

        slow_body = connect(url)
        head = "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        slow_body.sendall(f"{head}Content-Length: 100\r\n\r\ntoken=".encode())  # 6 of 100 bytes, then nothing
        reply = read_all(slow_body)
        assert reply.startswith(b"HTTP/1.1 408 ") and b"x-frame-options: deny" in reply.lower()
        slow_body.close()

        kept = httpx.get(f"{url}/api/info", headers=AUTH)  # a prompt request is untouched
        assert kept.status_code == 200


def test_one_client_holds_a_bounded_number_of_connections(media_db) -> None:
    cfg, _ = media_db
    with running(create_app(cfg, token=None), max_client_connections=4) as url:
        held = [connect(url) for _ in range(4)]
        refused = connect(url)
        reply = read_all(refused)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5" in reply
        refused.close()
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # the server counts the closed ones down as it notices them
            try:
                if httpx.get(f"{url}/api/info", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the cap never freed"
            time.sleep(0.05)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_hanging_up_mid_body_is_logged_at_debug_level(media_db) -> None:
    cfg, _ = media_db
    server_log, guard_log = logging.getLogger("uvicorn.error"), logging.getLogger("pipeline.serve.guard")
    errors, debug = Records(), Records()
    level = guard_log.level
    with running(create_app(cfg, token=None)) as url:
        server_log.addHandler(errors)
        guard_log.addHandler(debug)
        guard_log.setLevel(logging.DEBUG)
        try:
            for _ in range(3):
                sock = connect(url)
                head = "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                sock.sendall(f"{head}Content-Length: 1000\r\n\r\ntoken=abc".encode())
                sock.close()  # gone before the other 991 bytes
            deadline = time.monotonic() + 10
            while len(debug.records) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            server_log.removeHandler(errors)
            guard_log.removeHandler(debug)
            guard_log.setLevel(level)
    assert [r.levelno for r in debug.records] == [logging.DEBUG] * 3
    assert "hung up" in debug.records[0].getMessage()
    assert [r for r in errors.records if r.levelno >= logging.WARNING] == []


def test_a_file_edited_where_the_fingerprint_does_not_read_is_not_served(media_db, tmp_path) -> None:
    cfg, row = media_db
    path, vid = Path(row["path"]), row["video_id"]
    original = path.read_bytes()
    assert list_videos([str(path)])[0][0].mtime_ns == path.stat().st_mtime_ns  # what an index run records
    with running(create_app(cfg, token=None)) as url:
        assert httpx.get(f"{url}/media/{vid}").status_code == 200
        edited = bytearray(original)
        edited[70_000] ^= 0xFF  # between the first 64 KiB and the first sampled middle range
        path.write_bytes(bytes(edited))
        assert fingerprint(str(path)) == (row["size_bytes"], row["fingerprint"])  # the fingerprint cannot tell
        assert httpx.get(f"{url}/media/{vid}").status_code == 404

        path.write_bytes(original)  # the indexed bytes again, but written since
        assert httpx.get(f"{url}/media/{vid}").status_code == 404
        os.utime(path, ns=(row["mtime_ns"], row["mtime_ns"]))
        assert httpx.get(f"{url}/media/{vid}").status_code == 200


def test_answers_show_paths_relative_to_the_media_root(media_db) -> None:
    cfg, row = media_db
    archive = str(Path(row["path"]).parent)
    with running(create_app(cfg, token=None, media_roots=[archive])) as url:
        listed = httpx.get(f"{url}/api/videos").json()["videos"]
        assert [v["path"] for v in listed] == ["clip.webm"]
        assert httpx.get(f"{url}/api/videos/{row['video_id']}").json()["path"] == "clip.webm"
        assert httpx.get(f"{url}/media/{row['video_id']}").status_code == 200  # still found by its real path
    with running(create_app(cfg, token=None)) as url:  # no roots: nothing to be relative to, paths as indexed
        assert httpx.get(f"{url}/api/videos").json()["videos"][0]["path"] == row["path"]


def test_state_changing_requests_from_another_origin_are_refused(media_db) -> None:
    cfg, _ = media_db
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = f"token={TOKEN}".encode()
    with running(create_app(cfg, token=TOKEN)) as url:
        port = url.rsplit(":", 1)[1]
        for origin in [
            {"Origin": "http://127.0.0.1:1"},  # another port of the same host: same site, another origin
            {"Origin": "http://attacker.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "same-site"},
            {"Sec-Fetch-Site": "cross-site", "Origin": url},  # the browser's own verdict wins
        ]:
            for target in ["/login", "/logout", "/api/search", "/api/ask"]:
                res = http_request(url, "POST", target, {**form, **AUTH, **origin}, body)
                assert res.status == 403 and b"another origin" in res.body, (origin, target)
        for same in [{"Origin": url}, {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}]:
            assert http_request(url, "POST", "/login", {**form, **same}, body).status == 303, same
        assert http_request(url, "POST", "/login", {**form, "Sec-Fetch-Site": "same-origin"}, body).status == 303
        chromium_form = {**form, "Sec-Fetch-Site": "same-origin", "Origin": "null"}  # a form post it makes opaque
        assert http_request(url, "POST", "/login", chromium_form, body).status == 303
        assert http_request(url, "POST", "/login", form, body).status == 303  # no browser headers: a script


def test_repeated_host_authorization_or_range_headers_are_refused(media_db) -> None:
    cfg, row = media_db
    with running(create_app(cfg, token=TOKEN)) as url:
        host = url.removeprefix("http://")
        target = f"/media/{row['video_id']}"
        for name, values in {
            "Host": [host, "attacker.example"],
            "Authorization": ["Bearer wrong", f"Bearer {TOKEN}"],
            "Range": ["bytes=0-1", "bytes=5-9"],
        }.items():
            headers = [*(("Authorization", f"Bearer {TOKEN}") for _ in [0] if name != "Authorization")]
            headers += [(name, v) for v in values]
            res = http_request(url, "GET", target, headers)
            assert res.status == 400, name  # two Hosts in HTTP/1.1: h11 refuses them itself
            assert name == "Host" or f"more than one {name.lower()}".encode() in res.body, name
        old = connect(url)  # HTTP/1.0, where the parser lets two Hosts through
        old.sendall(f"GET /api/info HTTP/1.0\r\nHost: {host}\r\nHost: attacker.example\r\n\r\n".encode())
        assert read_all(old).startswith(b"HTTP/1.1 400 ")
        old.close()
        assert http_request(url, "GET", target, {**AUTH, "Range": "bytes=0-1"}).status == 206
