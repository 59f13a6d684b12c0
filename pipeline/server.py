"""HTTP API and results page over one ``Searcher`` (FastAPI + uvicorn); ``run_pipeline.py serve`` starts it.

Routes: ``GET /`` (the page), ``GET|POST /api/search``, ``GET /api/info``, ``GET /api/videos``,
``GET /api/videos/{id}``, ``GET /api/thumbnails/{id}``, ``GET /media/{video_id}`` (the original file, with
HTTP Range so a browser can seek). With a token every route needs ``Authorization: Bearer <token>`` or the
HttpOnly cookie that ``POST /login`` sets (the page's ``<img>``/``<video>`` requests cannot send headers).

Media are looked up by id among ``complete`` videos, never by a path from the request; the file is served
only if it is still the regular file that was indexed (same size) and, with ``media_roots``, lies under one
of them after resolving symlinks. Bad input is a 4xx with a JSON ``detail``: ``SearchError`` 400,
validation 422, unknown ids 404, a re-ranker without weights 503.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from operators.encoders import MissingCheckpointError
from operators.rerank import RERANKERS
from pipeline import schema as S
from pipeline.config import Config
from pipeline.search import Filters, Searcher, SearchError, load_image
from pipeline.store import Store, quote

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_ENV = "VIDSEARCH_TOKEN"
COOKIE = "vidsearch_token"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # uuid5 ids, nothing else
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("video/x-matroska", ".mkv")


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``: the parameters of ``Searcher.search`` (the image comes as a file)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    k: int = 10
    level: Literal["segments", "frames", "tracks"] = "segments"
    filters: Filters | None = None
    rerank: str | None = "default"  # a re-ranker name, "default" (the config's), or null / "none"


class Api:
    """The state behind the routes: one searcher (models loaded once), serialised by a lock."""

    def __init__(self, cfg: Config, searcher: Searcher | None, media_roots: list[str], refresh_s: float) -> None:
        self.cfg = cfg
        self.searcher = searcher or Searcher(cfg.db.path, cfg)
        self.media_roots = [os.path.realpath(r) for r in media_roots]
        self.refresh_s = refresh_s
        self.lock = threading.Lock()
        self._opened = time.monotonic()

    def store(self) -> Store:
        """The database, re-opened every ``refresh_s`` so videos indexed while serving become visible."""
        if time.monotonic() - self._opened > self.refresh_s:
            self.searcher.store = Store(self.cfg.db.path, self.searcher.store.dim)
            self._opened = time.monotonic()
        return self.searcher.store

    def search(self, req: SearchRequest, image: bytes | None) -> dict[str, Any]:
        rerank = None if req.rerank in (None, "none") else req.rerank
        t0 = time.perf_counter()
        with self.lock:
            self.store()
            results = self.searcher.search(
                text=req.text, image=image, k=req.k, level=req.level, filters=req.filters, rerank=rerank
            )
        return {
            "level": req.level,
            "rerank": self.cfg.search.rerank if rerank == "default" else rerank,
            "took_ms": round(1000 * (time.perf_counter() - t0), 1),
            "count": len(results),
            "results": [r.as_dict() for r in results],
        }

    def videos(self, video_id: str | None = None) -> list[dict[str, Any]]:
        where = f"status = {quote(S.STATUS_COMPLETE)}"
        if video_id is not None:
            where += f" AND video_id = {quote(video_id)}"
        with self.lock:
            rows = self.store().rows(S.VIDEOS, where).to_pylist()
        return sorted(jsonable_encoder(rows), key=lambda r: r["path"])

    def video(self, video_id: str) -> dict[str, Any] | None:
        found = self.videos(video_id) if ID.fullmatch(video_id) else []
        if not found:
            return None
        with self.lock:
            store, key = self.store(), f"video_id = {quote(video_id)}"
            segments = store.rows(S.SEGMENTS, key, ["segment_id", "start_s", "end_s", "thumb_id", "class_names"])
            tracks = store.rows(S.TRACKS, key, ["track_id", "class_name", "t_first", "t_last", "n_obs", "thumb_id"])
        return {
            **found[0],
            "segments": sorted(segments.to_pylist(), key=lambda r: r["start_s"]),
            "tracks": sorted(tracks.to_pylist(), key=lambda r: (r["t_first"], r["track_id"])),
        }

    def thumbnail(self, thumb_id: str) -> bytes | None:
        if not ID.fullmatch(thumb_id):
            return None
        with self.lock:
            rows = self.store().rows(S.THUMBNAILS, f"thumb_id = {quote(thumb_id)}", ["video_id", "jpeg"]).to_pylist()
        if not rows or not self.videos(rows[0]["video_id"]):
            return None
        return rows[0]["jpeg"]

    def media(self, video_id: str) -> tuple[str, os.stat_result] | None:
        """The indexed file of a complete video, if it is still that regular file inside the media roots."""
        found = self.videos(video_id) if ID.fullmatch(video_id) else []
        if not found:
            return None
        real = os.path.realpath(found[0]["path"])
        if self.media_roots and not any(real.startswith(os.path.join(root, "")) for root in self.media_roots):
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != found[0]["size_bytes"]:
            return None  # replaced since indexing (or swapped for a link to something else)
        return real, st


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error that echoes input holding a lone surrogate still encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _detail(status: int, message: str) -> JSONResponse:
    return AsciiJSONResponse({"detail": message}, status_code=status)


def _not_found(what: str) -> JSONResponse:
    return _detail(404, f"no {what} with that id")


def _login_page(error: str = "") -> str:
    note = f'<p class="error">{error}</p>' if error else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vidsearch: sign in</title>'
        '<link rel="stylesheet" href="/static/style.css"></head><body class="login">'
        '<form method="post" action="/login" class="card"><h1>vidsearch</h1>'
        f'{note}<label>Access token <input type="password" name="token" autofocus required></label>'
        '<button type="submit">Sign in</button></form></body></html>'
    )


def create_app(
    cfg: Config,
    token: str | None = None,
    searcher: Searcher | None = None,
    media_roots: list[str] | None = None,
    refresh_s: float = 5.0,
) -> FastAPI:
    """The app for the database of ``cfg``; ``token`` (or $VIDSEARCH_TOKEN) protects every route."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    api = Api(cfg, searcher, media_roots or [], refresh_s)
    app = FastAPI(title="vidsearch", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if request.url.path == "/login" or authorised(request):
            return await call_next(request)
        if request.url.path == "/" and request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        response = _detail(401, "missing or wrong access token: send 'Authorization: Bearer <token>'")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(SearchError)
    async def search_error(_: Request, exc: SearchError) -> JSONResponse:
        return _detail(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return AsciiJSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(MissingCheckpointError)
    async def missing_checkpoint(_: Request, exc: MissingCheckpointError) -> JSONResponse:
        return _detail(503, str(exc))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> Response:
        return HTMLResponse(_login_page()) if token else RedirectResponse("/", status_code=303)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token", ""))
        if token is None or not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
            return HTMLResponse(_login_page("That token is not right."), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        s = cfg.search
        return {
            "levels": list(S.LEVELS),
            "rerankers": [n for n in RERANKERS if n == "attention" or s.rerankers.get(n, {}).get("checkpoint")],
            "default_rerank": s.rerank,
            "max_k": s.max_k,
            "max_query_chars": s.max_query_chars,
            "random_weights": cfg.random_weights,
            "videos": len(api.videos()),
        }

    @app.get("/api/search")
    def search_get(
        text: str | None = None,
        k: int = 10,
        level: Literal["segments", "frames", "tracks"] = "segments",
        rerank: str | None = "default",
        video_ids: Annotated[list[str] | None, Query()] = None,
        path_glob: str | None = None,
        classes: Annotated[list[str] | None, Query()] = None,
        time_range: Annotated[list[float] | None, Query(min_length=2, max_length=2)] = None,
        min_track_duration: float | None = None,
        min_score: float | None = None,
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
        return api.search(_request({"text": text, "k": k, "level": level, "filters": filters, "rerank": rerank}), None)

    @app.post("/api/search", response_model=None)
    async def search_post(request: Request) -> dict[str, Any] | Response:
        """JSON body (``SearchRequest``), or form fields of the same names (``filters`` as a JSON string) plus,
        in a multipart form, an ``image`` file."""
        image = None
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES + 2**16:  # refused before reading the body
            return _detail(413, f"the request is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        if request.headers.get("content-type", "").startswith(
            ("multipart/form-data", "application/x-www-form-urlencoded")
        ):
            form = await request.form(max_files=1, max_fields=16)
            body: dict[str, Any] = {key: v for key, v in form.items() if key != "image" and isinstance(v, str)}
            upload = form.get("image")
            if upload is not None and not isinstance(upload, str):
                image = await upload.read(MAX_UPLOAD_BYTES + 1)
                if len(image) > MAX_UPLOAD_BYTES:
                    return _detail(413, f"the image is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
            if not body.get("text"):
                body.pop("text", None)  # an image search leaves the text box empty
            if "filters" in body:
                body["filters"] = _json_field("filters", body["filters"])
        else:
            raw = bytearray()
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_JSON_BYTES:
                    return _detail(413, f"a JSON request must be under {MAX_JSON_BYTES // 2**10} KiB")
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
                raise RequestValidationError([_error("body", "the body is not valid JSON")]) from None
            if not isinstance(body, dict):
                raise RequestValidationError([_error("body", "the body must be a JSON object")])
        req = _request(body)
        if image is not None:
            await run_in_threadpool(load_image, image)  # a non-image upload is a 400 before any model loads
        return await run_in_threadpool(api.search, req, image)

    @app.get("/api/videos")
    def videos() -> dict[str, Any]:
        rows = api.videos()
        return {"count": len(rows), "videos": rows}

    @app.get("/api/videos/{video_id}")
    def video(video_id: str) -> Any:
        found = api.video(video_id)
        return found if found is not None else _not_found("indexed video")

    @app.get("/api/thumbnails/{thumb_id}")
    def thumbnail(thumb_id: str) -> Response:
        jpeg = api.thumbnail(thumb_id)
        if jpeg is None:
            return _not_found("thumbnail")
        cache = "private" if token else "public"
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": f"{cache}, max-age=86400"})

    @app.api_route("/media/{video_id}", methods=["GET", "HEAD"])
    def media(video_id: str) -> Response:
        found = api.media(video_id)
        if found is None:
            return _not_found("playable indexed video")
        path, st = found
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind, stat_result=st, headers={"Cache-Control": "private, max-age=60"})

    return app


def _error(loc: str, msg: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": [loc], "msg": msg, "input": None}


def _json_field(name: str, raw: str) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        raise RequestValidationError([_error(name, f"'{name}' must be a JSON object")]) from None


def _request(body: dict[str, Any]) -> SearchRequest:
    try:
        return SearchRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def serve(
    cfg: Config,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    media_roots: list[str] | None = None,
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(cfg, token=token, media_roots=media_roots)
    uvicorn.run(app, host=host, port=port, log_level="warning")
