"""Caption cost per segment on CPU: BLIP-base (``Salesforce/blip-image-captioning-base``'s architecture:
``BlipConfig()`` default sizes, ViT-B/16 at 384 px + a 12-layer BERT-base decoder cross-attending to its 577 image
tokens) with random weights, which is the same compute as the trained checkpoint for the same number of generated
tokens. The model is saved with ``save_pretrained`` and loaded back by the production captioner
(operators/captions.py), so the whole ``BlipCaptioner.caption`` path is timed.

One caption per segment (its keyframe), so cost per segment = cost per caption. Random weights never emit the
end-of-caption token, so every caption runs ``max_new_tokens`` decoding steps; trained BLIP stops after ~8-12
tokens, so the ``max_new_tokens=10`` rows are the realistic ones and the ``20`` rows an upper bound.

The reference, in the same run on the same frames: the rest of the pipeline per segment (YOLO11n detection +
open_clip ViT-B/32 frame and RoIAlign region embedding on ``window_s * fps`` = 4 frames, random weights), as
``benchmarks/ocr.py`` measures it. CPU seconds are ``time.process_time`` of this process; wall is per caption.

    python benchmarks/captions.py [--threads 1] [--batch-sizes 1 4 8] [--frames 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from _common import clip, header, table


def frames_of(path: str, n: int) -> list[np.ndarray]:
    """``n`` keyframes: one per 4 s window of a real clip at 1 fps (decode defaults, longest side 640)."""
    from operators.decode import Decode, DecodeConfig

    rows = [b for b in Decode(DecodeConfig()).iter_video("bench", path)]
    frames = [f for b in rows for f in b["frame"]]
    picked = frames[2::4] or frames
    return [picked[i % len(picked)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Ray worker's CPU share)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-new-tokens", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--frames", type=int, default=8, help="keyframes captioned per setting")
    ap.add_argument("--clip", default="intel_sample_videos/car-detection.mp4")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the detect + embed reference")
    args = ap.parse_args()
    header(f"Caption cost per segment, BLIP-base architecture, random weights, CPU, {args.threads} thread(s)")

    import torch
    from PIL import Image

    from operators.captions import BlipCaptioner, CaptionConfig
    from operators.weights import save_random_blip

    torch.set_num_threads(args.threads)
    frames = frames_of(clip(args.clip), args.frames)
    print(f"{len(frames)} keyframes of {args.clip}, {frames[0].shape[1]}x{frames[0].shape[0]}")
    folder = tempfile.mkdtemp(prefix="vidsearch-blip-base-")
    c0 = time.perf_counter()
    save_random_blip(folder, {})  # BlipConfig() defaults: the blip-image-captioning-base sizes
    build_s = time.perf_counter() - c0
    rows = []
    for max_new in args.max_new_tokens:
        cap = BlipCaptioner(CaptionConfig(model="blip", checkpoint=folder, device="cpu", max_new_tokens=max_new))
        cap.setup()
        n_params = sum(p.numel() for p in cap.model.parameters())
        cap.caption(frames[:1])  # warm-up
        for bs in args.batch_sizes:
            cap.cfg = cap.cfg.model_copy(update={"batch_size": bs})
            c, w = time.process_time(), time.perf_counter()
            texts = cap.caption(frames)
            cpu, wall = time.process_time() - c, time.perf_counter() - w
            tokens = np.mean([len(t.split()) for t in texts])  # random vocabulary: one word per token
            rows.append(
                {
                    "max_new_tokens": max_new,
                    "batch": bs,
                    "tokens/caption": float(tokens),
                    "CPU s/segment": cpu / len(frames),
                    "wall s/segment": wall / len(frames),
                }
            )
            print(rows[-1], flush=True)
        if max_new == args.max_new_tokens[0]:  # the image tower alone: what captioning costs before any token
            pixels = cap.inputs([Image.fromarray(f) for f in frames[:4]])["pixel_values"]
            c = time.process_time()
            with torch.inference_mode():
                cap.model.vision_model(pixel_values=pixels)
            vision_s = (time.process_time() - c) / len(pixels)
    print(f"BLIP-base: {n_params / 1e6:.0f} M parameters; built and saved in {build_s:.0f} s")
    print(f"image tower (ViT-B/16 at 384 px) alone: {vision_s:.3f} CPU s per keyframe (batch 4)")
    if not args.no_pipeline:
        from ocr import pipeline_ms

        per_frame = pipeline_ms(frames) / 1000  # one thread, as a Ray worker of 0.5 CPU runs it
        seg = 4 * per_frame
        print(f"reference: detect + embed {per_frame:.3f} CPU s/frame, {seg:.3f} CPU s per 4-frame segment")
        for r in rows:
            r["x detect+embed"] = r["CPU s/segment"] / seg
    print(table(rows))


if __name__ == "__main__":
    main()
