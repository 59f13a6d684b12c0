"""Region features: ``roi`` (RoIAlign over the frame's patch tokens + the visual projection) vs ``crop``
(crop each box and encode it), per box, as a fraction of one frame encode, at 1, 8 and 32 boxes per frame.

The frame encode is ``encode_pixels`` of one preprocessed frame (the forward pass every frame pays anyway);
``roi`` then costs only the pooling and projection, ``crop`` a preprocessing and a forward pass per box
(batched). ViT-B-32 architecture with random weights (the compute is the same as with trained weights).

    python benchmarks/regions.py --quick
    python benchmarks/regions.py
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from _common import clip, header, pct, table

from operators.decode import Decode, DecodeConfig
from operators.encoders import EncoderConfig, OpenClipEncoder
from operators.regions import RegionConfig, crop_embeddings, roi_embeddings


def boxes(k: int, seed: int = 0) -> np.ndarray:
    """``k`` plausible boxes (normalised xyxy, 5% to 40% of the frame side)."""
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.05, 0.4, size=(k, 2))
    xy = rng.uniform(0, 1, size=(k, 2)) * (1 - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def timed(fn: Any, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return pct(times, 50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (pipeline workers use 1 on 2 cores)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    header(f"region features, {args.model} (random weights), torch {args.threads} thread(s)")
    repeat = 3 if args.quick else 9
    enc = OpenClipEncoder(EncoderConfig(model=args.model, pretrained=None, device="cpu"))
    enc.setup()
    frame = next(Decode(DecodeConfig()).iter_video("b", clip("mmaction2/test_video_structuralize.mp4")))["frame"][0]
    pixels = enc.preprocess_frames([frame])
    frame_s = timed(lambda: enc.encode_pixels(pixels), repeat)
    _, grids = enc.encode_pixels(pixels)
    size = (frame.shape[1], frame.shape[0])
    cfg = RegionConfig()
    print(f"one frame encode (preprocessed, batch 1): {frame_s * 1e3:.1f} ms", flush=True)
    rows = []
    for k in (1, 8, 32):
        b = boxes(k)
        roi_s = timed(lambda b=b: roi_embeddings(enc, grids[0], b, size, None, cfg.roi_output), repeat)
        crop_s = timed(lambda b=b: crop_embeddings(enc, frame, b, cfg, None), max(2, repeat // 3))
        rows.append(
            {
                "boxes": k,
                "roi_ms_per_box": round(roi_s / k * 1e3, 3),
                "roi_per_box/frame": f"{roi_s / k / frame_s:.2%}",
                "crop_ms_per_box": round(crop_s / k * 1e3, 2),
                "crop_per_box/frame": f"{crop_s / k / frame_s:.1%}",
                "crop/roi": f"{crop_s / roi_s:.0f}x",
            }
        )
        print(rows[-1], flush=True)
    print(f"\nframe encode {frame_s * 1e3:.1f} ms ({args.model}, 224 px, batch 1)")
    print(table(rows))


if __name__ == "__main__":
    main()
