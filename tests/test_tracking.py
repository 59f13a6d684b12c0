"""Tracker wiring against MOTChallenge ground truth, through the same path YOLO's output takes.

``mmtracking/demo.mp4`` is MOT17-04 frames 1-8 re-encoded at 3 fps; ``mot17_mini/MOT17-04-FRCNN/gt/gt.txt``
holds its boxes and identities (matched by frame index). Ground-truth boxes with noise and dropped
detections are injected into the ``Detector`` operator in place of YOLO, then flow through region
features and the per-video assembler (where the tracker runs), exactly as detections do in a run.
"""

from __future__ import annotations

import json

import motmetrics as mm
import numpy as np
import pytest

from operators.assemble import SegmentConfig
from operators.decode import Decode, DecodeConfig
from operators.detect_track import DetectConfig, Detector, FrameDetections
from operators.embed import Embed, Preprocess
from operators.regions import RegionConfig
from pipeline.index.assembly import assemble_tables
from tests.helpers import clip, tiny_config

W, H = 1920, 1080
DROP = 0.10  # fraction of ground-truth detections removed
JITTER = 0.03  # box noise, as a fraction of the box's width/height (1 sigma)


def load_gt() -> dict[int, list[tuple[int, np.ndarray]]]:
    """frame (1-based) -> [(identity, xyxy pixels)] for evaluated pedestrians (flag 1, class 1)."""
    rows = np.loadtxt(clip("mot17_mini/MOT17-04-FRCNN/gt/gt.txt"), delimiter=",")
    gt: dict[int, list[tuple[int, np.ndarray]]] = {}
    for frame, ident, x, y, w, h, flag, cls, _vis in rows:
        if flag == 1 and cls == 1:
            gt.setdefault(int(frame), []).append((int(ident), np.array([x, y, x + w, y + h])))
    return gt


class NoisyGroundTruth:
    """A detector stand-in: for the n-th frame it is given, the ground truth of MOT frame n, perturbed."""

    def __init__(self, gt: dict[int, list[tuple[int, np.ndarray]]], seed: int = 0) -> None:
        self.gt = gt
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def __call__(self, frames):
        out = []
        for _ in frames:
            self.calls += 1
            objs = [o for o in self.gt.get(self.calls, []) if self.rng.random() >= DROP]
            boxes = []
            for _, b in objs:
                w, h = b[2] - b[0], b[3] - b[1]
                noise = self.rng.normal(0, JITTER, 4) * np.array([w, h, w, h])
                boxes.append(np.clip(b + noise, 0, [W, H, W, H]) / np.array([W, H, W, H]))
            conf = self.rng.uniform(0.6, 0.95, len(objs)).astype(np.float32)
            out.append(FrameDetections(np.asarray(boxes, np.float32).reshape(-1, 4), conf, ["person"] * len(objs)))
        return out


def run_path(tracker: str, tmp_path) -> tuple[dict, list]:
    cfg = tiny_config(tmp_path)
    decode_cfg = DecodeConfig(fps=3.0, max_side=640, thumb_side=480)  # 3 fps = every frame of this clip
    batch = next(Decode(decode_cfg).iter_video("mot17-04", clip("mmtracking/demo.mp4")))
    assert len(batch["t"]) == 8
    detect_cfg = DetectConfig(tracker=tracker, track_buffer_s=3.0)
    detector = Detector(detect_cfg, predictor=NoisyGroundTruth(load_gt()))
    detector.setup()
    batch = detector(batch)
    pre = Preprocess(cfg.encoder)
    pre.setup()
    embed = Embed(cfg.encoder, RegionConfig(mode="roi"))
    embed.setup()
    batch = embed(pre(batch))
    tables = assemble_tables("mot17-04", batch, SegmentConfig(), detect_cfg, 3.0, embed.encoder.dim)
    return batch, tables


def iou_distance(a: np.ndarray, b: np.ndarray, max_distance: float) -> np.ndarray:
    """1 - IoU between xywh boxes, NaN (no match allowed) above ``max_distance`` (motmetrics' convention;
    its own ``iou_matrix`` still calls a NumPy 1 API)."""
    if len(a) == 0 or len(b) == 0:
        return np.empty((len(a), len(b)))
    a1, a2 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b1, b2 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.prod(np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None), axis=2)
    union = np.prod(a[:, None, 2:], axis=2) + np.prod(b[None, :, 2:], axis=2) - inter
    d = 1 - inter / union
    return np.where(d > max_distance, np.nan, d)


def mot_scores(frames: list[dict]) -> dict[str, float]:
    gt = load_gt()
    acc = mm.MOTAccumulator(auto_id=True)
    numeric: dict[str, int] = {}  # motmetrics wants numeric hypothesis ids
    for k, frame in enumerate(sorted(frames, key=lambda f: f["t"])):
        truth = gt[k + 1]
        hyp = [b for b in frame["boxes"] if b["track_id"]]
        gt_xywh = np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for _, b in truth])
        hyp_xywh = np.array([[b["x1"] * W, b["y1"] * H, (b["x2"] - b["x1"]) * W, (b["y2"] - b["y1"]) * H] for b in hyp])
        dist = iou_distance(gt_xywh, hyp_xywh.reshape(-1, 4), max_distance=0.5)
        acc.update([i for i, _ in truth], [numeric.setdefault(b["track_id"], len(numeric)) for b in hyp], dist)
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="x")
    return {k: float(summary[k].iloc[0]) for k in ("idf1", "mota", "num_switches")}


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_identities_stay_consistent_on_mot17(tracker: str, tmp_path) -> None:
    batch, tables = run_path(tracker, tmp_path)
    frames = tables["frames"].to_pylist()
    scores = mot_scores(frames)
    # Thresholds: 10% of detections are dropped, so even a perfect tracker misses ~10% (MOTA <= ~0.9) and a
    # new ByteTrack/BoT-SORT track is confirmed only on its second match, costing each late-appearing person a
    # frame. 8 frames of slow pedestrians leave little excuse for identity switches: IDF1 >= 0.8, MOTA >= 0.7.
    assert scores["idf1"] >= 0.80, scores
    assert scores["mota"] >= 0.70, scores
    tracks = tables["tracks"].to_pylist()
    assert len(tracks) >= 30  # ~42 pedestrians are labelled in these frames
    for t in tracks:
        times = [o["t"] for o in t["trajectory"]]
        assert times == sorted(times) and t["n_obs"] == len(times)
        assert abs(np.linalg.norm(t["embedding"]) - 1) < 1e-4
    # Region embeddings line up one-to-one with the detector's boxes.
    assert [len(r) for r in batch["region_emb"]] == [len(b) for b in batch["det_boxes"]]
    assert all(
        json.loads(n) == ["person"] * len(b) for n, b in zip(batch["det_names"], batch["det_boxes"], strict=True)
    )
    print(tracker, scores)


def test_tracker_state_is_reset_between_videos(tmp_path) -> None:
    _, first = run_path("bytetrack", tmp_path)
    _, second = run_path("bytetrack", tmp_path / "again")
    ids = lambda tables: sorted(t["tracker_id"] for t in tables["tracks"].to_pylist())  # noqa: E731
    assert ids(first) == ids(second)  # a second video starts from tracker id 1 again, not where the last ended
    assert min(ids(first)) == 1


def test_track_buffer_is_converted_to_sampled_frames() -> None:
    from operators.detect_track import tracker_args

    assert tracker_args(DetectConfig(track_buffer_s=5.0), sample_fps=1.0).track_buffer == 5
    assert tracker_args(DetectConfig(track_buffer_s=5.0), sample_fps=4.0).track_buffer == 20
