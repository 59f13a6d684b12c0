"""Captions through the whole pipeline on Ray: one real clip indexed with the tiny config (its random tiny BLIP
captions each segment's keyframe in the graph's caption stage); every segment carries the caption of the frame
the stage captioned for it, those frames are exactly the segments' keyframes (thumbnails), search results
carry the caption, a rerun adds no rows, and text and hybrid search find a segment by its own caption."""

from __future__ import annotations

import logging
import shutil

from operators.captions import RANDOM_CAPTIONS_NOTICE
from operators.contract import make_id
from pipeline.cli.search import format_table
from pipeline.index.catalog import list_videos
from pipeline.index.graph import frame_dataset
from pipeline.index.runner import run_index
from pipeline.search.meaning import dense_ranking
from pipeline.search.searcher import Searcher
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import clip, tiny_config


def test_segments_get_their_keyframe_caption_exactly_once(ray_session, tmp_path, caplog) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(clip("mmaction2/test.mp4"), folder / "test.mp4")  # 10 s: windows [0,4), [4,8), [8,10)
    # 2 fps in blocks of 2 frames: most blocks hold no keyframe, so they reach the assembler with an all-null
    # caption column (which Ray Data turns into NaN when it joins them with captioned blocks)
    small_blocks = ["decode.fps=2", "decode.chunk_frames=2", "ray.captions.batch_size=2"]
    cfg = tiny_config(tmp_path / "db", *small_blocks)
    assert cfg.captions.model == "blip" and cfg.captions.random_weights
    with caplog.at_level(logging.WARNING, logger="pipeline.index.runner"):
        first = run_index(cfg, [str(folder)], progress=False)
    notes = [r.getMessage() for r in caplog.records if r.name == "pipeline.index.runner" and "NOTE:" in r.getMessage()]
    assert len(notes) == 1 and "carry no meaning" in notes[0] and RANDOM_CAPTIONS_NOTICE in notes[0]  # one line
    assert (first.indexed, first.failed, first.segments) == (1, 0, 3), first.failures
    store = Store(cfg.db.path)
    segments = store.rows(S.SEGMENTS).to_pylist()
    assert len(segments) == 3
    assert all(isinstance(s["caption"], str) and s["caption"] for s in segments), segments

    # The caption stage's own output, rerun without the detector (captions do not depend on it): the frames it
    # captioned are exactly the segments' keyframes, and each segment holds its keyframe's caption.
    video = list_videos([str(folder)])[0][0]
    graph_cfg = tiny_config(tmp_path / "db", *small_blocks, "detect.enabled=false")
    rows = frame_dataset(graph_cfg, [{"video_id": video.video_id, "path": video.path}], None)
    rows = rows.select_columns(["video_id", "frame_idx", "caption"]).take_all()
    assert len(rows) == 20
    captioned = {
        make_id(r["video_id"], "frame", r["frame_idx"]): r["caption"] for r in rows if isinstance(r["caption"], str)
    }
    assert set(captioned) == {s["thumb_id"] for s in segments}
    assert {s["thumb_id"]: s["caption"] for s in segments} == captioned

    # Search results carry the segment's caption.
    hits = Searcher(store, cfg).search(text="a person", k=3, rerank="none")
    assert {h.id: h.caption for h in hits} == {s["segment_id"]: s["caption"] for s in segments}
    table = format_table(hits)
    assert all(f"      {h.caption}" in table.splitlines() for h in hits)  # the CLI shows it under each hit

    # A rerun skips the video: no row is added or changed.
    counts = {t: store.table(t).count_rows() for t in S.CONTENT_TABLES if store.exists(t)}
    second = run_index(cfg, [str(folder)], progress=False)
    assert (second.indexed, second.skipped, second.segments) == (0, 1, 0)
    assert {t: store.table(t).count_rows() for t in counts} == counts
    again = store.rows(S.SEGMENTS).to_pylist()
    assert sorted((s["segment_id"], s["caption"]) for s in again) == sorted(
        (s["segment_id"], s["caption"]) for s in segments
    )

    # The captions the pipeline wrote are searchable by their words (the run's maintenance built the index): text
    # mode returns exactly the segments holding the words of a caption (the tiny random captioner may give several
    # keyframes the same words), and hybrid mode fuses those with the vector ranking and the captions' ranking by
    # meaning: its order is an independent reciprocal-rank fusion of the three rankings (k 60, ties in the lists'
    # concatenated order), and k=2 of the 3 segments keeps its first two.
    searcher = Searcher(store, cfg)
    for seg in segments:
        same = {s["segment_id"] for s in segments if s["caption"] == seg["caption"]}
        words = searcher.search(text=seg["caption"], k=len(same), mode="text", rerank="none")
        assert {h.id for h in words} == same and all(h.caption == seg["caption"] for h in words)
        depth = 2 * cfg.search.overfetch
        vector = [h.id for h in searcher.search(text=seg["caption"], k=depth, mode="vector", rerank="none")]
        text = [h.id for h in searcher.search(text=seg["caption"], k=depth, mode="text", rerank="none")]
        # and the captions' ranking by meaning (their sentence vectors; the clip has no speech or screen text)
        embedder = searcher.text_embedder()
        assert embedder is not None
        table = store.table(S.SEGMENTS)
        query = embedder.query(seg["caption"])
        near = dense_ranking(table, "caption_vector", query, embedder.model_id, ["segment_id"], depth, None)
        meaning = [r["segment_id"] for r in near]
        assert len(meaning) == len(segments)
        rrf: dict[str, float] = {}
        for ranking in (vector, text, meaning):
            for i, sid in enumerate(ranking):
                rrf[sid] = rrf.get(sid, 0.0) + 1.0 / (60 + i + 1)
        order = list(dict.fromkeys(vector + text + meaning))
        want = sorted(rrf, key=lambda sid: (-rrf[sid], order.index(sid)))[:2]
        fused = searcher.search(text=seg["caption"], k=2, mode="hybrid", rerank="none")
        assert [h.id for h in fused] == want, (vector, text, meaning)
    assert searcher.search(text="zzzz qqqq", k=3, mode="text", rerank="none") == []  # words in no caption
