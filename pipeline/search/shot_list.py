"""The shots of an indexed video, read back from its segments (``GET /api/videos/{id}/shots``).

Segments never cross a cut and each carries its shot's index and span (``operators/assemble.py``), so a
video's shots are its segments grouped by ``shot_idx``. A shot too short to hold a sampled frame has no
segment and is not listed (the next shot's start is still a cut). Videos indexed without a shot detector, or
before the shot columns existed, have no spans: ``detected`` is false and the list is empty.
"""

from __future__ import annotations

from typing import Any

from pipeline.store import schema as S
from pipeline.store.db import Store, quote

SPAN_COLUMNS = ("shot_idx", "shot_start_s", "shot_end_s")


def video_shots(store: Store, video_id: str) -> dict[str, Any]:
    """``{"detected", "shots": [{"shot_idx", "start_s", "end_s"}...] in time order, "cuts": [s...]}``: the
    cuts are the start times of every listed shot after the first."""
    shots: list[dict[str, Any]] = []
    if store.exists(S.SEGMENTS) and set(SPAN_COLUMNS) <= set(store.table(S.SEGMENTS).schema.names):
        where = f"video_id = {quote(video_id)} AND shot_start_s IS NOT NULL AND shot_end_s IS NOT NULL"
        spans: dict[int, tuple[float, float]] = {}
        for r in store.rows(S.SEGMENTS, where, list(SPAN_COLUMNS)).to_pylist():
            i, s, e = int(r["shot_idx"]), float(r["shot_start_s"]), float(r["shot_end_s"])
            old = spans.get(i, (s, e))
            spans[i] = (min(old[0], s), max(old[1], e))
        shots = [{"shot_idx": i, "start_s": s, "end_s": e} for i, (s, e) in sorted(spans.items())]
    return {"detected": bool(shots), "shots": shots, "cuts": [s["start_s"] for s in shots[1:]]}
