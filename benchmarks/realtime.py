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

    python benchmarks/realtime.py --quick      # 3 short clips, with boxes only
    python benchmarks/realtime.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import PRODUCTION_RANDOM, RANDOM_BOXES, clip, header, table
from pipeline_vs_sequential import CLIPS, QUICK_CLIPS, run_ray, stage_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--export-cache", default=None, help="export cache folder for the onnx/openvino backends")
    args = ap.parse_args()
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
        if not args.quick:
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


if __name__ == "__main__":
    main()
