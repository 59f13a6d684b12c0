"""Real-time factor: seconds of video indexed per wall-clock second, whole pipeline, production architectures.

``configs/default.yaml`` with YOLO11n and open_clip ViT-B/32 built with random weights (same compute as the
trained ones), 1 fps sampling, local Ray with 2 CPUs, on ~150 s of real clips. Two variants in the same run:
  default conf   detect.conf 0.25: random weights detect nothing, so no tracking or region features
  with boxes     detect.conf 1e-4, max_det 20, configs/trackers/bytetrack-random.yaml: every frame has boxes,
                 so tracking, RoI region features and track tubes do their real amount of work
Each variant runs once per model backend (``--backends``, default torch and onnx: ``encoder.backend`` and
``detect.backend`` together); exports come from ``--export-cache`` (built there on the first run, so run the
script twice, or benchmarks/backends.py with the same cache, to time cache hits only).
The wall time includes building the graph, starting the actors and loading the models, but not ``ray.init``.
CPU seconds cover the driver and every Ray process; on a loaded machine ``video_s / (cpu_s / 2)`` is what two
cores of our own would give at best (the wall-clock factor is then below it).
A sequential single-process run of the same work (``pipeline_vs_sequential.py``) is the baseline for the
pipeline itself; here the reference is real time (1.0x).

``--in-process``: no Ray; the same operators run one after another in this process, one thread, on all clips,
and each stage's CPU seconds are counted (process time), per backend (and with ``decode.mode: keyframes`` for
the last backend), for each detector of ``--detectors``: ``trained`` is the catalog's YOLO11n (``yolo11n.pt``,
``pip install 'vidsearch[models]'``) at the default ``detect.conf`` 0.25, so the boxes, region features and
their cost are the real ones; ``random`` is the same architecture with random weights and forced boxes (conf
1e-4, max_det 20), the stand-in used before trained weights were installable. On a machine too loaded for
wall-clock factors this gives the work per video second, and ``video_s / (cpu_s / 2)`` the best two cores of our
own could do.

    python benchmarks/realtime.py --quick      # 3 short clips, with boxes only
    python benchmarks/realtime.py
    python benchmarks/realtime.py --in-process --export-cache /tmp/exports
    python benchmarks/realtime.py --in-process --backends onnx --detectors trained random
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PRODUCTION_RANDOM, RANDOM_BOXES, clip, header, table
from pipeline_vs_sequential import CLIPS, QUICK_CLIPS, run_ray, stage_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--boxes-only", action="store_true", help="only the 'with boxes' variant (all clips)")
    ap.add_argument("--export-cache", default=None, help="export cache folder for the onnx/openvino backends")
    ap.add_argument("--in-process", action="store_true", help="CPU seconds per stage without Ray (see above)")
    ap.add_argument("--detectors", nargs="+", default=["trained"], choices=list(DETECTORS), help="--in-process only")
    args = ap.parse_args()
    if args.in_process:
        in_process(args)
        return
    header("real-time factor: production architectures (random weights), 1 fps, Ray on 2 CPUs")
    import ray

    from operators.decode import Decode, DecodeConfig
    from pipeline.config import load_config

    paths = [clip(c) for c in (QUICK_CLIPS if args.quick else CLIPS)]
    video_s = sum(Decode(DecodeConfig()).open(p, 1e12)[1].duration_s for p in paths)
    cache = [f"{s}.export_cache={args.export_cache}" for s in ("encoder", "detect") if args.export_cache]
    variants: dict[str, list[str]] = {}
    for b in args.backends:
        runtime = [f"encoder.backend={b}", f"detect.backend={b}", *cache]
        if not (args.quick or args.boxes_only):
            variants[f"default conf (no boxes), {b}"] = runtime
        variants[f"with boxes, {b}"] = [*RANDOM_BOXES, "detect.max_det=20", *runtime]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-rt-"))
    for name, extra in variants.items():
        base = [*PRODUCTION_RANDOM, "decode.fps=1.0", "maintenance.after_index=false", "ray.num_cpus=2"]
        db = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        cfg = load_config("default", [*base, *extra, *args.overrides, f"db.path={db}"])
        r = run_ray(cfg, paths)
        rows.append(
            {
                "variant": name,
                "videos": len(paths),
                "video_s": round(video_s, 1),
                "frames": r["frames"],
                "wall_s": round(r["wall_s"], 1),
                "cpu_s": round(r["cpu_s"], 1),
                "realtime_factor": round(video_s / r["wall_s"], 2),
                "rt factor at cpu_s/2": round(video_s / (r["cpu_s"] / 2), 2),
                "frames/s": round(r["frames"] / r["wall_s"], 2),
            }
        )
        print(rows[-1], flush=True)
        print(stage_report(r))
    print(table(rows))


#: ``--in-process`` detectors (see the module docstring): config overrides on top of a random encoder.
DETECTORS = {
    "trained": ["detect.model=yolo11n.pt"],
    "random": ["detect.model=yolo11n.yaml", *RANDOM_BOXES, "detect.max_det=20"],
}


def stage_cpu(cfg: Any, paths: list[str], every_stage: bool = False) -> dict[str, Any]:
    """The visual stages (decode, detect, preprocess, embed + regions; with ``every_stage`` also the shot
    detector and OCR where ``cfg`` turns them on) run one after another in this process on ``paths``: CPU seconds
    per stage (``cpu``, with ``setup``), frames, boxes and video seconds."""
    import numpy as np

    from operators.decode import Decode
    from operators.detect_track import Detector
    from operators.embed import Embed, Preprocess
    from operators.ocr import OcrFrames
    from operators.shots import ShotDetect

    c0 = time.process_time()
    ops: dict[str, Any] = {"detect": Detector(cfg.detect)}
    if every_stage and cfg.ocr.engine != "none":
        ops["ocr"] = OcrFrames(cfg.ocr)
    ops |= {"preprocess": Preprocess(cfg.encoder), "embed": Embed(cfg.encoder, cfg.regions)}
    shots = ShotDetect(cfg.segments.shots) if every_stage and cfg.segments.shots.detector != "none" else None
    for op in [*ops.values(), *([shots] if shots else [])]:
        op.setup()
    cpu = {"setup": time.process_time() - c0, **({"shots": 0.0} if shots else {}), "decode": 0.0}
    cpu |= dict.fromkeys(ops, 0.0)
    decode, frames, boxes, video_s = Decode(cfg.decode), 0, 0, 0.0
    for i, path in enumerate(paths):
        if shots is not None:
            c = time.process_time()
            shots({"video_id": np.array([f"v{i}"], dtype=object), "path": np.array([path], dtype=object)})
            cpu["shots"] += time.process_time() - c
        c = time.process_time()
        chunks = list(decode.iter_video(f"v{i}", path))
        cpu["decode"] += time.process_time() - c
        if chunks[0]["error"][0]:
            continue
        video_s += float(chunks[0]["duration_s"][0])
        for chunk in chunks:
            frames += len(chunk["t"])
            for name, op in ops.items():
                c = time.process_time()
                chunk = op(chunk)
                cpu[name] += time.process_time() - c
            boxes += sum(len(b) for b in chunk["det_boxes"])
    return {"cpu": cpu, "frames": frames, "boxes": boxes, "video_s": video_s}


def in_process(args: argparse.Namespace) -> None:
    import torch

    from pipeline.config import load_config

    header("pipeline work per video second: operators in one process, 1 thread, CPU seconds per stage")
    torch.set_num_threads(1)
    paths = [clip(c) for c in (QUICK_CLIPS if args.quick else CLIPS)]
    cache = [f"{s}.export_cache={args.export_cache}" for s in ("encoder", "detect") if args.export_cache]
    runs = [(d, b, "sample") for d in args.detectors for b in args.backends]
    runs += [(args.detectors[0], args.backends[-1], "keyframes")]
    rows = []
    for detector, backend, mode in runs:
        over = ["encoder.pretrained=null", *DETECTORS[detector], "encoder.device=cpu", "detect.device=cpu"]
        runtime, _, precision = backend.partition("-")  # "openvino-bf16": OpenVINO with precision bf16
        settings = {"backend": runtime, **({"precision": precision} if precision else {})}
        over += [f"{s}.{k}={v}" for s in ("encoder", "detect") for k, v in settings.items()]
        over += [f"decode.mode={mode}", *cache]
        cfg = load_config("default", [*over, *args.overrides])
        w0 = time.perf_counter()
        got = stage_cpu(cfg, paths)
        cpu, frames, boxes, video_s = got["cpu"], got["frames"], got["boxes"], got["video_s"]
        work = sum(v for k, v in cpu.items() if k != "setup")
        rows.append(
            {
                "detector": detector,
                "backend": backend,
                "decode.mode": mode,
                "boxes/frame": round(boxes / max(frames, 1), 2),
                "video_s": round(video_s, 1),
                "frames": frames,
                **{f"{k} cpu_s": round(v, 1) for k, v in cpu.items()},
                "cpu_s/frame": round(work / max(frames, 1), 3),
                "video_s per cpu_s": round(video_s / work, 2),
                "rt factor at cpu_s/2": round(video_s / (work / 2), 1),
                "wall_s": round(time.perf_counter() - w0, 1),
            }
        )
        print(rows[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
