"""Search filters: structured (``Filters``), compiled to a LanceDB ``where`` expression in one place
(``compile_filters``). Column names come from the schema, never from the caller, and every value is typed and
quoted. ``SearchError`` is the error of a request that cannot be served (its message is safe to show).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import SearchError
from pipeline.store import schema as S
from pipeline.store.db import in_list, quote
from pipeline.store.schema import Level

MAX_LIST = 1000  # values in one list filter
MAX_VALUE_CHARS = 1000


class Filters(BaseModel):
    """Structured filters. Every field is optional; all given fields must hold (AND)."""

    model_config = ConfigDict(extra="forbid")

    video_ids: list[str] | None = Field(default=None, max_length=MAX_LIST)
    path_glob: str | None = Field(default=None, max_length=MAX_VALUE_CHARS)
    time_range: tuple[float, float] | None = None
    classes: list[str] | None = Field(default=None, max_length=MAX_LIST)
    min_track_duration: float | None = None
    min_score: float | None = None

    @field_validator("video_ids", "classes", "path_glob")
    @classmethod
    def _strings(cls, v: list[str] | str | None) -> list[str] | str | None:
        for s in [v] if isinstance(v, str) else v or []:
            if len(s) > MAX_VALUE_CHARS or "\x00" in s:
                raise ValueError("filter values must be under 1000 characters with no NUL")
            try:
                s.encode("utf-8")  # lone surrogates (e.g. from a JSON "\ud800" escape) cannot reach the engine
            except UnicodeEncodeError:
                raise ValueError("filter values must be valid Unicode text") from None
        return v

    @field_validator("time_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None:
            a, b = v
            if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < a:
                raise ValueError("time_range must be two finite seconds, 0 <= start <= end")
        return v

    @field_validator("min_track_duration", "min_score")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


def parse_word_query(
    text: Any, k: Any, max_chars: int, filters: Filters | dict[str, Any] | None, what: str
) -> Filters | None:
    """Check a query of the word-searched levels (on-screen text, speech) and parse its filters: a non-empty
    UTF-8 text of at most ``max_chars``, k from 1 to 1000, and no object filters (``what`` has no objects)."""
    if not isinstance(text, str) or not text.strip():
        raise SearchError("the query text is empty")
    try:
        text.encode("utf-8")  # a lone surrogate (a JSON "\ud800" escape) cannot reach the index
    except UnicodeEncodeError:
        raise SearchError("the query must be valid Unicode text") from None
    if len(text) > max_chars:
        raise SearchError(f"the query is longer than {max_chars} characters")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise SearchError("k must be an integer from 1 to 1000")
    parsed = parse_filters(filters)
    if parsed is not None and (parsed.classes or parsed.min_track_duration is not None):
        raise SearchError(f"classes and min_track_duration do not apply to {what}")
    return parsed


def parse_filters(filters: Filters | dict[str, Any] | None) -> Filters | None:
    """``filters`` as a validated ``Filters``; anything invalid is a ``SearchError`` naming the field."""
    if filters is None or isinstance(filters, Filters):
        return filters
    if not isinstance(filters, dict):
        raise SearchError("filters must be a mapping of filter names to values")
    try:
        return Filters.model_validate(filters)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'filters'}: {e['msg']}" for e in exc.errors())
        raise SearchError(f"invalid filters: {problems}") from None


#: Segment columns a hit also reads when the table has them: the shot the segment lies in and its span.


#: Per level: the columns a filter may touch.
_TIME_COLUMNS = {"frames": ("t", "t"), "segments": ("start_s", "end_s"), "tracks": ("t_first", "t_last")}


def compile_filters(filters: Filters | None, level: Level, video_paths: dict[str, str] | None = None) -> str | None:
    """The LanceDB ``where`` expression for ``filters`` on ``level`` (None when nothing to filter).

    Column names are checked against the level's schema; values are quoted or formatted as floats.
    ``video_paths`` (video id -> path) resolves ``path_glob`` to ids, so no pattern reaches SQL.
    """
    if level not in S.LEVELS:
        raise SearchError(f"level must be one of {', '.join(S.LEVELS)}")
    if filters is None:
        return None
    columns = set(S.table_schema(level, 1).names)
    parts: list[str] = []

    def col(name: str) -> str:
        if name not in columns:
            raise SearchError(f"filter column '{name}' does not exist on {level}")
        return name

    ids: set[str] | None = set(filters.video_ids) if filters.video_ids is not None else None
    if filters.path_glob is not None:
        matched = {vid for vid, p in (video_paths or {}).items() if fnmatch.fnmatchcase(p, filters.path_glob)}
        ids = matched if ids is None else ids & matched
    if ids is not None:
        parts.append(in_list(col("video_id"), sorted(ids)) if ids else "false")
    if filters.time_range is not None:
        start_col, end_col = _TIME_COLUMNS[level]
        a, b = filters.time_range
        parts.append(f"{col(end_col)} >= {float(a)!r} AND {col(start_col)} <= {float(b)!r}")
    if filters.classes:
        values = ", ".join(quote(c) for c in filters.classes)
        if level == "tracks":
            parts.append(f"{col('class_name')} IN ({values})")
        else:
            parts.append(f"array_has_any({col('class_names')}, make_array({values}))")
    if filters.min_track_duration is not None:
        if level != "tracks":
            raise SearchError("min_track_duration applies to level 'tracks' only")
        parts.append(f"{col('duration_s')} >= {float(filters.min_track_duration)!r}")
    return " AND ".join(f"({p})" for p in parts) if parts else None
