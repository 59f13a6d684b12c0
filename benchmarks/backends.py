"""Model stages per backend: torch vs ONNX Runtime vs OpenVINO, fp32, at 1 and 2 threads, production architectures.

YOLO11n at imgsz 640 (``YOLO("yolo11n.yaml")``, random weights, conf 1e-4 so NMS has boxes to sort) and
open_clip ViT-B/32 (``pretrained=None``), built through the project's operators exactly as the pipeline builds
them (``YoloPredictor``, ``OpenClipEncoder`` with ``backend=``), on real frames decoded at the working size
(``decode.max_side`` 640). Stages:
  detect   ``YoloPredictor`` on a batch of frames: letterbox, model, NMS (what the detect actor runs)
  embed    ``encode_pixels`` on preprocessed pixels: pooled embedding + patch-token grid (the embed actor's
           model call; preprocessing and RoIAlign are the same code for every backend and are not included)
  text     ``encode_text_query``: one query through the text tower (pooled + per-token embeddings)
Each (stage, threads) cell runs the backends interleaved, ``--repeat`` rounds, and reports the best wall ms
per frame and the CPU ms per frame of that best round (process CPU time: all runtime threads), and the speed
ratio against torch in the same run. Parity against torch is measured on the same frames: minimum cosine for
embeddings, and for detection the fraction of torch boxes matched at IoU >= 0.99 with |score diff| <= 1e-3.
Exports are built first (cache in a temporary folder unless ``--cache``); build time is reported separately.
``--backends torch openvino-bf16`` adds OpenVINO computing in bfloat16 (``precision: bf16``; not fp32, so
its parity column is informative, not a pass).

    python benchmarks/backends.py --quick
    python benchmarks/backends.py
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import clip, header, table

from operators.decode import Decode, DecodeConfig
from operators.detect_track import DetectConfig, YoloPredictor
from operators.encoders import EncoderConfig, build_encoder

BACKENDS = ["torch", "onnx", "openvino"]
CLIPS = ["intel_sample_videos/car-detection.mp4", "mdn/flower.webm", "mmaction2/test.mp4"]


def real_frames(n: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for rel in CLIPS:
        for chunk in Decode(DecodeConfig(max_side=640)).iter_video("b", clip(rel)):
            out.extend(chunk["frame"])
    return out[:: max(1, len(out) // n)][:n]


def build(name: str, threads: int, cache: str) -> tuple[Any, Any]:
    """Detector and encoder for ``name``: a backend, or ``openvino-bf16`` (OpenVINO with precision bf16)."""
    import torch

    torch.set_num_threads(threads)  # runtimes take torch's thread count, as pipeline workers set it
    backend, _, precision = name.partition("-")
    runtime = {"backend": backend, "precision": precision or "fp32", "export_cache": cache}
    det_cfg = DetectConfig(model="yolo11n.yaml", imgsz=640, conf=1e-4, max_det=20, device="cpu")
    det = YoloPredictor(det_cfg.model_copy(update=runtime), "yolo11n.yaml")
    enc = build_encoder(EncoderConfig(model="ViT-B-32", pretrained=None, device="cpu").model_copy(update=runtime))
    enc.setup()
    return det, enc


def timed(fn: Any) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def det_parity(ref: list[Any], out: list[Any]) -> float:
    ok = total = 0
    for r, o in zip(ref, out, strict=True):
        total += len(r.boxes)
        if len(r.boxes) and len(o.boxes):
            m = iou(r.boxes, o.boxes)
            j = m.argmax(axis=1)
            ok += int(((m.max(axis=1) >= 0.99) & (np.abs(r.conf - o.conf[j]) <= 1e-3)).sum())
    return ok / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 frames, 2 rounds")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backends", nargs="+", default=BACKENDS)
    ap.add_argument("--cache", default=None, help="export cache folder (default: a fresh temporary one)")
    args = ap.parse_args()
    n, repeat = (4, 2) if args.quick else (args.frames, args.repeat)
    header(f"model stages per backend: YOLO11n@640 + ViT-B/32, random weights, fp32, {n} real frames")
    cache = args.cache or tempfile.mkdtemp(prefix="bench-exports-")
    frames = real_frames(n)
    builds = []
    for b in args.backends:  # exports built once (cache miss), outside the timed part
        w, c, _ = timed(lambda b=b: build(b, 1, cache))
        builds.append({"backend": b, "setup (export on miss) wall_s": round(w, 1), "cpu_s": round(c, 1)})
        print(builds[-1], flush=True)
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        models = {b: build(b, threads, cache) for b in args.backends}  # cache hits
        pixels = models[args.backends[0]][1].preprocess_frames(frames)
        stages: dict[str, Callable[[Any], Any]] = {
            "detect": lambda m: m[0](frames),
            "embed": functools.partial(lambda px, m: m[1].encode_pixels(px)[0], pixels),
            "text": lambda m: m[1].encode_text_query("a red car parked next to a tree")[1],
        }
        for stage, fn in stages.items():
            per = len(frames) if stage != "text" else 1
            best: dict[str, tuple[float, float]] = {b: (float("inf"), 0.0) for b in args.backends}
            outs: dict[str, Any] = {}
            for b in args.backends:
                fn(models[b])  # warm-up
            for _ in range(repeat):
                for b in args.backends:  # interleaved so drift of the shared machine hits every backend alike
                    w, c, outs[b] = timed(lambda fn=fn, m=models[b]: fn(m))
                    if w < best[b][0]:
                        best[b] = (w, c)
            ref = outs.get("torch")
            for b in args.backends:
                if ref is None:
                    parity = "-"
                elif stage == "detect":
                    parity = f"{det_parity(ref, outs[b]):.3f} boxes"
                else:
                    a, o = ref.reshape(-1, ref.shape[-1]), outs[b].reshape(-1, ref.shape[-1])
                    cos = (a * o).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(o, axis=1))
                    parity = f"cos {cos.min():.6f}"
                w, c = best[b]
                tw, tc = best.get("torch", (w, c))
                rows.append(
                    {
                        "stage": stage,
                        "threads": threads,
                        "backend": b,
                        "ms/item wall": round(1000 * w / per, 1),
                        "ms/item cpu": round(1000 * c / per, 1),
                        "speed vs torch (wall)": f"{tw / w:.2f}x",
                        "cpu vs torch": f"{tc / c:.2f}x" if c else "-",
                        "parity": parity,
                    }
                )
                print(rows[-1], flush=True)
    print("\nexport + setup (cold cache):")
    print(table(builds))
    print("\nper stage (best of rounds; item = frame, or query for text):")
    print(table(rows))


if __name__ == "__main__":
    main()
