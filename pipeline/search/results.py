"""The results of a search, at every level: what ``Searcher.search`` returns and the HTTP API serialises."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SHOT_COLUMNS = ("shot_idx", "shot_start_s", "shot_end_s")


@dataclass
class Box:
    class_name: str
    box: list[float]  # normalised x1, y1, x2, y2
    track_id: str
    conf: float


@dataclass
class SearchResult:
    rank: int
    level: str
    id: str
    video_id: str
    path: str
    start_s: float
    end_s: float
    score: float
    stage1_score: float
    thumb_id: str
    boxes: list[Box] = field(default_factory=list)
    class_name: str | None = None
    trajectory: list[dict[str, float]] | None = None
    # Segment hits: the shot the segment lies in and its span (null without shot detection or on older tables).
    shot_idx: int | None = None
    shot_start_s: float | None = None
    shot_end_s: float | None = None
    caption: str | None = None  # segments: the captioner's description of the keyframe (null when captions are off)
    # The on-screen text read in the segment (or on the frame, for frame hits), a line each (null: none read)
    screen_text: str | None = None
    # Speech hits: what was said in the utterance, and the words that matched the query with their times
    # ({word, start_s, end_s, probability}, video clock); segment hits: the words spoken in the segment (text).
    text: str | None = None
    words: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_shot(self, row: dict[str, Any]) -> SearchResult:
        """This result with the shot columns of ``row`` (absent on tables indexed before them: left null)."""
        self.shot_idx, self.shot_start_s, self.shot_end_s = (row.get(c) for c in SHOT_COLUMNS)
        return self
