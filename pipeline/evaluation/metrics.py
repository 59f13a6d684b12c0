"""Pure metric functions shared by every evaluation: span and box overlap, precision/recall/F1, and the
character and word error rates. No I/O, no models, no project imports beyond the edit distance."""

from __future__ import annotations

import re
from collections.abc import Sequence

from operators.text_spans import edit_distance

Span = tuple[float, float]
Box4 = tuple[float, float, float, float]


def overlaps(a: Span, b: Span) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def temporal_iou(a: Span, b: Span) -> float:
    """Intersection over union of two time spans (two equal points count 1)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else float(a == b)


def box_iou(a: Box4, b: Box4) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1; an empty side counts as perfect (nothing to find, nothing wrongly found)."""
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _spaces(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cer(truth: str, read: str) -> float:
    """Character error rate of ``read`` against ``truth`` (whitespace runs folded), capped at 1."""
    a, b = _spaces(truth), _spaces(read)
    return min(1.0, edit_distance(a, b) / max(1, len(a)))


def wer(truth: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Word error rate: word-level edit distance over the reference length (not capped: insertions count)."""
    return edit_distance(list(truth), list(hypothesis)) / max(1, len(truth))
