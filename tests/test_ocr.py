"""On-screen text: the real bundled OCR models on a real clip with text drawn in (ffmpeg drawtext), spans, and
the full-text search over a LanceDB written in tmp_path from that OCR output."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pytest

from operators.ocr import OcrConfig, OcrFrames
from operators.text_spans import SpanConfig, normalise, text_spans
from pipeline.errors import SearchError
from pipeline.evaluation.metrics import box_iou, temporal_iou
from pipeline.evaluation.ocr import read_clip
from pipeline.evaluation.ocr_clips import FONT_DIR, ClipSpec, DrawnText, build_clip, decode_frames, ink_box
from pipeline.search.text import TextSearchConfig, TextSearcher, match_score
from pipeline.store import schema as S
from tests.helpers import GATE, gate_manifest

EXIT = DrawnText(text="EXIT 12", start=3.3, end=5.9, font="DejaVuSerif.ttf", size=30, color="yellow", x=0.6, y=0.1)


@pytest.fixture(scope="module")
def clip(testdata, tmp_path_factory):
    """A 6 s street clip with two texts drawn in; OCR of every sampled frame (1 fps), the ground-truth boxes."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is needed to draw text into clips (.ci/run installs it)")
    if not (FONT_DIR / GATE.font).exists():
        pytest.skip(f"DejaVu fonts are needed under {FONT_DIR} (.ci/run installs fonts-dejavu-core)")
    spec = ClipSpec(id="street", source="intel_sample_videos/car-detection.mp4", duration=6.0, texts=[GATE, EXIT])
    video, layers = build_clip(spec, testdata, tmp_path_factory.mktemp("ocr_clips"))
    ocr = OcrFrames(OcrConfig(select="all"))
    ocr.setup()
    read = read_clip(ocr, "vid-street", video, 1.0)
    gt = [[ink_box(f) for f in decode_frames(layer, 1.0)[2]] for layer in layers]
    return {"video": video, "read": read, "gt": gt, "ocr": ocr}


def _lines(read, i):
    return [normalise(s) for s in read["texts"][i]]


def test_reads_drawn_text_where_and_when_it_is(clip):
    read, gt = clip["read"], clip["gt"]
    assert read["t"] == pytest.approx([0, 1, 2, 3, 4, 5], abs=0.05)
    for i, t in enumerate(read["t"]):
        shown = GATE.start <= t <= GATE.end
        assert ("gate7closed" in _lines(read, i)) == shown, (t, read["texts"][i])
        if shown:
            j = _lines(read, i).index("gate7closed")
            assert read["conf"][i][j] > 0.8
            assert box_iou(gt[0][i], tuple(read["boxes"][i][j])) > 0.4  # the box is where the text was drawn
        assert ("exit12" in _lines(read, i)) == (EXIT.start <= t <= EXIT.end), (t, read["texts"][i])
    assert read["read"] == read["frames"] == 6  # select: all


def test_engine_none_and_config_checks(clip):
    off = OcrFrames(OcrConfig(engine="none"))
    off.setup()
    out = off({"video_id": np.array(["v"]), "t": np.zeros(1), "frame": [np.zeros((8, 8, 3), np.uint8)]})
    assert out["ocr_text"][0] == [] and out["ocr_boxes"][0].shape == (0, 4)
    with pytest.raises(ValueError, match="engin"):
        OcrConfig(engin="rapidocr")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        OcrConfig(engine="tesseract")  # type: ignore[arg-type]


def test_failure_rows_are_not_read(clip):
    ocr = clip["ocr"]
    before = ocr.frames_read
    frame = decode_frames(clip["video"], 1.0)[2][3]
    out = ocr(
        {"video_id": np.array(["a", "b"]), "t": np.zeros(2), "frame": [frame, frame], "error": np.array(["", "x"])}
    )
    assert "gate7closed" in [normalise(s) for s in out["ocr_text"][0]]
    assert out["ocr_text"][1] == [] and ocr.frames_read == before + 1


def test_thumbnail_is_read_when_the_frame_column_is_absent(clip):
    from operators.decode import encode_jpeg

    frame = decode_frames(clip["video"], 1.0)[2][3]
    thumb = np.empty(1, dtype=object)
    thumb[:] = [encode_jpeg(frame, 640, 90)]
    out = clip["ocr"]({"video_id": np.array(["a"]), "t": np.zeros(1), "thumb": thumb, "error": np.array([""])})
    assert "gate7closed" in [normalise(s) for s in out["ocr_text"][0]]


def test_change_gate_reuses_only_unchanged_frames(clip):
    frames = decode_frames(clip["video"], 1.0)[2]
    ocr = OcrFrames(OcrConfig(select="changed", max_reuse=2), engine=clip["ocr"].engine)
    # frame 1 (no text) three times, then frame 2 (text appeared): the gate must let the change through.
    batch = {"video_id": np.full(5, "v"), "t": np.arange(5.0), "frame": [frames[1]] * 4 + [frames[2]]}
    out = ocr(batch)
    assert out["ocr_reused"].tolist() == [False, True, True, False, False]  # max_reuse=2 forces the 4th read
    assert ocr.frames_read == 3
    assert "gate7closed" in [normalise(s) for s in out["ocr_text"][4]]
    other = ocr({"video_id": np.array(["w"]), "t": np.zeros(1), "frame": [frames[1]]})
    assert not other["ocr_reused"][0]  # another video never reuses this one's result


def test_spans_from_real_ocr(clip):
    r = clip["read"]
    rows = text_spans("vid-street", r["t"], r["frame_idx"], r["texts"], r["boxes"], r["conf"], duration_s=6.0)
    by_key = {normalise(x["text"]): x for x in rows}
    gate, exit_ = by_key["gate7closed"], by_key["exit12"]
    assert temporal_iou((gate["start_s"], gate["end_s"]), (GATE.start, GATE.end)) >= 0.8
    assert temporal_iou((exit_["start_s"], exit_["end_s"]), (EXIT.start, EXIT.end)) >= 0.6
    assert gate["n_obs"] == 3 and len(gate["trajectory"]) == 3
    assert gate["thumb_id"] == S.make_id(
        "vid-street", "frame", r["frame_idx"][int(np.argmax(np.isclose(r["t"], gate["best_t"])))]
    )
    pa.Table.from_pylist(rows, schema=S.texts_schema())  # rows fit the table's schema
    again = text_spans("vid-street", r["t"], r["frame_idx"], r["texts"], r["boxes"], r["conf"], duration_s=6.0)
    assert [x["text_id"] for x in again] == [x["text_id"] for x in rows]


def _frame(*lines):
    texts = [s for s, _ in lines]
    boxes = np.array([b for _, b in lines], np.float32).reshape(-1, 4)
    return texts, boxes, np.full(len(lines), 0.9, np.float32)


def test_span_rules():
    a, b = (0.1, 0.1, 0.4, 0.2), (0.5, 0.8, 0.9, 0.9)
    frames = [
        _frame(("Room 214", a), ("SALE", b)),
        _frame(("Roon 214", a), ("SALE", b)),  # one misread character: same span
        _frame(("Room", a)),  # a truncated reading in the same place: same span
        _frame(("Room 214", a)),
        _frame(),
        _frame(),
        _frame(("SALE", b)),  # two sampled frames missing: a new span
    ]
    t = [float(i) for i in range(len(frames))]
    rows = text_spans("v", t, list(range(len(t))), *[list(x) for x in zip(*frames, strict=True)], SpanConfig())
    assert [(r["text"], r["t_first"], r["t_last"], r["n_obs"]) for r in rows] == [
        ("Room 214", 0.0, 3.0, 4),
        ("SALE", 0.0, 1.0, 2),
        ("SALE", 6.0, 6.0, 1),
    ]
    assert rows[0]["start_s"] == 0.0 and rows[0]["end_s"] == 3.5 and rows[2]["start_s"] == 5.5
    assert len({r["text_id"] for r in rows}) == 3
    twice = text_spans("v", [0.0], [0], [["EXIT", "EXIT"]], [np.array([a, b], np.float32)], [[0.9, 0.8]])
    assert len(twice) == 2 and twice[0]["text_id"] != twice[1]["text_id"]


def _write(db, videos, texts):
    import lancedb

    conn = lancedb.connect(str(db))
    now = dt.datetime.now(dt.UTC)
    rows = []
    for vid, path, status in videos:
        row = {name: None for name in S.videos_schema().names}
        row.update(video_id=vid, path=path, status=status, indexed_at=now)
        rows.append(row)
    conn.create_table(S.VIDEOS, pa.Table.from_pylist(rows, schema=S.videos_schema()))
    conn.create_table(S.TEXTS, schema=S.texts_schema()).add(pa.Table.from_pylist(texts, schema=S.texts_schema()))


@pytest.mark.parametrize("tokenizer", ["ngram", "word"])
def test_text_search(clip, tmp_path, tokenizer):
    r = clip["read"]
    rows = {}
    for vid in ("a", "b", "c"):  # the same real OCR output under three videos: complete, complete, started
        rows[vid] = text_spans(vid, r["t"], r["frame_idx"], r["texts"], r["boxes"], r["conf"], duration_s=6.0)
    videos = [("a", "/m/a/street.mp4", "complete"), ("b", "/m/b/street.mp4", "complete"), ("c", "/m/c.mp4", "started")]
    _write(tmp_path / "db", videos, [x for v in rows.values() for x in v])
    searcher = TextSearcher(str(tmp_path / "db"), TextSearchConfig(tokenizer=tokenizer))  # type: ignore[arg-type]

    hits = searcher.search("GATE 7 CLOSED", k=5)
    assert {h.video_id for h in hits} == {"a", "b"}  # never the started video
    top = hits[0]
    assert normalise(top.text) == "gate7closed" and top.score == 1.0
    assert temporal_iou((top.start_s, top.end_s), (GATE.start, GATE.end)) >= 0.8
    assert box_iou(tuple(top.box), (0.08, 0.72, 0.5, 0.8)) > 0.4 and top.path.endswith("street.mp4")
    fuzzy = searcher.search("gate 7 cl0sed", k=5)  # one OCR-style error in the query
    assert fuzzy and normalise(fuzzy[0].text) == "gate7closed" and fuzzy[0].score < 1.0
    assert normalise(searcher.search("exit 12", k=1)[0].text) == "exit12"
    assert searcher.search("zebra crossing", k=5) == []

    only_b = searcher.search("GATE 7 CLOSED", k=5, filters={"video_ids": ["b", "c"]})
    assert only_b and {h.video_id for h in only_b} == {"b"}
    glob = searcher.search("GATE 7 CLOSED", k=5, filters={"path_glob": "/m/a/*"})
    assert glob and {h.video_id for h in glob} == {"a"}
    late = searcher.search("GATE 7 CLOSED", k=5, filters={"time_range": (5.2, 6.0)})
    assert late == []  # its span ends about 4.5 s
    assert searcher.search("EXIT 12", k=5, filters={"time_range": (5.2, 6.0)})
    with pytest.raises(SearchError):
        searcher.search("  ")
    with pytest.raises(SearchError):
        searcher.search("GATE", filters={"classes": ["car"]})


def test_match_score():
    assert match_score("gate7closed", "GATE 7 CLOSED") == (1.0, 1.0)
    sim, cover = match_score("closed", "GATE 7 CLOSED")
    assert sim == 1.0 and cover == pytest.approx(6 / 11)
    assert match_score("clsoed", "GATE 7 CLOSED")[0] == pytest.approx(1 - 2 / 6)
    # the character-count bound skips the edit distance only where the floor cannot be reached
    assert match_score("clsoed", "GATE 7 CLOSED", floor=0.6) == match_score("clsoed", "GATE 7 CLOSED")
    assert match_score("gate7clxxxx", "GATE 7 CLOSED", floor=0.6) == match_score("gate7clxxxx", "GATE 7 CLOSED")
    assert match_score("tireddogrunning", "EXIT 12", floor=0.6) == (0.0, 0.0)
    for query in ["gate7closed", "gte7closd", "gatez7", "closedgate", "xyzgate", "7", "gate7closedtoday"]:
        sim = match_score(query, "GATE 7 CLOSED")[0]
        floored = match_score(query, "GATE 7 CLOSED", floor=0.6)[0]
        assert floored == sim if sim >= 0.6 else floored in (0.0, sim), query


def test_evaluate_dispatches_an_ocr_manifest(clip, testdata, tmp_path):
    """``evaluate`` on a ``kind: ocr`` manifest runs the OCR evaluation (a 4 s clip, one text, one distractor), here
    in its direct mode (OCR in this process; tests/test_ocr_pipeline.py runs the pipeline mode)."""
    from pipeline.evaluation.ocr_pipeline import run_ocr_configs
    from pipeline.evaluation.retrieval import comparison_table

    path = gate_manifest(tmp_path / "ocr.yaml")
    overrides = ["text_search.tokenizer=ngram", "eval.mode=direct"]
    results, notices = run_ocr_configs(path, ["default"], overrides, testdata, tmp_path / "work")
    summary = results["direct default/texts/ngram"]["summary"]
    assert list(results) == ["direct default/texts/ngram"] and "direct" in notices[0]
    assert summary["R@1"] == 1.0 and summary["mean_tIoU"] >= 0.7 and summary["CER"] < 0.2
    assert 0.0 < summary["mean_box_IoU"] <= 1.0 and "| R@1 | 1.000 |" in comparison_table(results)
