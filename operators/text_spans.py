"""Text spans: the same on-screen text across consecutive sampled frames becomes one span (a track for text).

``text_spans`` is a pure function over one video's per-frame OCR results in time order. A line joins an open
span when their normalised texts are fuzzy-equal (edit-distance similarity, so one misread character does not
split a span) and the span was seen at most ``max_gap`` sampled frames earlier; otherwise it opens a new span.
Boxes may move (scrolling or moving text), so the box only breaks ties between candidate spans.

Each span becomes one row of the ``texts`` table: its most confident reading, first/last sampled times, an
estimate of the on-screen interval (half a sampling step beyond the first and last sighting: the text appeared
somewhere between the previous sample and the first one), mean confidence and the box trajectory.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from operators.base import StrictModel
from operators.contract import make_id

__all__ = ["SpanConfig", "frame_lines", "normalise", "similarity", "text_spans"]


class SpanConfig(StrictModel):
    min_similarity: float = 0.75  # 1 - edit distance / longer length, on normalised texts
    max_gap: int = 1  # sampled frames a span may miss (a misread or occluded frame) and still continue
    min_obs: int = 1  # spans seen on fewer sampled frames are dropped
    min_box_iou: float = 0.3  # a reading contained in a span's text joins it only when their boxes overlap this much
    min_part_chars: int = 3  # ... and when it has at least this many characters


_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case-folded, accent-folded text with whitespace removed (the recogniser drops or adds spaces freely)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode() or text
    return _SPACE.sub("", folded.casefold())


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance of two sequences (characters of strings, or words)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    return 1.0 - edit_distance(a, b) / max(len(a), len(b))


def _contains(a: str, b: str, min_similarity: float, min_chars: int = 3) -> bool:
    """Whether the shorter of two texts is found, nearly, inside the longer one."""
    short, long = sorted((a, b), key=len)
    if len(short) < min_chars:
        return False
    from_start = similarity(short, long[: len(short)])
    from_end = similarity(short, long[-len(short) :])
    return max(from_start, from_end) >= min_similarity


def _iou(a: Any, b: Any) -> float:
    """IoU of two ``x1, y1, x2, y2`` boxes (sequences or arrays)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def frame_lines(texts: Sequence[str], boxes: Any, confs: Sequence[float]) -> list[dict[str, Any]]:
    """One frame's OCR readings (``ocr_text``, ``ocr_boxes`` [N, 4] normalised, ``ocr_conf``) as the rows of its
    ``frames.text_lines`` (``pipeline.store.schema.TEXT_LINE``), in the order read."""
    box = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).tolist()
    return [
        {"text": str(s), "conf": float(c), "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]}
        for s, b, c in zip(texts, box, confs, strict=True)
    ]


@dataclass
class _Span:
    key: str
    last_step: int
    obs: list[dict[str, Any]] = field(default_factory=list)  # t, frame_idx, text, box, conf


def text_spans(
    video_id: str,
    t: Sequence[float],
    frame_idx: Sequence[int],
    texts: Sequence[Sequence[str]],
    boxes: Sequence[Any],
    confs: Sequence[Sequence[float]],
    cfg: SpanConfig | None = None,
    step_s: float | None = None,
    duration_s: float | None = None,
) -> list[dict[str, Any]]:
    """Rows of the ``texts`` table for one video (see ``pipeline.store.schema.texts_schema``), ordered by start.

    ``t``/``frame_idx``/``texts``/``boxes``/``confs`` are per sampled frame, in time order (boxes [N, 4]
    normalised). ``step_s`` is the sampling step (default: the median step of ``t``); ``duration_s`` clips
    the estimated end.
    """
    cfg = cfg or SpanConfig()
    order = np.argsort(np.asarray(t, dtype=np.float64), kind="stable")
    ts = np.asarray(t, dtype=np.float64)[order]
    step = step_s if step_s is not None else (float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0)
    open_spans: list[_Span] = []
    done: list[_Span] = []
    for k, i in enumerate(order):
        still = [s for s in open_spans if k - s.last_step <= cfg.max_gap + 1]
        done += [s for s in open_spans if k - s.last_step > cfg.max_gap + 1]
        open_spans = still
        taken: set[int] = set()
        lines = sorted(zip(texts[i], np.asarray(boxes[i]).reshape(-1, 4), confs[i], strict=True), key=lambda x: -x[2])
        for text, box, conf in lines:
            key = normalise(str(text))
            if not key:
                continue
            best, best_score = None, -1.0
            for j, s in enumerate(open_spans):
                if j in taken or s.last_step == k:
                    continue
                overlap = _iou(box, s.obs[-1]["box"])
                sim = similarity(key, s.key)
                if sim < cfg.min_similarity and overlap >= cfg.min_box_iou:
                    # A partial reading of the same line in the same place ("Room" for "Room 214").
                    sim = cfg.min_similarity if _contains(key, s.key, cfg.min_similarity, cfg.min_part_chars) else sim
                if sim < cfg.min_similarity:
                    continue
                score = sim + 0.5 * overlap  # the box breaks ties between equal texts
                if score > best_score:
                    best, best_score = j, score
            obs = {
                "t": float(ts[k]),
                "frame_idx": int(frame_idx[i]),
                "text": str(text),
                "box": box,
                "conf": float(conf),
            }
            if best is None:
                open_spans.append(_Span(key, k, [obs]))
                taken.add(len(open_spans) - 1)
            else:
                span = open_spans[best]
                span.obs.append(obs)
                span.last_step = k
                taken.add(best)
    done += open_spans
    rows = sorted(
        (_row(video_id, s, step, duration_s) for s in done if len(s.obs) >= cfg.min_obs),
        key=lambda r: (r["t_first"], r["text"], r["box"]),
    )
    seen: dict[str, int] = {}
    for r in rows:  # the same text twice on one frame: the second copy gets an ordinal, still deterministic
        n = seen[r["text_id"]] = seen.get(r["text_id"], 0) + 1
        if n > 1:
            r["text_id"] = make_id(r["text_id"], n)
    return rows


def _row(video_id: str, span: _Span, step: float, duration_s: float | None) -> dict[str, Any]:
    best = max(span.obs, key=lambda o: o["conf"])
    # The span's text: the reading seen most often (normalised, so "Room214" and "Room 214" count together;
    # ties: the longer, since partial readings are truncations), written as its most confident spelling.
    groups: dict[str, list[dict[str, Any]]] = {}
    for o in span.obs:
        groups.setdefault(normalise(o["text"]), []).append(o)
    key = max(groups, key=lambda g: (len(groups[g]), len(g), max(o["conf"] for o in groups[g])))
    text = max(groups[key], key=lambda o: o["conf"])["text"]
    t_first, t_last = span.obs[0]["t"], span.obs[-1]["t"]
    end = t_last + step / 2
    if duration_s is not None and duration_s > 0:
        end = min(end, duration_s)
    return {
        "text_id": make_id(video_id, "text", f"{t_first:.3f}", normalise(text)),
        "video_id": video_id,
        "text": text,
        "start_s": max(0.0, t_first - step / 2),
        "end_s": max(end, t_last),
        "t_first": t_first,
        "t_last": t_last,
        "n_obs": len(span.obs),
        "conf_mean": float(np.mean([o["conf"] for o in span.obs])),
        "best_t": best["t"],
        "box": [float(v) for v in best["box"]],
        "thumb_id": make_id(video_id, "frame", int(best["frame_idx"])),  # the frame id, as assemble makes it
        "trajectory": [
            {
                "t": o["t"],
                "x1": float(o["box"][0]),
                "y1": float(o["box"][1]),
                "x2": float(o["box"][2]),
                "y2": float(o["box"][3]),
                "conf": o["conf"],
            }
            for o in span.obs
        ],
    }
