"""Where one sampled frame's time goes on the object path: decode, detection, frame encode + regions, tracking.

Production architectures with random weights (YOLO11n, open_clip ViT-B-32); detection threshold lowered so
random weights produce boxes (they score ~2e-4), with the matching random-weights tracker thresholds. Prints
each stage's milliseconds per frame and the tracker's share of the total, all measured in this run.

    python benchmarks/tracker_share.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--clip",
        default=os.path.join(
            os.path.dirname(__file__), "..", "..", "shared", "testdata", "intel_sample_videos", "car-detection.mp4"
        ),
    )
    ap.add_argument("--boxes", type=int, default=8, help="detections kept per frame")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from operators.decode import Decode, DecodeConfig
    from operators.detect_track import DetectConfig, Detector, VideoTracker
    from operators.embed import Embed, Preprocess
    from operators.encoders import EncoderConfig
    from operators.regions import RegionConfig

    detect_cfg = DetectConfig(
        model="yolo11n.yaml",
        conf=1e-4,
        max_det=args.boxes,
        device="cpu",
        tracker_config="configs/trackers/bytetrack-random.yaml",
    )
    enc_cfg = EncoderConfig(model="ViT-B-32", pretrained=None, device="cpu")
    decode = Decode(DecodeConfig(fps=1.0, max_side=640, chunk_frames=8))
    detector, pre, embed = Detector(detect_cfg), Preprocess(enc_cfg), Embed(enc_cfg, RegionConfig(mode="roi"))
    for op in (detector, pre, embed):
        op.setup()

    times = {"decode": 0.0, "detect": 0.0, "encode+regions": 0.0, "track": 0.0}
    n = 0
    tracker = VideoTracker(detect_cfg, 1.0)
    t0 = time.perf_counter()
    for chunk in decode.iter_video("v", os.path.abspath(args.clip)):
        times["decode"] += time.perf_counter() - t0
        if args.quick and n >= 8:
            break
        t = time.perf_counter()
        chunk = detector(chunk)
        times["detect"] += time.perf_counter() - t
        frames = chunk["frame"]
        t = time.perf_counter()
        embed(pre(chunk))
        times["encode+regions"] += time.perf_counter() - t
        t = time.perf_counter()
        for frame, boxes, conf in zip(frames, chunk["det_boxes"], chunk["det_conf"], strict=True):
            h, w = frame.shape[:2]
            tracker.update(boxes * np.array([w, h, w, h], np.float32), conf, ["object"] * len(conf))
        times["track"] += time.perf_counter() - t
        n += len(frames)
        t0 = time.perf_counter()
    total = sum(times.values())
    print(f"{n} frames of {os.path.basename(args.clip)}, {args.boxes} boxes per frame, 2 threads")
    for name, sec in times.items():
        print(f"  {name:15s} {1000 * sec / n:8.2f} ms/frame  {100 * sec / total:5.1f} %")
    print(f"tracker share of per-frame time: {100 * times['track'] / total:.2f} %")


if __name__ == "__main__":
    main()
