"""OCR cost per sampled frame, split into text detection and recognition, and the effect of frame selection,
against the CPU of the rest of the pipeline measured in the same run on the same frames.

Frames: every clip of ``eval/ocr_text.yaml`` (texts drawn in, and distractors) decoded at 1 fps with the default
decode settings (longest side 640). All model runtimes get one thread, and CPU time is ``time.process_time``
of this process, so the numbers are CPU seconds, not wall time on a shared machine.

Variants:
- ``rapidocr stock``: ``RapidOCR()`` as shipped (the detector scales the short side up to 736 px; line
  classifier on);
- ``ocr select=all``: ``OcrFrames`` as configured by default but reading every frame (detector at working size,
  no classifier, recogniser only on detected lines);
- ``ocr select=changed``: the default (frames whose grey grid barely changed reuse the previous result).

The pipeline reference is decode + YOLO11n detection + open_clip ViT-B/32 frame and region embedding
(production architectures, random weights: the same compute as trained ones) on the first ``--pipeline-frames``
frames.

    python benchmarks/ocr.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import ROOT, TESTDATA, header


def _frames(work: Path, quick: bool) -> tuple[list[tuple[str, np.ndarray]], float]:
    """(clip id, frame) of every sampled frame, and the decode CPU seconds spent on them."""
    from pipeline.evaluation.ocr import load_ocr_manifest
    from pipeline.evaluation.ocr_clips import build_clip, decode_frames

    manifest = load_ocr_manifest(ROOT / "eval" / "ocr_text.yaml")
    out, decode_s = [], 0.0
    for clip in manifest.clips[: 4 if quick else None]:
        video, _ = build_clip(clip, TESTDATA, work / "ocr_clips")
        s, (_, _, frames) = _cpu(decode_frames, video, 1.0)
        decode_s += s
        out += [(clip.id, f) for f in frames]
    return out, decode_s


def _cpu(fn, *args):  # type: ignore[no-untyped-def]
    c = time.process_time()
    out = fn(*args)
    return time.process_time() - c, out


def pipeline_ms(frames: list[np.ndarray]) -> float:
    """CPU ms per frame of detection + frame/region embedding."""
    import torch

    from operators.detect_track import DetectConfig, Detector
    from operators.embed import Embed, Preprocess
    from operators.encoders import EncoderConfig
    from operators.regions import RegionConfig

    torch.set_num_threads(1)
    det = Detector(DetectConfig(model="yolo11n.yaml", conf=1e-4, max_det=8, device="cpu"))
    enc = EncoderConfig(model="ViT-B-32", pretrained=None, device="cpu")
    pre, emb = Preprocess(enc), Embed(enc, RegionConfig(mode="roi"))
    for op in (det, pre, emb):
        op.setup()

    def run(chunk: list[np.ndarray]) -> object:
        return emb(pre(det({"frame": list(chunk), "error": np.full(len(chunk), "")})))

    run(frames[:2])  # warm-up
    total = sum(_cpu(run, frames[i : i + 8])[0] for i in range(0, len(frames), 8))
    return 1000 * total / len(frames)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 clips only")
    ap.add_argument("--pipeline-frames", type=int, default=32)
    ap.add_argument("--work-dir", default="/tmp/vidsearch-ocr-bench")
    args = ap.parse_args()
    header("OCR cost per sampled frame (CPU ms, one thread)")

    from rapidocr_onnxruntime import RapidOCR

    from operators.ocr import OcrConfig, OcrFrames

    frames, decode_s = _frames(Path(args.work_dir), args.quick)
    n = len(frames)
    print(f"{n} sampled frames from {len({v for v, _ in frames})} clips")

    stock = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)
    stock(np.ascontiguousarray(frames[0][1][..., ::-1]))
    stock_s = sum(_cpu(stock, np.ascontiguousarray(f[..., ::-1]))[0] for _, f in frames)

    rows = []
    for select in ("all", "changed"):
        ocr = OcrFrames(OcrConfig(select=select))  # type: ignore[arg-type]
        ocr.setup()
        ocr.read("warm-up", frames[0][1])
        ocr.frames_read = 0
        engine = ocr.engine.engine  # type: ignore[union-attr]
        det_s = total_s = 0.0
        with_text = empty = 0
        det_empty_s = 0.0
        for vid, f in frames:
            s, ((texts, _, _), reused) = _cpu(ocr.read, vid, f)
            total_s += s
            if not reused and select == "all":  # the detector alone on the same frame, for the split
                d, _ = _cpu(engine.text_det, np.ascontiguousarray(f[..., ::-1]))
                det_s += d
                with_text += bool(texts)
                if not texts:
                    empty += 1
                    det_empty_s += d
        rows.append((select, ocr.frames_read, total_s, det_s, with_text, empty, det_empty_s))

    model_ms = pipeline_ms([f for _, f in frames[:: max(1, n // args.pipeline_frames)]])
    pipe = model_ms + 1000 * decode_s / n
    print(
        f"\npipeline reference: decode {1000 * decode_s / n:.1f} + YOLO11n and ViT-B/32 frame + regions "
        f"{model_ms:.1f} = {pipe:.1f} CPU ms/frame\n"
    )
    print("| variant | frames read | CPU ms/frame | detection ms/frame | recognition ms/frame | vs pipeline |")
    print("|---|---|---|---|---|---|")
    print(f"| rapidocr stock | {n}/{n} | {1000 * stock_s / n:.1f} | | | {100 * stock_s / n * 1000 / pipe:.0f} % |")
    for select, read, total_s, det_s, _, _, _ in rows:
        ms = 1000 * total_s / n
        split = ""
        if select == "all":
            split = f"{1000 * det_s / n:.1f} | {1000 * (total_s - det_s) / n:.1f}"
        else:
            split = " | "
        print(f"| ocr select={select} | {read}/{n} | {ms:.1f} | {split} | {100 * ms / pipe:.0f} % |")
    _, _, _, det_s, with_text, empty, det_empty_s = rows[0]
    det_text_ms = 1000 * (det_s - det_empty_s) / max(1, with_text)
    print(
        f"\nframes with text: {with_text}, without: {empty}; detector on a frame without text "
        f"{1000 * det_empty_s / max(1, empty):.1f} ms, on one with text {det_text_ms:.1f} ms"
    )
    print(f"stock / select=all CPU: {stock_s / rows[0][2]:.2f}x; all / changed: {rows[0][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    main()
