"""Structured filters compile to safe LanceDB expressions: on the indexed sample videos every filter returns
exactly the rows an independent Python filter selects, and injection payloads return nothing outside the
filter and never an unhandled error. Query validation: length limit, empty query, k, level, re-ranker."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from pipeline.errors import SearchError
from pipeline.search.filters import Filters, compile_filters
from pipeline.search.searcher import Searcher
from pipeline.store import schema as S

PAYLOADS = [
    "' OR 1=1 --",
    "x' OR '1'='1",
    "') OR ('1'='1",
    "'; DROP TABLE videos; --",
    "0; DELETE FROM segments",
    "/* comment */ OR true",
    "*/ OR 1=1 /*",
    "-- ",
    "\\' OR 1=1 --",  # backslash escapes mean nothing inside SQL strings
    "\\",
    '" OR ""="',
    "` OR 1=1",
    "%",
    "_",
    "\u2019 OR 1=1 --",  # right single quotation mark
    "\uff07 OR 1=1 --",  # fullwidth apostrophe
    "\u02bc OR 1=1",  # modifier letter apostrophe
    "a\u202e' RO 1=1",  # right-to-left override
    "\u200b'\u200b OR 1=1",  # zero-width spaces around a quote
    "e\u0301' OR 1=1",  # combining accent
    "\n' OR 1=1\r\n",
    "'" * 999,  # under the length limit: 999 quotes, each doubled in SQL
    "*a" * 400,  # a glob that backtracks badly in naive matchers
]
#: Rejected by validation with a SearchError (never reach SQL).
REJECTED = ["x" * 1001, "'" * 5000, "a\x00' OR 1=1", "\ud800' OR 1=1"]


@pytest.fixture(scope="module")
def searcher(indexed_db) -> Searcher:
    cfg, _ = indexed_db
    return Searcher(cfg.db.path, cfg)


@pytest.fixture(scope="module")
def tables(searcher) -> dict[str, list[dict]]:
    """Every row of every level and the videos, read directly (the reference for the filters)."""
    out = {level: searcher.store.rows(level).drop_columns(["embedding"]).to_pylist() for level in S.LEVELS}
    out[S.VIDEOS] = searcher.store.rows(S.VIDEOS).to_pylist()
    return out


def _key(level: str) -> str:
    return S.KEYS[level]


def _span(level: str, row: dict) -> tuple[float, float]:
    if level == "frames":
        return row["t"], row["t"]
    if level == "segments":
        return row["start_s"], row["end_s"]
    return row["t_first"], row["t_last"]


def _classes(level: str, row: dict) -> set[str]:
    return {row["class_name"]} if level == "tracks" else set(row["class_names"] or [])


def _search(searcher: Searcher, level: Any, filters: dict) -> set[str]:
    """Ids returned for ``filters``; k exceeds every table, so all matching rows come back."""
    return {r.id for r in searcher.search(text="a person", k=1000, level=level, filters=filters, rerank=None)}


def test_compile_filters_quotes_values_and_keeps_patterns_out_of_sql() -> None:
    where = compile_filters(
        Filters(video_ids=["a'b"], classes=["it's"], time_range=(1, 2.5)), "segments", {"a'b": "/x/a.mp4"}
    )
    assert where == (
        "(video_id IN ('a''b')) AND (end_s >= 1.0 AND start_s <= 2.5) "
        "AND (array_has_any(class_names, make_array('it''s')))"
    )
    where = compile_filters(Filters(path_glob="*/a'*.mp4", min_track_duration=2), "tracks", {"v1": "/x/a'1.mp4"})
    assert where == "(video_id IN ('v1')) AND (duration_s >= 2.0)"  # the glob became ids; never SQL
    assert compile_filters(Filters(path_glob="nothing*"), "frames", {"v1": "/x/a.mp4"}) == "(false)"
    assert compile_filters(None, "frames") is None
    with pytest.raises(SearchError, match="level must be one of"):
        compile_filters(Filters(), "videos; DROP TABLE x")  # type: ignore[arg-type]
    with pytest.raises(SearchError, match="min_track_duration applies to level 'tracks' only"):
        compile_filters(Filters(min_track_duration=1), "segments")


@pytest.mark.parametrize("level", S.LEVELS)
def test_each_filter_returns_exactly_the_rows_it_selects(searcher, tables, level) -> None:
    rows, videos = tables[level], tables[S.VIDEOS]
    everything = {r[_key(level)] for r in rows}
    assert _search(searcher, level, {}) == everything

    vid = videos[0]["video_id"]
    assert _search(searcher, level, {"video_ids": [vid]}) == {r[_key(level)] for r in rows if r["video_id"] == vid}

    name = videos[1]["path"].rsplit("/", 1)[-1]
    by_glob = {v["video_id"] for v in videos if fnmatch.fnmatchcase(v["path"], f"*/{name}")}
    assert len(by_glob) == 1
    assert _search(searcher, level, {"path_glob": f"*/{name}"}) == {
        r[_key(level)] for r in rows if r["video_id"] in by_glob
    }

    a, b = 4.5, 100.0
    in_time = {r[_key(level)] for r in rows if _span(level, r)[1] >= a and _span(level, r)[0] <= b}
    assert _search(searcher, level, {"time_range": (a, b)}) == in_time
    assert in_time and in_time != everything  # the filter really selects

    some_class = sorted(_classes(level, next(r for r in rows if _classes(level, r))))[0]
    with_class = {r[_key(level)] for r in rows if some_class in _classes(level, r)}
    assert _search(searcher, level, {"classes": [some_class]}) == with_class
    assert _search(searcher, level, {"classes": ["no-such-class"]}) == set()

    if level == "tracks":
        d = sorted(r["duration_s"] for r in rows)[len(rows) // 2]
        assert _search(searcher, level, {"min_track_duration": d}) == {
            r["track_id"] for r in rows if r["duration_s"] >= d
        }
    hits = searcher.search(text="a person", k=1000, level=level, rerank=None)
    cut = sorted(h.score for h in hits)[len(hits) // 2]
    assert {h.id for h in searcher.search(text="a person", k=1000, level=level, filters={"min_score": cut})} == {
        h.id for h in searcher.search(text="a person", k=1000, level=level) if h.score >= cut
    }


@pytest.mark.parametrize("level", S.LEVELS)
def test_injection_payloads_return_nothing_outside_the_filter(searcher, tables, level) -> None:
    rows, videos = tables[level], tables[S.VIDEOS]
    counts = {name: searcher.store.count(name) for name in (*S.LEVELS, S.VIDEOS, S.THUMBNAILS)}
    vid = videos[0]["video_id"]
    of_vid = {r[_key(level)] for r in rows if r["video_id"] == vid}
    paths = {v["video_id"]: v["path"] for v in videos}
    for payload in PAYLOADS:
        assert _search(searcher, level, {"video_ids": [payload]}) == set(), payload
        assert _search(searcher, level, {"video_ids": [vid, payload]}) == of_vid, payload
        assert _search(searcher, level, {"video_ids": [vid + payload[:900]]}) == set(), payload
        assert _search(searcher, level, {"video_ids": [vid], "classes": [payload]}) == set(), payload
        globbed = {v for v, p in paths.items() if fnmatch.fnmatchcase(p, payload)}
        assert _search(searcher, level, {"path_glob": payload}) == {
            r[_key(level)] for r in rows if r["video_id"] in globbed
        }, payload
    many = [vid] + [p for p in PAYLOADS for _ in range(40)][:999]  # a list at its length limit
    assert _search(searcher, level, {"video_ids": many}) == of_vid
    assert {name: searcher.store.count(name) for name in counts} == counts  # nothing was changed


@pytest.mark.parametrize(
    "filters",
    [{"video_ids": [p]} for p in REJECTED]
    + [{"classes": [p]} for p in REJECTED]
    + [{"path_glob": p} for p in REJECTED]
    + [
        {"video_ids": ["a"] * 1001},
        {"time_range": (3, 1)},
        {"time_range": (-1, 1)},
        {"time_range": (0, float("inf"))},
        {"time_range": ("0 OR 1=1", 2)},
        {"min_score": float("nan")},
        {"min_track_duration": "1; DROP TABLE tracks"},
        {"video_id": ["typo"]},
        {"where": "1=1"},
    ],
    ids=lambda f: repr(f)[:40],
)
def test_invalid_filters_are_search_errors(searcher, filters) -> None:
    with pytest.raises(SearchError, match="invalid filters"):
        searcher.search(text="a person", level="tracks", filters=filters)


def test_query_validation(searcher) -> None:
    limit = searcher.cfg.search.max_query_chars
    assert searcher.search(text="a" * limit, k=1)  # at the limit: served
    with pytest.raises(SearchError, match=f"longer than {limit} characters"):
        searcher.search(text="a" * (limit + 1))
    for empty in ["", "   ", "\n\t"]:
        with pytest.raises(SearchError, match="empty"):
            searcher.search(text=empty)
    with pytest.raises(SearchError, match="exactly one"):
        searcher.search()
    with pytest.raises(SearchError, match="exactly one"):
        searcher.search(text="a", image=b"x")
    with pytest.raises(SearchError, match="not a readable image"):
        searcher.search(image=b"GIF89a' OR 1=1")
    for k in [0, -1, searcher.cfg.search.max_k + 1, 2.5, True]:
        with pytest.raises(SearchError, match="k must be an integer"):
            searcher.search(text="a", k=k)
    with pytest.raises(SearchError, match="level must be one of"):
        searcher.search(text="a", level="videos")  # type: ignore[arg-type]
    with pytest.raises(SearchError, match="unknown re-ranker 'nope'"):
        searcher.search(text="a", rerank="nope")
    with pytest.raises(SearchError, match="filters must be a mapping"):
        searcher.search(text="a", filters="video_id = 'x' OR 1=1")  # type: ignore[arg-type]
