"""The lines of on-screen text read on each frame are stored with the frame (``frames.text_lines``: text,
confidence, box; null where OCR is off, empty where it read nothing), and frame search hits show them in
``screen_text``, also on a database indexed before the column (until migrated it has none)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.assemble import SegmentConfig, assemble_video
from pipeline.search.searcher import Searcher
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.fragments import to_arrow
from tests.helpers import TINY_DIM, content, tables_of, tiny_config, video_row
from tests.test_assembly import DIM, frames


def ocr_rows(read: list[list[str]]) -> dict[str, np.ndarray]:
    """The test video's frame rows with the OCR stage's columns: line j of frame i at a box of its own."""
    rows = frames()
    n = len(rows["t"])
    cols = {k: np.empty(n, dtype=object) for k in ("ocr_text", "ocr_boxes", "ocr_conf")}
    for i, lines in enumerate(read):
        cols["ocr_text"][i] = lines
        cols["ocr_boxes"][i] = np.asarray([[0.1, 0.1 * j, 0.5 + 0.01 * i, 0.1 * j + 0.08] for j in range(len(lines))])
        cols["ocr_boxes"][i] = cols["ocr_boxes"][i].astype(np.float32).reshape(-1, 4)
        cols["ocr_conf"][i] = np.asarray([0.5 + 0.04 * i + 0.01 * j for j in range(len(lines))], np.float32)
    return {**rows, **cols}


def test_frame_rows_carry_the_lines_read_on_them_and_null_without_ocr(tmp_path) -> None:
    n = len(frames()["t"])
    read: list[list[str]] = [[] for _ in range(n)]
    read[1], read[2], read[5] = ["GATE 7 CLOSED"], ["GATE 7 CLOSED", "EXIT"], ["SALE"]
    rows = ocr_rows(read)
    out = assemble_video("v", rows, SegmentConfig(window_s=4.0), None, 1.0)
    got = sorted(out[S.FRAMES], key=lambda r: r["t"])
    assert len(got) == n
    for i, r in enumerate(got):
        lines = r["text_lines"]
        assert [line["text"] for line in lines] == read[i]  # empty list where nothing was read, not null
        for j, line in enumerate(lines):
            box = [line["x1"], line["y1"], line["x2"], line["y2"]]
            np.testing.assert_allclose(box, rows["ocr_boxes"][i][j], atol=1e-6)
            assert line["conf"] == pytest.approx(float(rows["ocr_conf"][i][j]), abs=1e-6)
    # stored as the schema says, then read back from the table
    store = Store(str(tmp_path / "db"), DIM)
    store.begin([video_row("v")])
    store.commit([video_row("v")], {name: [to_arrow(r, S.table_schema(name, DIM))] for name, r in out.items() if r})
    stored = {r["t"]: r["text_lines"] for r in store.rows(S.FRAMES, columns=["t", "text_lines"]).to_pylist()}
    assert [line["text"] for line in stored[2.0]] == ["GATE 7 CLOSED", "EXIT"] and stored[0.0] == []
    assert stored[2.0][1]["y1"] == pytest.approx(0.1) and stored[5.0][0]["conf"] == pytest.approx(0.7, abs=1e-6)
    # OCR off: the frames hold no text lines at all (null)
    for k in ("ocr_text", "ocr_boxes", "ocr_conf"):
        del rows[k]
    off = assemble_video("v", rows, SegmentConfig(), None, 1.0)[S.FRAMES]
    assert len(off) == n and all(r["text_lines"] is None for r in off)


def with_lines(group: dict, lines: list[list[str] | None]) -> dict:
    """``group`` (``tests.helpers.content``) with its frames reading ``lines`` (one list per frame)."""
    values = [
        None if ls is None else [{"text": s, "conf": 0.9, "x1": 0.1, "y1": 0.1, "x2": 0.4, "y2": 0.2} for s in ls]
        for ls in lines
    ]
    f = group[S.FRAMES]
    col = pa.array(values, pa.list_(S.TEXT_LINE))
    return {**group, S.FRAMES: f.set_column(f.schema.get_field_index("text_lines"), "text_lines", col)}


def test_frame_hits_show_the_text_read_on_the_frame_also_on_older_tables(tmp_path) -> None:
    path = tmp_path / "db"
    store = Store(str(path), TINY_DIM)
    lines = [["GATE 7  CLOSED", "EXIT"], [], None, [" ", "SALE"]]
    group = with_lines(content("a", [0.0, 1.0, 2.0, 3.0], dim=TINY_DIM), lines)
    store.begin([video_row("a")])
    store.commit([video_row("a")], tables_of(group))
    cfg = tiny_config(path)
    hits = Searcher(store, cfg).search(text="a sign", k=4, level="frames", rerank=None)
    assert len(hits) == 4
    by_t = {h.start_s: h.screen_text for h in hits}
    # whitespace collapsed, one line each, blank lines dropped; no line (or OCR off): null
    assert by_t == {0.0: "GATE 7 CLOSED\nEXIT", 1.0: None, 2.0: None, 3.0: "SALE"}
    segs = Searcher(store, cfg).search(text="a sign", k=4, level="segments", rerank=None)
    assert all(h.screen_text is None for h in segs)  # segments keep their own column (null here)

    # A table from before the column: frame hits come back without text, then with nulls once migrated.
    store.table(S.FRAMES).drop_columns(["text_lines"])
    old = Store(str(path))
    hits = Searcher(old, cfg).search(text="a sign", k=4, level="frames", rerank=None)
    assert len(hits) == 4 and all(h.screen_text is None for h in hits)
    assert old.migrate() == {S.FRAMES: ["text_lines"]}
    hits = Searcher(old, cfg).search(text="a sign", k=4, level="frames", rerank=None)
    assert len(hits) == 4 and all(h.screen_text is None for h in hits)
