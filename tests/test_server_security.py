"""The server's hostile-client findings (issue 14): media that is no longer the indexed content, bodies cut off
at their limit while streaming, the Host allow-list, sign-in limits and session cookies, the upload decoded
once, Range per RFC 9110, the open stylesheet, UTF-8 tokens, security headers, and the OpenAPI schema behind
the token. Runs on a database written directly (one real video row, no indexing), so no Ray and no models
except where a search must run."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import httpx

from pipeline.serve.app import create_app
from tests.helpers import http_request as request
from tests.helpers import running

TOKEN = "pässwörd-✓-τ"  # non-ASCII on purpose: compared as UTF-8 bytes
AUTH = {"Authorization": b"Bearer " + TOKEN.encode()}


# -- 1: media ----------------------------------------------------------------------------------------------------


def test_media_refuses_a_same_size_html_swapped_in_and_keeps_the_indexed_type(media_db, tmp_path) -> None:
    cfg, row = media_db
    path, vid = Path(row["path"]), row["video_id"]
    original = path.read_bytes()
    script = b"<html><script>fetch('/api/videos')</script>"
    page = tmp_path / "page.html"
    page.write_bytes(script + b" " * (len(original) - len(script)))  # same size as the indexed video
    app = create_app(cfg, token=None)
    with running(app) as url:
        ok = httpx.get(f"{url}/media/{vid}")
        assert ok.status_code == 200 and ok.content == original
        assert ok.headers["content-type"] == "video/webm" and ok.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(f"{url}/media/{vid}").status_code == 200
        assert app.state.api.verifier.hashed == 1  # an unchanged file is fingerprinted once

        path.unlink()
        path.symlink_to(page)  # the indexed path now leads to a same-size HTML page
        swapped = httpx.get(f"{url}/media/{vid}")
        assert swapped.status_code in (404, 409)
        assert "text/html" not in swapped.headers["content-type"] and b"<script>" not in swapped.content

        path.unlink()
        path.write_bytes(original[:-1] + b"\x00")  # rewritten in place, same size, other content
        assert httpx.get(f"{url}/media/{vid}").status_code in (404, 409)

        path.unlink()
        target = tmp_path / "stored.bin"
        target.write_bytes(original)
        os.utime(target, ns=(row["mtime_ns"], row["mtime_ns"]))  # as a move keeps it
        path.symlink_to(target)  # same content behind a link with another name: the indexed name sets the type
        linked = httpx.get(f"{url}/media/{vid}")
        assert linked.status_code == 200 and linked.headers["content-type"] == "video/webm"


# -- 2: body limits ----------------------------------------------------------------------------------------------


class Counting:
    """ASGI wrapper counting the request-body bytes the app pulled from the server."""

    def __init__(self, app: Any) -> None:
        self.app, self.consumed = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            self.consumed += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def send_chunked(base: str, target: str, headers: dict[str, str], first: bytes, total: int) -> tuple[int, int]:
    """POST ``first`` then zeros, chunked (no Content-Length), until ``total`` bytes or until the server answers
    or hangs up; returns (status, bytes the client got into the socket)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sent, answered = 0, threading.Event()

    def pump() -> None:
        nonlocal sent
        chunk = b"\0" * 2**16
        try:
            data = first
            while sent < total and not answered.is_set():
                sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))
                sent += len(data)
                data = chunk
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection after its 413

    sock.sendall(head.encode("latin-1"))
    writer = threading.Thread(target=pump, daemon=True)
    writer.start()
    reply = b""
    while b"\r\n" not in reply:
        part = sock.recv(4096)
        if not part:
            break
        reply += part
    answered.set()
    writer.join(timeout=60)
    sock.close()
    return int(reply.split(b" ", 2)[1]), sent


def test_bodies_are_cut_off_at_the_limit_while_reading(media_db, monkeypatch) -> None:
    cfg, _ = media_db
    monkeypatch.setattr("pipeline.serve.app.MAX_UPLOAD_BYTES", 100_000)
    app = Counting(create_app(cfg, token=TOKEN))
    total = 64 * 2**20
    with running(app) as url:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, sent = send_chunked(url, "/login", form, b"token=", total)
        assert status == 413 and app.consumed < 2**20 and sent < total // 2, (app.consumed, sent)

        app.consumed = 0
        bearer = "Bearer " + TOKEN.encode().decode("latin-1")  # the token's UTF-8 bytes on the wire
        multipart = {"Content-Type": "multipart/form-data; boundary=xx", "Authorization": bearer}
        first = b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        status, sent = send_chunked(url, "/api/search", multipart, first, total)
        assert status == 413 and app.consumed < 2**20 and sent < total // 2, (app.consumed, sent)

        app.consumed = 0
        status, sent = send_chunked(url, "/api/search", {"Content-Type": "application/json"}, b"{", total)
        assert status == 401 and app.consumed == 0  # no token: the body is never read

        declared = request(url, "POST", "/login", {**form, "Content-Length": str(10**9)})
        assert declared.status == 413 and b"must be under" in declared.body


# -- 3: Host allow-list ------------------------------------------------------------------------------------------


def test_only_allowed_host_names_are_answered(media_db, monkeypatch) -> None:
    cfg, _ = media_db
    with running(create_app(cfg, token=None)) as url:
        port = url.rsplit(":", 1)[1]
        for host in [f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "localhost."]:
            assert request(url, "GET", "/api/videos", {"Host": host}).status == 200, host
        for host in ["attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", "localhost.attacker.example"]:
            res = request(url, "GET", "/api/videos", {"Host": host})
            assert res.status == 421 and b'"detail"' in res.body, host
            assert res.getheader("x-frame-options") == "DENY"
        for host in ["", "a b:x", "[::1"]:
            assert request(url, "GET", "/api/videos", {"Host": host}).status == 400, host
    monkeypatch.setenv("VIDSEARCH_ALLOWED_HOSTS", "search.example")
    with running(create_app(cfg, token=None, allowed_hosts=["media.example"])) as url:
        assert request(url, "GET", "/api/videos", {"Host": "media.example"}).status == 200
        assert request(url, "GET", "/api/videos", {"Host": "search.example:80"}).status == 200
        assert request(url, "GET", "/api/videos", {"Host": "localhost"}).status == 421

    from pipeline.cli import parser

    args = parser().parse_args(["serve", "--allowed-host", "a.example", "--allowed-host", "b.example"])
    assert args.allowed_hosts == ["a.example", "b.example"]


# -- 4: sign-in --------------------------------------------------------------------------------------------------


def test_the_session_cookie_is_a_random_id_not_the_token(media_db) -> None:
    cfg, _ = media_db
    with running(create_app(cfg, token=TOKEN)) as url:
        with httpx.Client(base_url=url, timeout=60) as anon:
            ok = anon.post("/login", data={"token": TOKEN})
            assert ok.status_code == 303
            cookie = anon.cookies["vidsearch_session"]
            assert TOKEN not in ok.headers["set-cookie"] and cookie not in (TOKEN, TOKEN.encode().decode("latin-1"))
            assert len(cookie) >= 32 and anon.get("/api/videos").status_code == 200
        forged = request(url, "GET", "/api/videos", {"Cookie": b"vidsearch_session=" + TOKEN.encode()})
        assert forged.status == 401
        other = request(url, "GET", "/api/videos", {"Cookie": b"vidsearch_session=" + cookie[::-1].encode()})
        assert other.status == 401


def test_sign_in_attempts_are_rate_limited_per_client(media_db) -> None:
    cfg, _ = media_db
    with running(create_app(cfg, token=TOKEN, login_attempts=(3, 600.0))) as url:
        with httpx.Client(base_url=url, timeout=60) as guesser:
            assert [guesser.post("/login", data={"token": f"guess{i}"}).status_code for i in range(3)] == [401] * 3
            blocked = guesser.post("/login", data={"token": TOKEN})  # even the right token waits now
            assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
            assert "vidsearch_session" not in guesser.cookies
            bearer = guesser.get("/api/info", headers={"Authorization": b"Bearer " + TOKEN.encode()})
            assert bearer.status_code == 429  # every token check waits: guessing moves to no other door


# -- 5: the uploaded image is decoded once, outside any lock ------------------------------------------------------


def test_an_uploaded_image_is_decoded_once_outside_the_lock(media_db, monkeypatch, tmp_path) -> None:
    import pipeline.search.searcher
    import pipeline.serve.app

    cfg, _ = media_db
    app = create_app(cfg, token=None)
    api = app.state.api
    decodes: list[bool] = []  # per decode of uploaded bytes: was a server lock held?
    real = pipeline.search.searcher.load_image

    def counting(image: Any, *args: Any) -> Any:
        if isinstance(image, bytes | bytearray):
            decodes.append(any(getattr(api, n).locked() for n in ("model_lock", "lock") if hasattr(api, n)))
        return real(image, *args)

    monkeypatch.setattr(pipeline.search.searcher, "load_image", counting)
    monkeypatch.setattr(pipeline.serve.app, "load_image", counting)
    from PIL import Image

    png = tmp_path / "query.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(png)
    with running(app) as url:
        res = httpx.post(f"{url}/api/search", files={"image": ("q.png", png.read_bytes(), "image/png")}, timeout=300)
    assert res.status_code == 200, res.text
    assert decodes == [False]


# -- 6: Range, stylesheet, UTF-8 tokens, headers, OpenAPI --------------------------------------------------------


def test_range_follows_rfc_9110(media_db) -> None:
    cfg, row = media_db
    data = Path(row["path"]).read_bytes()
    n, vid = len(data), row["video_id"]
    with running(create_app(cfg, token=None)) as url:

        def get(value: str, **extra: str) -> httpx.Response:
            return httpx.get(f"{url}/media/{vid}", headers={"Range": value, **extra})

        for ignored in ["items=0-1", "bytes=5-1", "bytes=abc", "bytes=", "bytes=1-2-3", "bytes=0-1,abc", "bytes"]:
            res = get(ignored)
            assert res.status_code == 200 and res.content == data and "content-range" not in res.headers, ignored
        for value, (a, b) in {
            "bytes=0-1,999999999-": (0, 1),
            "bytes=999999999-, 10-19": (10, 19),
            "Bytes=0-0": (0, 0),
            "bytes=-5": (n - 5, n - 1),
            f"bytes={n - 3}-{n + 100}": (n - 3, n - 1),
        }.items():
            res = get(value)
            assert res.status_code == 206 and res.content == data[a : b + 1], value
            assert res.headers["content-range"] == f"bytes {a}-{b}/{n}", value
        for unsatisfiable in [f"bytes={n}-", "bytes=999999999-,-0", "bytes=-0"]:
            res = get(unsatisfiable)
            assert res.status_code == 416 and res.headers["content-range"] == f"bytes */{n}", unsatisfiable
        etag = httpx.head(f"{url}/media/{vid}").headers["etag"]
        assert get("bytes=0-9", **{"If-Range": etag}).status_code == 206
        assert get("bytes=0-9", **{"If-Range": '"another-version"'}).status_code == 200


def test_login_page_styled_and_utf8_tokens_compared_as_bytes(media_db) -> None:
    cfg, _ = media_db
    with running(create_app(cfg, token=TOKEN)) as url:
        page = httpx.get(f"{url}/login")
        assert page.status_code == 200 and "/static/style.css" in page.text
        css = httpx.get(f"{url}/static/style.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert httpx.get(f"{url}/static/app.js").status_code == 401  # only the sign-in stylesheet is open

        assert request(url, "GET", "/api/info", AUTH).status == 200
        latin = {"Authorization": b"Bearer p\xe4ssw\xf6rd-?-?"}  # the same letters in latin-1: another token
        assert request(url, "GET", "/api/info", latin).status == 401
        assert httpx.post(f"{url}/login", data={"token": TOKEN}).status_code == 303


def test_security_headers_on_every_response_and_openapi_behind_the_token(media_db) -> None:
    cfg, row = media_db
    with running(create_app(cfg, token=TOKEN)) as url:
        responses = {
            "page": request(url, "GET", "/", AUTH),
            "json": request(url, "GET", "/api/videos", AUTH),
            "media": request(url, "GET", f"/media/{row['video_id']}", AUTH),
            "static": request(url, "GET", "/static/app.js", AUTH),
            "login": request(url, "GET", "/login"),
            "401": request(url, "GET", "/api/videos"),
            "404": request(url, "GET", "/api/videos/nope", AUTH),
            "421": request(url, "GET", "/api/videos", {**AUTH, "Host": "evil.example"}),
            "413": request(url, "POST", "/login", {"Content-Type": "text/plain"}, b"x" * 100_000),
        }
        for name, res in responses.items():
            assert res.getheader("x-content-type-options") == "nosniff", name
            assert res.getheader("x-frame-options") == "DENY", name
            assert "frame-ancestors 'none'" in res.getheader("content-security-policy", ""), name
        assert "script-src 'self'" in responses["page"].getheader("content-security-policy")
        assert responses["413"].status == 413 and responses["421"].status == 421

        for route in ["/openapi.json", "/docs"]:
            assert request(url, "GET", route).status == 401, route
        schema = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}".encode()}).json()
        assert {"/api/search", "/api/videos", "/media/{video_id}"} <= set(schema["paths"])
        assert "/login" not in schema["paths"]
        assert request(url, "GET", "/docs", AUTH).status == 404  # Swagger UI would load from a CDN
