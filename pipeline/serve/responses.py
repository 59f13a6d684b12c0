"""The API's error bodies: JSON ``detail`` responses and the request-validation errors FastAPI reports as 422."""

from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from pipeline.serve.api import SearchRequest


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error that echoes input holding a lone surrogate still encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def detail(status: int, message: str) -> JSONResponse:
    return AsciiJSONResponse({"detail": message}, status_code=status)


def not_found(what: str) -> JSONResponse:
    return detail(404, f"no {what} with that id")


def field_error(loc: str, msg: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": [loc], "msg": msg, "input": None}


def json_field(name: str, raw: str) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        raise RequestValidationError([field_error(name, f"'{name}' must be a JSON object")]) from None


def search_request(body: dict[str, Any]) -> SearchRequest:
    try:
        return SearchRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
