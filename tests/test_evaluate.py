"""Retrieval evaluation: metrics on hand-made cases, the shipped manifests, query images made from clips,
and the near-duplicate manifest run against the tiny-config sample database (R@1 must be high)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.manifests import ImageSpec, query_image
from pipeline.evaluation.metrics import box_iou, temporal_iou
from pipeline.evaluation.retrieval import (
    Hit,
    Manifest,
    comparison_table,
    evaluate,
    load_manifest,
    score_query,
    summarize,
)

ROOT = Path(__file__).resolve().parent.parent
NEAR_DUPLICATES = ROOT / "eval" / "near_duplicates.yaml"
TEXT_QUERIES = ROOT / "eval" / "text_queries.yaml"


def test_iou_hand_computed():
    assert temporal_iou((0.0, 4.0), (2.0, 6.0)) == pytest.approx(2.0 / 6.0)
    assert temporal_iou((0.0, 1.0), (2.0, 3.0)) == 0.0
    assert box_iou((0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.0625 / (0.25 + 0.25 - 0.0625))
    assert box_iou((0.1, 0.1, 0.2, 0.2), (0.1, 0.1, 0.2, 0.2)) == pytest.approx(1.0)


def test_score_and_summarize_hand_made_case():
    v, other = "/v/a.mp4", "/v/b.mp4"
    # q1: relevant at rank 1; q2: first relevant at rank 3 (rank 1 is the right video at the wrong time);
    # q3: no relevant hit at all; q4: a frame hit (zero length) inside the span at rank 1, with boxes.
    q1 = score_query([Hit(v, 4.0, 8.0), Hit(other, 0, 4)], v, [(5.0, 6.0)], [])
    q2 = score_query([Hit(v, 12.0, 16.0), Hit(other, 0, 4), Hit(v, 0.0, 4.0)], v, [(1.0, 2.0)], [])
    q3 = score_query([Hit(other, 0, 4)] * 3, v, [(1.0, 2.0)], [])
    q4 = score_query([Hit(v, 2.0, 2.0, [(0.0, 0.0, 0.5, 0.5)])], v, [(1.5, 2.5)], [(0.0, 0.0, 0.5, 0.25)])
    assert [q["rank"] for q in (q1, q2, q3, q4)] == [1, 3, None, 1]
    assert q1["tiou"] == pytest.approx(1.0 / 4.0)
    assert q2["tiou"] == 0.0  # the top hit misses the relevant span
    assert q3["tiou"] == 0.0 and q3["box_iou"] is None
    assert q4["tiou"] == pytest.approx(1.0)  # frame widened to [1.5, 2.5]
    assert q4["box_iou"] == pytest.approx(0.5)
    s = summarize([q1, q2, q3, q4], k=10)
    assert s["queries"] == 4
    assert s["R@1"] == pytest.approx(0.5)
    assert s["R@5"] == pytest.approx(0.75) and s["R@10"] == pytest.approx(0.75)
    assert s["median_rank"] == 2.0  # median of 1, 1, 3, inf
    assert s["mean_tIoU"] == pytest.approx((0.25 + 0 + 0 + 1) / 4)
    assert s["mean_box_IoU"] == pytest.approx(0.5)
    assert summarize([q3, q3, q2], k=10)["median_rank"] == ">10"
    table = comparison_table({"a": {"summary": s}, "b": {"summary": s}})
    assert "| R@1 | 0.500 | 0.500 |" in table


def test_shipped_manifests_load_and_reference_testdata(testdata):
    nd, text = load_manifest(NEAR_DUPLICATES), load_manifest(TEXT_QUERIES)
    assert len(nd.queries) >= 20 and all(q.image is not None and q.text is None for q in nd.queries)
    assert any(q.boxes for q in nd.queries)
    assert all(q.text and q.image is None for q in text.queries)
    assert {"arm wrestling", "flipping pancake"} <= {q.text for q in text.queries}
    for m in (nd, text):
        for v in m.all_videos():
            assert (testdata / v).exists(), v


def test_jsonl_manifest(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "video": "x.mp4", "text": "a dog", "relevant": [[1, 2]]}) + "\n")
    m = load_manifest(path)
    assert m.queries[0].relevant == [(1.0, 2.0)] and m.level == "segments"
    with pytest.raises(ValueError):
        Manifest.model_validate({"queries": [{"id": "a", "video": "x", "bogus": 1}]})


def test_query_image_is_cropped_reencoded_and_cached(tmp_path, testdata):
    from PIL import Image

    video = str(testdata / "mmaction2" / "test.mp4")  # 340x256
    spec = ImageSpec(t=2.0, crop=(0.0, 0.0, 0.5, 1.0), jpeg_quality=30, scale=0.5)
    jpeg = query_image(video, spec, tmp_path)
    with Image.open(__import__("io").BytesIO(jpeg)) as im:
        assert im.format == "JPEG" and im.size == (85, 128)
    assert len(list(tmp_path.glob("*.jpg"))) == 1
    assert query_image(video, spec, tmp_path) == jpeg
    other = query_image(video, ImageSpec(t=7.0, jpeg_quality=30), tmp_path)
    assert other != jpeg and len(list(tmp_path.glob("*.jpg"))) == 2


def test_near_duplicates_on_the_tiny_sample_database(indexed_db, sample_folder, tmp_path):
    """The shipped near-duplicate queries of the sample clips find their clip and time (random weights)."""
    cfg, _ = indexed_db
    names = {p.name for p in sample_folder.iterdir()}
    full = load_manifest(NEAR_DUPLICATES)
    queries = [q.model_copy(update={"video": Path(q.video).name}) for q in full.queries if Path(q.video).name in names]
    assert len(queries) >= 5
    manifest = full.model_copy(update={"queries": queries, "videos": []})
    out = evaluate(manifest, cfg, sample_folder, tmp_path, k=10, index=False)
    s = out["summary"]
    assert s["queries"] == len(queries)
    assert s["R@1"] >= 0.8, out["queries"]
    assert s["R@5"] == 1.0, out["queries"]
    assert s["mean_tIoU"] > 0.1
    assert np.isfinite(s["median_rank"]) and s["median_rank"] == 1
