"""On-screen text through the whole pipeline: a real clip with "GATE 7 CLOSED" drawn in is indexed on Ray with
the bundled OCR models (the ``text_db`` fixture); the text spans land in the ``texts`` table through the same
commit as every other row, exactly once across a rerun, and ``search --level texts`` finds the moment; the
segments hold the text read on their frames, so ``search --mode text`` finds them by it too."""

from __future__ import annotations

import json

import pytest

from pipeline.search.searcher import Searcher
from pipeline.search.text import TextSearcher
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import gate_manifest


def test_text_spans_are_indexed_once_and_found_by_their_words(text_clip, text_db, capsys) -> None:
    from pipeline.index.runner import run_index
    from run_pipeline import main

    cfg, summary = text_db
    db = cfg.db.path
    assert summary.failed == 0 and summary.texts >= 1, summary
    store = Store(str(db), 64)
    spans = store.rows(S.TEXTS).to_pylist()
    assert len(spans) == summary.texts
    gate = [s for s in spans if "GATE" in s["text"].upper()]
    assert len(gate) == 1, [s["text"] for s in spans]
    # Sampled at 1 fps, the text was read at t = 2, 3, 4: the span covers them, not the frames without it.
    assert gate[0]["t_first"] == pytest.approx(2.0, abs=0.05) and gate[0]["t_last"] == pytest.approx(4.0, abs=0.05)

    again = run_index(cfg, [str(text_clip)], progress=False)
    assert again.skipped == 1 and store.count(S.TEXTS) == len(spans)  # a rerun leaves each span once

    hits = TextSearcher(str(db)).search("gate 7 closed", k=3)
    assert hits and hits[0].text_id == gate[0]["text_id"]
    assert hits[0].start_s <= 3.0 <= hits[0].end_s
    fuzzy = TextSearcher(str(db)).search("GATE 7 CL0SED", k=3)  # one OCR-style error in the query
    assert fuzzy and fuzzy[0].text_id == gate[0]["text_id"]

    assert main(["search", "gate closed", "--level", "texts", "--config", "tiny", "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["text_id"] == gate[0]["text_id"] and out[0]["video_id"] == gate[0]["video_id"]

    # Each frame stores the lines read on it (OCR on: a list on every frame, empty where nothing was read); the
    # span's observations are among them, box and confidence alike, and no frame outside the span reads the sign.
    lines = {r["t"]: r["text_lines"] for r in store.rows(S.FRAMES, columns=["t", "text_lines"]).to_pylist()}
    assert len(lines) == summary.frames and all(v is not None for v in lines.values())
    for o in gate[0]["trajectory"]:
        read = [(ln["x1"], ln["y1"], ln["x2"], ln["y2"], ln["conf"]) for ln in lines[o["t"]]]
        assert (o["x1"], o["y1"], o["x2"], o["y2"], o["conf"]) in read
    outside = [t for t, v in lines.items() if not 1.5 < t < 4.5 and any("GATE" in ln["text"].upper() for ln in v)]
    assert not outside

    # The segments carry the text read on their frames, and `--mode text` finds them by it (after `maintain`).
    segs = store.rows(S.SEGMENTS, columns=["segment_id", "start_s", "end_s", "screen_text"]).to_pylist()
    shown = {s["segment_id"] for s in segs if "GATE" in (s["screen_text"] or "").upper()}
    assert shown and {s["segment_id"] for s in segs if s["start_s"] <= 3.0 < s["end_s"]} <= shown
    assert all(s["end_s"] >= 2.0 and s["start_s"] <= 4.0 for s in segs if s["segment_id"] in shown)
    assert main(["maintain", "--config", "tiny", "--db", str(db)]) == 0
    capsys.readouterr()
    hits = Searcher(store, cfg).search(text="GATE 7 CL0SED", k=3, mode="text", rerank=None)
    assert hits and hits[0].id in shown and "GATE" in (hits[0].screen_text or "").upper()


def test_evaluate_indexes_the_manifest_through_the_pipeline(testdata, ray_session, tmp_path, capsys) -> None:
    """``evaluate`` on an OCR manifest indexes its clips on Ray (by default) and scores what the index holds; with
    ``eval.mode=both`` the direct mode is reported beside it (a 4 s clip with text, a 3 s distractor)."""
    from run_pipeline import main

    path, out, work = gate_manifest(tmp_path / "ocr.yaml"), tmp_path / "results.json", tmp_path / "work"
    args = ["evaluate", "--manifest", str(path), "--media-root", str(testdata), "--work-dir", str(work)]
    sets = ["--set", "text_search.tokenizer=ngram", "--set", "eval.mode=both", "--json", str(out)]
    assert main([*args, *sets]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert list(results) == [
        "pipeline default/texts/ngram",
        "pipeline default/segments/text mode",
        "direct default/texts/ngram",
    ]
    piped, direct = results["pipeline default/texts/ngram"], results["direct default/texts/ngram"]
    assert piped["summary"]["R@1"] == 1.0 and piped["summary"]["mean_tIoU"] >= 0.7
    assert 0.5 < piped["summary"]["mean_box_IoU"] <= 1.0 and piped["summary"]["span CER"] < 0.2
    assert piped["summary"]["frames"] == 7 and piped["summary"]["text spans"] >= 1  # 4 + 3 sampled frames
    # The segments, searched in text mode by the words read on their frames: the drawn text's window first.
    segs = results["pipeline default/segments/text mode"]["summary"]
    assert segs["R@1"] == 1.0 and segs["R@1 one-error"] == 1.0 and 0 < segs["mean_tIoU"] <= 1.0
    assert segs["mean_box_IoU"] is None  # a segment hit has no text box to score
    assert piped["summary"]["OCR stage CPU s"] > 0
    assert any("ocr" in name for name in piped["run"]["graph_stages"])
    assert direct["summary"]["R@1"] == 1.0 and direct["summary"]["CER"] < 0.2
    # per-frame CER from the readings the index stores with its frames, as direct mode computes it on its own
    assert piped["summary"]["CER"] < 0.2 and abs(piped["summary"]["CER"] - direct["summary"]["CER"]) <= 0.05
    assert "'pipeline' columns" in printed and "| R@1 | 1.000 | 1.000 |" in printed
    assert not any(p.name.startswith("ocr-pipeline-") for p in work.iterdir())  # the temporary database is gone
