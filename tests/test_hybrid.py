"""Full-text and hybrid search over segment captions on synthetic rows of the real schemas (captions written
through ``Store.commit``, no caption model): a segment is found by the words of its own caption, filters hold in
every mode, hybrid ranks equal an independent reciprocal-rank fusion of the vector-only and text-only rankings
(and LanceDB's own hybrid query with ``RRFReranker``), ``maintain`` builds and refreshes the index, and the CLI,
HTTP API and page take the mode, with clear errors where a mode cannot run."""

from __future__ import annotations

import fnmatch
import io
import itertools
import json
import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import MaintenanceConfig
from pipeline.errors import SearchError
from pipeline.search.hybrid import MODES
from pipeline.search.searcher import Searcher
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.fts import CAPTION_FTS
from pipeline.store.maintenance import maintain, needs_maintenance
from tests.helpers import (
    AUTH,
    ROOT,
    TESTDATA,
    TINY_DIM,
    TOKEN,
    clip,
    content,
    running,
    tables_of,
    tiny_config,
    video_row,
)

SUBJECTS = ["dog", "man", "woman", "cat", "child", "horse"]
ACTIONS = ["running", "sitting", "riding a bike", "eating lunch", "playing with a ball", "jumping"]
PLACES = ["on the beach", "in a park", "on a busy street", "in a kitchen"]
COMBOS = list(itertools.product(SUBJECTS, ACTIONS, PLACES))
VIDEOS = ["va", "vb", "vc", "vnocap"]  # the last one was indexed with captions off (null captions)
PER_VIDEO = 8
RRF_K = 60


def captions_of(v: int) -> list[str | None]:
    if VIDEOS[v] == "vnocap":
        return [None] * PER_VIDEO
    return [" ".join(("a", *COMBOS[(17 * (v * PER_VIDEO + j)) % len(COMBOS)])) for j in range(PER_VIDEO)]


def commit_video(store: Store, v: int, seed: int | None = None) -> None:
    vid = VIDEOS[v]
    group = content(vid, [4.0 * j for j in range(PER_VIDEO)], seed=v if seed is None else seed, dim=TINY_DIM)
    segs = group[S.SEGMENTS]
    group[S.SEGMENTS] = segs.set_column(
        segs.schema.get_field_index("caption"), "caption", pa.array(captions_of(v), pa.string())
    )
    row = video_row(vid, f"/archive/{vid}.mp4")
    store.begin([row])
    store.commit([row], tables_of(group))


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> tuple[Any, Searcher]:
    """Three captioned videos and one without captions, maintained (caption index built)."""
    path = tmp_path_factory.mktemp("hybrid") / "db"
    cfg = tiny_config(path)
    store = Store(str(path), TINY_DIM)
    for v in range(len(VIDEOS)):
        commit_video(store, v)
    report = maintain(store, MaintenanceConfig())
    assert "FTS index (stemmed words) on caption" in report["tables"][S.SEGMENTS]["actions"]
    return cfg, Searcher(store, cfg)


def segments(searcher: Searcher) -> list[dict[str, Any]]:
    return searcher.store.rows(S.SEGMENTS).drop_columns(["embedding"]).to_pylist()


def words(caption: str | None) -> set[str]:
    return set(re.findall(r"[a-z]+", caption or ""))


def test_a_segment_is_found_by_the_words_of_its_own_caption(db) -> None:
    _, searcher = db
    rows = [r for r in segments(searcher) if r["caption"]]
    assert CAPTION_FTS.name in {ix.name for ix in searcher.store.table(S.SEGMENTS).list_indices()}  # maintained
    for r in rows[::3]:
        hits = searcher.search(text=r["caption"], k=3, mode="text", rerank=None)
        assert hits[0].id == r["segment_id"], (r["caption"], [h.id for h in hits])
        assert hits[0].score == 1.0 and all(h.score <= 1.0 for h in hits)
    # stemmed words: "dogs" and "runs" find "a dog running ..."; stop words alone find nothing
    target = next(r for r in rows if "dog running" in r["caption"])
    assert target["segment_id"] in {h.id for h in searcher.search(text="dogs runs", k=5, mode="text", rerank=None)}
    assert searcher.search(text="the a of", k=5, mode="text", rerank=None) == []
    # query syntax is not parsed: quotes, AND and a colon are only words (no error, same hits as without them)
    plain = [h.id for h in searcher.search(text="horse beach", k=5, mode="text", rerank=None)]
    assert [h.id for h in searcher.search(text='"horse" AND beach:', k=5, mode="text", rerank=None)] == plain
    # segments without a caption never match words, but hybrid still reaches them through the vector ranking
    nocap = {r["segment_id"] for r in segments(searcher) if r["video_id"] == "vnocap"}
    assert not nocap & {h.id for h in searcher.search(text="a dog", k=100, mode="text", rerank=None)}
    assert nocap <= {h.id for h in searcher.search(text="a dog", k=100, mode="hybrid", rerank=None)}


FILTERS: list[dict[str, Any]] = [
    {"video_ids": ["vb", "vnocap"]},
    {"path_glob": "*/va.mp4"},
    {"time_range": [6.0, 17.0]},
    {"classes": ["dog"]},
    {"video_ids": ["va", "vc"], "time_range": [0.0, 9.0], "classes": ["person"]},
]


def _matches(r: dict[str, Any], f: dict[str, Any]) -> bool:
    ok = "video_ids" not in f or r["video_id"] in f["video_ids"]
    ok &= "path_glob" not in f or fnmatch.fnmatchcase(f"/archive/{r['video_id']}.mp4", f["path_glob"])
    if "time_range" in f:
        ok &= r["end_s"] >= f["time_range"][0] and r["start_s"] <= f["time_range"][1]
    ok &= "classes" not in f or bool(set(r["class_names"]) & set(f["classes"]))
    return bool(ok)


@pytest.mark.parametrize("f", FILTERS)
def test_filters_hold_in_text_and_hybrid_mode(db, f) -> None:
    """With k above the table size: text mode returns exactly the filtered rows whose caption has a query word;
    hybrid mode exactly the filtered rows (its vector ranking reaches all of them)."""
    _, searcher = db
    query = "beach kitchen"
    allowed = [r for r in segments(searcher) if _matches(r, f)]
    assert allowed
    text = {h.id for h in searcher.search(text=query, k=200, filters=f, mode="text", rerank=None)}
    assert text == {r["segment_id"] for r in allowed if words(r["caption"]) & {"beach", "kitchen"}}
    hybrid = {h.id for h in searcher.search(text=query, k=200, filters=f, mode="hybrid", rerank=None)}
    assert hybrid == {r["segment_id"] for r in allowed}
    rer = searcher.search(text=query, k=4, filters=f, mode="hybrid", rerank="attention")
    assert {h.id for h in rer} <= hybrid and all(h.score != h.stage1_score for h in rer)


@pytest.mark.parametrize("filters", [None, {"classes": ["dog"]}])
def test_hybrid_ranks_equal_an_independent_rrf_of_the_two_rankings(db, filters) -> None:
    cfg, searcher = db
    k = 6
    depth = k * cfg.search.overfetch  # each ranking's depth before fusion
    query = "a woman riding a bike in a park"
    vector = [h.id for h in searcher.search(text=query, k=depth, filters=filters, mode="vector", rerank=None)]
    text = [h.id for h in searcher.search(text=query, k=depth, filters=filters, mode="text", rerank=None)]
    assert 0 < len(text) < len(vector) and set(text) - set(vector[:k]), "both rankings must matter"
    fused: dict[str, float] = {}
    for ranking in (vector, text):
        for i, seg in enumerate(ranking):
            fused[seg] = fused.get(seg, 0.0) + 1.0 / (RRF_K + i + 1)
    order = list(dict.fromkeys(vector + text))  # ties: as LanceDB's RRFReranker, the lists' concatenated order
    want = sorted(fused, key=lambda seg: (-fused[seg], order.index(seg)))[:k]
    got = searcher.search(text=query, k=k, filters=filters, mode="hybrid", rerank=None)
    assert [h.id for h in got] == want and [h.rank for h in got] == list(range(1, k + 1))
    for h in got:  # reported scaled so that first in both rankings would be 1
        assert h.score == pytest.approx(fused[h.id] * (RRF_K + 1) / 2, rel=1e-9)

    # LanceDB's own hybrid query with its RRF reranker fuses the same two rankings to the same scores
    from lancedb.query import MatchQuery
    from lancedb.rerankers import RRFReranker

    emb = searcher.embed_query(query, None).embedding
    q = (
        searcher.store.table(S.SEGMENTS)
        .search(query_type="hybrid", vector_column_name="embedding")
        .vector(emb.tolist())
        .distance_type("cosine")
    )
    q = q.text(MatchQuery(query, "caption")).rerank(RRFReranker(K=RRF_K))
    if filters:
        q = q.where("array_has_any(class_names, make_array('dog'))", prefilter=True)
    lance = q.select(["segment_id"]).limit(depth).to_list()
    assert [r["segment_id"] for r in lance[:k]] == want
    for h, r in zip(got, lance, strict=False):
        assert r["_relevance_score"] * (RRF_K + 1) / 2 == pytest.approx(h.score, rel=1e-6)


def test_modes_refused_where_they_cannot_run(db, tmp_path) -> None:
    cfg, searcher = db
    with pytest.raises(SearchError, match="only segments have"):
        searcher.search(text="a dog", level="frames", mode="text")
    with pytest.raises(SearchError, match="only segments have"):
        searcher.search(text="a dog", level="tracks", mode="hybrid")
    with pytest.raises(SearchError, match="an image needs mode vector"):
        searcher.search(image=b"not read", mode="hybrid")
    with pytest.raises(SearchError, match="mode must be one of"):
        searcher.search(text="a dog", mode="words")  # type: ignore[arg-type]
    with pytest.raises(SearchError, match="empty"):
        searcher.search(text=" ", mode="text", rerank=None)
    with pytest.raises(SearchError, match="valid Unicode"):
        searcher.search(text="\ud800 dog", mode="hybrid", rerank=None)
    # Words, no syntax: a query holding "dog" among query-language characters finds what "dog" finds (not a
    # fielded search, a negation or an error), and one without a word finds nothing.
    dog = [h.id for h in searcher.search(text="dog", mode="text", rerank=None)]
    assert dog and all("dog" in (h.caption or "") for h in searcher.search(text="dog", mode="text", rerank=None))
    for hostile in ["dog\x00", "title:dog", "NOT dog", "\u202e dog"]:
        assert [h.id for h in searcher.search(text=hostile, mode="text", rerank=None)] == dog, hostile
    for hostile in ["*:*", "((((", "'", "\\"]:
        assert searcher.search(text=hostile, mode="text", rerank=None) == [], hostile

    # no caption index yet, then a database from before captions: both name the command that fixes them
    store = Store(str(tmp_path / "db"), TINY_DIM)
    commit_video(store, 0)
    fresh = Searcher(store, cfg)
    with pytest.raises(SearchError, match="no full-text index yet: run `vidsearch maintain`"):
        fresh.search(text="a dog", mode="text")
    assert needs_maintenance(store, MaintenanceConfig(scalar_index_min_rows=10**9))
    store.table(S.SEGMENTS).drop_columns(["caption"])
    with pytest.raises(SearchError, match="predates segment captions: run `vidsearch maintain`"):
        fresh.search(text="a dog", mode="hybrid")
    maintain(store, MaintenanceConfig())  # migrates (caption column, all null) and builds the index
    assert fresh.search(text="a dog", mode="text", rerank=None) == []
    assert len(fresh.search(text="a dog", mode="hybrid", rerank=None)) == PER_VIDEO


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60), mode=st.sampled_from(["text", "hybrid"]))
def test_any_query_text_gets_hits_or_a_clear_refusal(db, text, mode) -> None:  # type: ignore[no-untyped-def]
    _, searcher = db
    try:
        hits = searcher.search(text=text, k=5, mode=mode, rerank=None)
    except SearchError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert len(hits) <= 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_rows_committed_after_the_index_are_found_and_maintain_folds_them_in(tmp_path) -> None:
    cfg = tiny_config(tmp_path / "db")
    store = Store(str(tmp_path / "db"), TINY_DIM)
    commit_video(store, 0)
    maintain(store, MaintenanceConfig())
    commit_video(store, 1)  # after the build: not in the index yet
    seg, caption = S.make_id("segment", "vb", 0.0), captions_of(1)[0]
    searcher = Searcher(store, cfg)
    assert searcher.search(text=str(caption), k=1, mode="text", rerank=None)[0].id == seg
    stats = store.table(S.SEGMENTS).index_stats(CAPTION_FTS.name)
    assert stats is not None and stats.num_unindexed_rows == PER_VIDEO
    assert needs_maintenance(store, MaintenanceConfig(scalar_index_min_rows=10**9))
    maintain(store, MaintenanceConfig())
    stats = store.table(S.SEGMENTS).index_stats(CAPTION_FTS.name)
    assert stats is not None and (stats.num_indexed_rows, stats.num_unindexed_rows) == (2 * PER_VIDEO, 0)
    assert searcher.search(text=str(caption), k=1, mode="text", rerank=None)[0].id == seg


def _cli(db_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "run_pipeline.py", "search", "--config", "tiny", "--db", db_path, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_mode_and_its_errors(db, capsys) -> None:
    cfg, searcher = db
    out = _cli(cfg.db.path, "a horse on the beach", "--mode", "hybrid", "-k", "5", "--class", "dog", "--json")
    assert out.returncode == 0, out.stderr
    want = searcher.search(text="a horse on the beach", k=5, mode="hybrid", filters={"classes": ["dog"]})
    got = json.loads(out.stdout)
    assert [r["id"] for r in got] == [r.id for r in want]
    assert [r["score"] for r in got] == pytest.approx([r.score for r in want], abs=1e-6)
    from pipeline import cli

    for args, msg in [
        (["a dog", "--mode", "text", "--level", "frames"], "only segments have"),
        # on-screen text is searched by meaning too, but this database holds no text spans, so no vectors of them
        (["a dog", "--mode", "vector", "--level", "texts"], "this database has no texts vectors of"),
    ]:  # in this process (the command's error handling without the log set-up of main)
        capsys.readouterr()
        parsed = cli.parser().parse_args(["search", "--config", "tiny", "--db", cfg.db.path, *args])
        assert cli.run(parsed) == 2
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if not ln.startswith("NOTE:")]
        assert out == "" and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["search", "a dog", "--mode", "words"])
    assert "invalid choice: 'words'" in capsys.readouterr().err


def test_http_mode_get_post_and_errors(db) -> None:
    cfg, searcher = db
    with (
        running(create_app(cfg, token=TOKEN, searcher=searcher)) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=120) as c,
    ):
        want = [
            r.id for r in searcher.search(text="a cat eating lunch", k=5, mode="text", filters={"video_ids": ["va"]})
        ]
        got = c.get("/api/search", params={"text": "a cat eating lunch", "k": 5, "mode": "text", "video_ids": "va"})
        assert got.status_code == 200 and got.json()["mode"] == "text"
        assert [r["id"] for r in got.json()["results"]] == want
        body = {"text": "a cat eating lunch", "k": 5, "mode": "hybrid", "rerank": "none"}
        post = c.post("/api/search", json=body)
        assert post.status_code == 200 and post.json()["mode"] == "hybrid"
        assert [r["id"] for r in post.json()["results"]] == [
            r.id for r in searcher.search(text="a cat eating lunch", k=5, mode="hybrid", rerank=None)
        ]
        assert c.get("/api/info").json()["modes"] == ["vector", "text", "hybrid"]
        bad = c.get("/api/search", params={"text": "a dog", "mode": "text", "level": "frames"})
        assert bad.status_code == 400 and "only segments have" in bad.json()["detail"]
        bad = c.post("/api/search", json={"text": "a dog", "mode": "words"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["mode"]
        png = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 30, 30)).save(png, format="PNG")
        files = {"image": ("q.png", png.getvalue(), "image/png")}
        bad = c.post("/api/search", data={"mode": "text"}, files=files)
        assert bad.status_code == 400 and "an image needs mode vector" in bad.json()["detail"]


@pytest.mark.browser
def test_page_mode_selector(db, browser) -> None:
    cfg, searcher = db
    query = "a child playing with a ball"
    want = searcher.search(text=query, k=12, mode="text")
    with running(create_app(cfg, token=None, searcher=searcher)) as url:
        page = browser.new_page()
        page.goto(f"{url}/")
        page.wait_for_selector("#status >> text=indexed")
        page.select_option("#level", "frames")
        page.select_option("#mode", "text")
        # frames and tracks have no words: the level moves to segments and they cannot be chosen in text mode
        assert page.input_value("#level") == "segments"
        levels = page.locator("#level option").evaluate_all("os => os.map(o => [o.value, o.disabled])")
        assert dict(levels)["frames"] and dict(levels)["tracks"] and not dict(levels)["segments"]
        page.fill("#text", query)
        page.click("#go")
        page.wait_for_selector("#message >> text=text mode")
        shown = page.locator(".result").evaluate_all("cs => cs.map(c => [c.dataset.videoId, +c.dataset.start])")
        assert shown == [[r.video_id, r.start_s] for r in want] and len(want) > 1
        page.select_option("#mode", "vector")
        levels = page.locator("#level option").evaluate_all("os => os.map(o => [o.value, o.disabled])")
        assert not dict(levels)["frames"] and not dict(levels)["tracks"]
        page.close()


def test_evaluate_runs_text_queries_in_every_mode(tmp_path, capsys) -> None:
    """The same database searched in vector, text and hybrid mode by ``evaluate``: text queries that are a
    segment's caption find it first by words; image queries run in vector mode only; ``evaluate`` builds the
    caption index itself (it runs without ``maintain``)."""
    from pipeline import cli
    from pipeline.evaluation.retrieval import CAPTIONS_NEED_PRETRAINED, NO_CAPTIONS, Manifest, caption_notices, evaluate

    rel = ["mdn/flower.webm", "mmaction2/test.avi"]
    paths = [clip(r) for r in rel]
    cfg = tiny_config(tmp_path / "db")
    store = Store(str(tmp_path / "db"), TINY_DIM)
    for v, path in enumerate(paths):
        group = content(VIDEOS[v], [4.0 * j for j in range(PER_VIDEO)], seed=v, dim=TINY_DIM)
        segs = group[S.SEGMENTS]
        group[S.SEGMENTS] = segs.set_column(segs.schema.get_field_index("caption"), "caption", pa.array(captions_of(v)))
        row = {**video_row(VIDEOS[v], os.path.abspath(path)), "duration_s": 32.0}
        store.begin([row])
        store.commit([row], tables_of(group))
    queries = [
        {"id": f"caption-{v}-{j}", "video": rel[v], "text": captions_of(v)[j], "relevant": [[4.0 * j, 4.0 * j + 1]]}
        for v, j in [(0, 2), (0, 5), (1, 6)]
    ]
    queries.append({"id": "image", "video": rel[0], "image": {"t": 1.0}})
    manifest = Manifest.model_validate({"level": "segments", "queries": queries})
    got = {m: evaluate(manifest, cfg, TESTDATA, tmp_path / "work", k=5, index=False, mode=m) for m in MODES}
    assert [got[m]["summary"]["queries"] for m in MODES] == [4, 3, 3]
    assert got["text"]["summary"]["R@1"] == 1.0 and got["text"]["summary"]["mean_tIoU"] > 0
    assert got["hybrid"]["summary"]["R@5"] == 1.0
    assert [q["id"] for q in got["hybrid"]["queries"]] == [q["id"] for q in queries[:3]]

    assert caption_notices("tiny", cfg.db.path, True, ["vector"]) == []
    assert caption_notices("tiny", cfg.db.path, True, ["vector", "text", "hybrid"]) == [
        CAPTIONS_NEED_PRETRAINED.format(name="tiny", modes="text/hybrid")
    ]
    store.table(S.SEGMENTS).update(values={"caption": None})
    assert caption_notices("tiny", cfg.db.path, False, ["hybrid"]) == [NO_CAPTIONS.format(name="tiny", modes="hybrid")]

    manifest_path = str(ROOT / "eval" / "text_queries.yaml")
    parsed = cli.parser().parse_args(["evaluate", "--manifest", manifest_path, "--modes", "vector,words"])
    assert cli.run(parsed) == 2
    assert "error: unknown search mode(s) words; choose from vector, text, hybrid" in capsys.readouterr().err
