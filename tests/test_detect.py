"""The detection stage with real ultralytics models (random weights): boxes, class filter, segmentation masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from operators.assemble import SegmentConfig
from operators.decode import Decode, DecodeConfig
from operators.detect_track import DetectConfig, Detector, FrameDetections
from operators.embed import Embed, Preprocess
from operators.regions import RegionConfig
from pipeline.index.assembly import assemble_tables
from tests.helpers import clip, tiny_config

PEOPLE = "intel_sample_videos/one-by-one-person-detection.mp4"  # people come and go at a table


@pytest.fixture(scope="module")
def frames():
    return next(Decode(DecodeConfig(max_side=320)).iter_video("v", clip("mdn/flower.webm")))


def seg_checkpoint(path) -> str:
    """A random YOLO11n-seg saved as a local ``*-seg.pt``. Random mask prototypes give empty masks, which
    ultralytics drops with their boxes, so the prototype and coefficient biases are raised to make masks."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n-seg.yaml")
    head = model.model.model[-1]
    with torch.no_grad():
        head.proto.cv3.bn.bias.fill_(5.0)
        for branch in head.cv4:
            branch[-1].bias.fill_(2.0)
    model.save(str(path))
    return str(path)


def test_segmentation_checkpoint_masks_travel_with_boxes(frames, tmp_path) -> None:
    model = seg_checkpoint(tmp_path / "tiny-seg.pt")
    cfg = DetectConfig(
        model=model,
        conf=1e-4,
        imgsz=160,
        max_det=4,
        device="cpu",
        tracker_config="configs/trackers/bytetrack-random.yaml",
    )
    det = Detector(cfg)
    det.setup()
    out = det(dict(frames))
    h, w = frames["frame"].shape[1:3]
    for boxes, masks in zip(out["det_boxes"], out["det_masks"], strict=True):
        assert len(boxes) > 0 and masks.shape == (len(boxes), (h + 3) // 4, (w + 3) // 4)
        assert set(np.unique(masks)) <= {0, 1}
    # Masks reach the region features (mask-weighted RoIAlign) and the track rows (mask area).
    enc_cfg = tiny_config(tmp_path).encoder
    pre, embed = Preprocess(enc_cfg), Embed(enc_cfg, RegionConfig(mode="roi"))
    pre.setup()
    embed.setup()
    out = embed(pre(out))
    assert [len(r) for r in out["region_emb"]] == [len(b) for b in out["det_boxes"]]
    tables = assemble_tables("v", out, SegmentConfig(), cfg, 1.0, embed.encoder.dim)
    areas = [o["mask_area"] for t in tables["tracks"].to_pylist() for o in t["trajectory"]]
    assert areas and all(0.0 <= a <= 1.0 for a in areas)


def test_class_filter_and_thresholds_come_from_config(frames) -> None:
    def fake(batch_frames):
        return [
            FrameDetections(
                np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32),
                np.array([0.9, 0.8], np.float32),
                ["dog", "car"],
            )
            for _ in batch_frames
        ]

    det = Detector(DetectConfig(classes=["car"]), predictor=fake)
    det.setup()
    out = det(dict(frames))
    assert all(json.loads(n) == ["car"] for n in out["det_names"])
    np.testing.assert_allclose(np.stack(out["det_boxes"])[:, 0], [[0.5, 0.5, 1, 1]] * len(frames["t"]))

    # The thresholds, through the trained YOLO11n (model catalog) on frames with several people in them: every
    # box clears detect.conf, a higher conf keeps a strict subset, detect.max_det caps each frame and
    # detect.classes keeps only that class (filtered by the model itself, before the Detector's own filter).
    chunk = next(Decode(DecodeConfig(max_side=320, fps=0.2)).iter_video("p", clip(PEOPLE)))
    base = {"model": "yolo11n.pt", "imgsz": 320, "device": "cpu"}

    def boxes(**kw):  # type: ignore[no-untyped-def]
        d = Detector(DetectConfig(**base, **kw))
        d.setup()
        out = d(dict(chunk))
        return list(out["det_conf"]), [json.loads(n) for n in out["det_names"]]

    low, low_names = boxes(conf=0.1)
    high, _ = boxes(conf=0.5)
    assert all((c >= 0.1).all() for c in low) and all((c >= 0.5).all() for c in high)
    assert sum(map(len, high)) < sum(map(len, low)), "a higher detect.conf must drop boxes"
    assert max(map(len, low)) > 1 and all(len(c) <= 1 for c in boxes(conf=0.1, max_det=1)[0])
    assert {n for names in low_names for n in names} > {"person"}  # other classes seen at conf 0.1 ...
    _, person = boxes(conf=0.1, classes=["person"])
    assert {n for names in person for n in names} == {"person"}  # ... and only persons with detect.classes


def test_real_yolo_respects_confidence_and_max_det(frames) -> None:
    base = {"model": "yolo11n.yaml", "imgsz": 160, "device": "cpu"}
    det = Detector(DetectConfig(conf=1e-4, max_det=3, **base))
    det.setup()
    out = det(dict(frames))
    assert all(0 < len(b) <= 3 for b in out["det_boxes"])
    assert all((c >= 1e-4).all() for c in out["det_conf"])
    strict = Detector(DetectConfig(conf=0.25, **base))  # random weights score ~2e-4: nothing passes
    strict.setup()
    assert all(len(b) == 0 for b in strict(dict(frames))["det_boxes"])
