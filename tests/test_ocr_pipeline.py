"""On-screen text through the whole pipeline: a real clip with "GATE 7 CLOSED" drawn in is indexed on Ray with
the bundled OCR models (the ``text_db`` fixture); the text spans land in the ``texts`` table through the same
commit as every other row, exactly once across a rerun, and ``search --level texts`` finds the moment."""

from __future__ import annotations

import json

import pytest

from pipeline import schema as S
from pipeline.store import Store
from pipeline.text_search import TextSearcher


def test_text_spans_are_indexed_once_and_found_by_their_words(text_clip, text_db, capsys) -> None:
    from pipeline.runner import run_index
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
