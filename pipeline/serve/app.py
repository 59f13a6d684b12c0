"""HTTP API and results page over one ``Searcher`` (FastAPI + uvicorn); ``run_pipeline.py serve`` starts it.

Routes: ``GET /`` (the page), ``GET|POST /api/search``, ``GET /api/info``, ``GET /api/videos``,
``GET /api/videos/{id}``, ``GET /api/thumbnails/{id}``, ``GET /media/{video_id}`` (the original file, with
HTTP Range so a browser can seek) and ``GET /openapi.json`` (no ``/docs``: Swagger UI would come from a CDN). With
a token every route needs ``Authorization: Bearer <token>`` or the HttpOnly session cookie that ``POST /login``
sets (the page's ``<img>``/``<video>`` requests cannot send headers); only the sign-in form, its stylesheet and
``POST /logout`` are open. Every wrong token, in the form or in a header, counts against the client's address
(``LoginLimiter``): past the limit every token check is a 429 with ``Retry-After``.
``pipeline/serve/guard.py`` adds the Host allow-list, the same-origin check, body limits and read timeout and the
security headers; ``pipeline/serve/server.py`` the uvicorn settings (trusted proxies, head timeout, connection cap).

Media are looked up by id among ``complete`` videos, never by a path from the request; the file is served
only if it still is the indexed content (size, fingerprint and modification time, see ``pipeline/serve/media.py``)
and, with ``media_roots``, lies under one of them after resolving symlinks; paths in answers are then relative to
their root. Uploaded images are decoded at most ``DECODE_SLOTS`` at a time (503 with ``Retry-After`` beyond).
Bad input is a 4xx with a JSON ``detail``: ``SearchError`` 400, validation 422, unknown ids 404, a re-ranker
without weights 503.
Searches run concurrently (``pipeline/serve/api.py``).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import cookie_parser

from operators.base import MissingCheckpointError
from operators.rerank import RERANKERS
from pipeline.config import Config
from pipeline.errors import SearchError
from pipeline.search.hybrid import MODES, Mode
from pipeline.search.images import load_image
from pipeline.search.searcher import Searcher
from pipeline.serve.api import TEXTS_LEVEL, Api
from pipeline.serve.ask import ask_routes
from pipeline.serve.guard import LOOPBACK_HOSTS, Guard, LoginLimiter, Scope, Sessions, same_secret
from pipeline.serve.media import MediaResponse
from pipeline.serve.responses import AsciiJSONResponse, detail, field_error, json_field, not_found, search_request
from pipeline.store import schema as S
from pipeline.store.schema import Level

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOKEN_ENV = "VIDSEARCH_TOKEN"
HOSTS_ENV = "VIDSEARCH_ALLOWED_HOSTS"  # comma-separated extra Host names, e.g. a reverse proxy's
COOKIE = "vidsearch_session"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_FORM_BYTES = 16 * 1024  # the sign-in form, and any body sent to a route that takes none
MAX_ASK_BYTES = 16 * 1024  # POST /api/ask: a question of at most vqa.max_question_chars and two ids
PUBLIC = {
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/static/style.css"),
    ("HEAD", "/static/style.css"),
}
#: Uploaded images decoded at once: each may take ~64 MiB (``searcher.MAX_DECODED_PIXELS``) while it decodes.
DECODE_SLOTS = 2


def _login_page(error: str = "") -> str:
    note = f'<p class="error">{error}</p>' if error else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vidsearch: sign in</title>'
        '<link rel="stylesheet" href="/static/style.css"></head><body class="login">'
        '<form method="post" action="/login" class="card"><h1>vidsearch</h1>'
        f'{note}<label>Access token <input type="password" name="token" autofocus required></label>'
        '<button type="submit">Sign in</button></form></body></html>'
    )


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 2**10} KiB"


def body_limit(scope: Scope) -> tuple[int, str]:
    """The most bytes a request to this route may send, and the 413 message (read per request, so tests may
    lower the module's limits)."""
    if scope["path"] == "/api/ask" and scope["method"] == "POST":  # a question: JSON only, and short
        return MAX_ASK_BYTES, f"a question request must be under {_size(MAX_ASK_BYTES)}"
    if scope["path"] == "/api/search" and scope["method"] == "POST":
        ctype = dict(scope["headers"]).get(b"content-type", b"").lower()
        if ctype.startswith((b"multipart/form-data", b"application/x-www-form-urlencoded")):
            return MAX_UPLOAD_BYTES + 2**16, f"the request is larger than {_size(MAX_UPLOAD_BYTES)}"
        return MAX_JSON_BYTES, f"a JSON request must be under {_size(MAX_JSON_BYTES)}"
    return MAX_FORM_BYTES, f"a request to this route must be under {_size(MAX_FORM_BYTES)}"


def create_app(
    cfg: Config,
    token: str | None = None,
    searcher: Searcher | None = None,
    media_roots: list[str] | None = None,
    refresh_s: float = 5.0,
    allowed_hosts: list[str] | None = None,
    login_attempts: tuple[int, float] = (10, 60.0),
    body_timeout_s: float = 30.0,
) -> FastAPI:
    """The app for the database of ``cfg``; ``token`` (or $VIDSEARCH_TOKEN) protects every route.

    ``allowed_hosts``: Host header names answered (default: the loopback names, plus $VIDSEARCH_ALLOWED_HOSTS;
    ``*`` for any). ``login_attempts``: wrong tokens (sign-in form or ``Authorization`` header) per client address
    per window (seconds). ``body_timeout_s``: the longest a request body may stall.
    """
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    secret = token.encode("utf-8") if token else b""
    api = Api(cfg, searcher, media_roots or [], refresh_s)
    sessions, limiter = Sessions(), LoginLimiter(*login_attempts)
    app = FastAPI(title="vidsearch", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.api = api
    app.state.decode_slots = decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)

    def shown(answer: dict[str, Any]) -> dict[str, Any]:
        return {**answer, "results": [api.shown(r) for r in answer["results"]]}

    def authorised(scope: Scope) -> bool | Response:
        """Whether the request carries the token or a live session; a 429 for a client past the failure limit."""
        if token is None:
            return True
        headers = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer":
            client = scope["client"][0] if scope.get("client") else ""
            wait = limiter.retry_after(client)
            if wait > 0:
                response = detail(429, "too many wrong tokens from this address; wait and try again")
                response.headers["Retry-After"] = str(int(wait) + 1)
                return response
            if same_secret(given.strip(), secret):
                return True
            limiter.failed(client)
            return False
        cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
        return sessions.valid(cookies.get(COOKIE, ""))  # a stale cookie is no guess: a 256-bit random id

    def gate(scope: Scope) -> Any:
        if (scope["method"], scope["path"]) in PUBLIC:
            return None
        verdict = authorised(scope)
        if isinstance(verdict, Response):
            return verdict
        if verdict:
            return None
        if scope["path"] == "/" and scope["method"] == "GET":
            return RedirectResponse("/login", status_code=303)
        response = detail(401, "missing or wrong access token: send 'Authorization: Bearer <token>'")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    extra_hosts = [h for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
    app.add_middleware(
        Guard,
        allowed_hosts=[*(allowed_hosts or LOOPBACK_HOSTS), *extra_hosts],
        body_limit=body_limit,
        gate=gate,
        body_timeout_s=body_timeout_s,
    )

    @app.exception_handler(SearchError)
    async def search_error(_: Request, exc: SearchError) -> JSONResponse:
        return detail(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return AsciiJSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(MissingCheckpointError)
    async def missing_checkpoint(_: Request, exc: MissingCheckpointError) -> JSONResponse:
        return detail(503, str(exc))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> Response:
        return HTMLResponse(_login_page()) if token else RedirectResponse("/", status_code=303)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else ""
        wait = limiter.retry_after(client)
        if wait > 0:
            page = HTMLResponse(_login_page("Too many wrong tokens; wait a minute."), status_code=429)
            page.headers["Retry-After"] = str(int(wait) + 1)
            return page
        form = await request.form(max_files=0, max_fields=4)
        given = str(form.get("token", "")).encode("utf-8", "replace")
        if token is None or not same_secret(given, secret):
            limiter.failed(client)
            return HTMLResponse(_login_page("That token is not right."), status_code=401)
        response = RedirectResponse("/", status_code=303)
        secure = request.url.scheme == "https"
        max_age = int(sessions.ttl_s)
        response.set_cookie(COOKIE, sessions.new(), max_age=max_age, httponly=True, samesite="strict", secure=secure)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        """Ends the session of the cookie (if any) and clears the cookie; then the sign-in form."""
        sessions.end(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        s = cfg.search
        return {
            "levels": list(S.LEVELS),
            "modes": list(MODES),
            "rerankers": [n for n in RERANKERS if n == "attention" or s.rerankers.get(n, {}).get("checkpoint")],
            "default_rerank": s.rerank,
            "max_k": s.max_k,
            "max_query_chars": s.max_query_chars,
            "random_weights": cfg.random_weights,
            "videos": len(api.videos()),
            "texts": api.has_texts(),  # on-screen text is searchable (level "texts")
            "speech": api.has_speech(),  # what is said is searchable (level "speech")
        }

    @app.get("/api/search")
    def search_get(
        text: str | None = None,
        k: int = 10,
        level: Level | Literal["texts", "speech"] = "segments",
        rerank: str | None = "default",
        video_ids: Annotated[list[str] | None, Query()] = None,
        path_glob: str | None = None,
        classes: Annotated[list[str] | None, Query()] = None,
        time_range: Annotated[list[float] | None, Query(min_length=2, max_length=2)] = None,
        min_track_duration: float | None = None,
        min_score: float | None = None,
        mode: Mode | None = None,  # None: hybrid at levels texts and speech, vector elsewhere
    ) -> dict[str, Any]:
        raw = {
            "video_ids": video_ids,
            "path_glob": path_glob,
            "classes": classes,
            "time_range": time_range,
            "min_track_duration": min_track_duration,
            "min_score": min_score,
        }
        filters = {key: v for key, v in raw.items() if v is not None} or None
        body = {"text": text, "k": k, "level": level, "filters": filters, "rerank": rerank, "mode": mode}
        return shown(api.search(search_request(body), None))

    @app.post("/api/search", response_model=None, openapi_extra=_SEARCH_BODY)
    async def search_post(request: Request) -> dict[str, Any] | Response:
        """JSON body (``SearchRequest``), or form fields of the same names (``filters`` as a JSON string) plus,
        in a multipart form, an ``image`` file. The body limits are enforced while reading (``Guard``)."""
        upload = None
        if request.headers.get("content-type", "").startswith(
            ("multipart/form-data", "application/x-www-form-urlencoded")
        ):
            form = await request.form(max_files=1, max_fields=16)
            body: dict[str, Any] = {key: v for key, v in form.items() if key != "image" and isinstance(v, str)}
            file = form.get("image")
            if file is not None and not isinstance(file, str):
                upload = await file.read(MAX_UPLOAD_BYTES + 1)
                if len(upload) > MAX_UPLOAD_BYTES:
                    return detail(413, f"the image is larger than {_size(MAX_UPLOAD_BYTES)}")
            if not body.get("text"):
                body.pop("text", None)  # an image search leaves the text box empty
            if "filters" in body:
                body["filters"] = json_field("filters", body["filters"])
        else:
            raw = bytearray()
            async for chunk in request.stream():
                raw += chunk
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
                raise RequestValidationError([field_error("body", "the body is not valid JSON")]) from None
            if not isinstance(body, dict):
                raise RequestValidationError([field_error("body", "the body must be a JSON object")])
        req = search_request(body)
        if req.level == TEXTS_LEVEL:  # searched by words: an image is refused before it is decoded
            return shown(await run_in_threadpool(api.search_texts, req, upload is not None))
        # Decoded once, here, in a worker thread: a non-image upload is a 400 before any model loads.
        image = None
        if upload is not None:
            if not decode_slots.acquire(blocking=False):
                busy = detail(503, f"{DECODE_SLOTS} images are being decoded already; try again in a moment")
                busy.headers["Retry-After"] = "1"
                return busy
            try:
                image = await run_in_threadpool(load_image, upload)
            finally:
                decode_slots.release()
        return shown(await run_in_threadpool(api.search, req, image))

    @app.get("/api/videos")
    def videos() -> dict[str, Any]:
        rows = [api.shown(r) for r in api.videos()]
        return {"count": len(rows), "videos": rows}

    @app.get("/api/videos/{video_id}")
    def video(video_id: str) -> Any:
        found = api.video(video_id)
        return api.shown(found) if found is not None else not_found("indexed video")

    @app.get("/api/videos/{video_id}/shots")
    def video_shots(video_id: str) -> Any:
        """The video's shots from its segments (pipeline/search/shot_list.py): the page marks the cuts on the player."""
        found = api.shots(video_id)
        return found if found is not None else not_found("indexed video")

    @app.get("/api/videos/{video_id}/speech")
    def video_speech(video_id: str) -> Any:
        """The video's transcript (its utterances in time order, with word times): the page shows it by the player."""
        found = api.transcript(video_id)
        return found if found is not None else not_found("indexed video")

    @app.get("/api/thumbnails/{thumb_id}")
    def thumbnail(thumb_id: str) -> Response:
        jpeg = api.thumbnail(thumb_id)
        if jpeg is None:
            return not_found("thumbnail")
        cache = "private" if token else "public"
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": f"{cache}, max-age=86400"})

    @app.head("/media/{video_id}", include_in_schema=False)  # one operation in the OpenAPI document, not two
    @app.get("/media/{video_id}")
    def media(video_id: str, request: Request) -> Response:
        found = api.media(video_id)
        if found is None:
            return not_found("playable indexed video")
        fd, st, kind = found
        return MediaResponse(fd, st, kind, request.headers.get("range"), request.headers.get("if-range"))

    ask_routes(app, cfg, api)
    return app


_SEARCH_BODY: dict[str, Any] = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"type": "object", "description": "SearchRequest: text, k, level, ..."}},
            "multipart/form-data": {"schema": {"type": "object", "description": "the same fields plus 'image'"}},
        }
    }
}


def serve(
    cfg: Config,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    media_roots: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    trusted_proxies: list[str] | None = None,
) -> None:
    """Run the app with uvicorn until interrupted (settings: ``pipeline/serve/server.py``). The Host allow-list is
    the loopback names, the address bound (unless a wildcard) and ``allowed_hosts``; ``trusted_proxies``: the
    addresses whose ``X-Forwarded-For`` names the client."""
    import uvicorn

    from pipeline.serve.server import server_config

    hosts = [*LOOPBACK_HOSTS, *([host] if host not in ("0.0.0.0", "::", "") else []), *(allowed_hosts or [])]
    app = create_app(cfg, token=token, media_roots=media_roots, allowed_hosts=hosts)
    uvicorn.Server(server_config(app, host, port, trusted_proxies)).run()
