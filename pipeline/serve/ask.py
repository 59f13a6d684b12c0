"""``POST /api/ask``: a question about a moment of an indexed video, answered by ``pipeline/search/ask.py``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from pipeline.config import Config
from pipeline.errors import AskError
from pipeline.search.ask import Asker
from pipeline.serve.api import Api
from pipeline.serve.responses import detail, field_error


class AskRequest(BaseModel):
    """The body of ``POST /api/ask``: a question about a video at ``t`` seconds, or about a search hit (a
    segment, frame or track id; ``t`` then overrides its keyframe time)."""

    model_config = ConfigDict(extra="forbid")

    question: str
    video_id: str | None = None
    t: float | None = None
    hit_id: str | None = None


def ask_routes(app: FastAPI, cfg: Config, api: Api) -> None:
    """``POST /api/ask`` (pipeline/search/ask.py): the answer with the frame it was asked on; bad input is a 4xx with
    a JSON ``detail`` (400 question or time, 404 unknown id, 409 frame not decodable, 503 no weights)."""
    asker = Asker(cfg, api.store, media_roots=api.media_roots)

    @app.exception_handler(AskError)
    async def askfield_error(_: Request, exc: AskError) -> JSONResponse:
        return detail(exc.status, str(exc))

    body = {"requestBody": {"content": {"application/json": {"schema": AskRequest.model_json_schema()}}}}

    @app.post("/api/ask", openapi_extra=body)
    async def ask(request: Request) -> dict[str, Any]:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise RequestValidationError([field_error("body", "the body is not valid JSON")]) from None
        try:
            req = AskRequest.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
        result = await run_in_threadpool(asker.ask, req.question, req.video_id, req.t, req.hit_id)
        return api.shown(result.as_dict())
