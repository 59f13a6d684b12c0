"""End-to-end query latency on the 1M-segment database: text encode (ViT-B-32 text tower, random weights) +
stage-1 ANN over ``segments`` + attention re-rank of the top 50 (k=10 x overfetch 5), through
``pipeline.search.searcher.Searcher`` exactly as the CLI and HTTP API call it.

Uses the database ``benchmarks/vector_search.py`` leaves (1M segments with the project's vector index) and
adds, once, what the searcher reads besides it: a ``videos`` table (4,000 complete videos of 1,000 s), a
``frames`` table with the 4 frames of every segment (4M rows) and a ``tracks`` table (one track per 2
segments). The frame and track embeddings sit near their segment's, so re-rank contexts are realistic.

Reported: p50/p95 of the whole ``Searcher.search`` (wall and process CPU) and of its parts inside the same
calls (query encoding, stage 1, re-rank contexts, re-rank scoring, the rest), before and after the scalar
indexes ``maintain`` builds (BTREE on ``video_id`` and the time columns: the context lookup filters on them).

    python benchmarks/vector_search.py && python benchmarks/query_latency.py
    python benchmarks/query_latency.py --quick   # on the --quick (100k) database of vector_search.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _common import TESTDATA, header, pct, table
from vector_search import DEFAULT_DB, DIM, SEGMENTS_PER_VIDEO, video_id

from pipeline.store import schema as S

FRAMES_PER_SEGMENT = 4


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add_context_tables(db_dir: Path, n_segments: int) -> None:
    """videos / frames / tracks rows matching the segments table, written once."""
    import lancedb

    db = lancedb.connect(str(db_dir))
    names = set(db.table_names(limit=1000))
    expected = {S.FRAMES: n_segments * FRAMES_PER_SEGMENT, S.TRACKS: (n_segments + 1) // 2}
    for name, rows in expected.items():  # a table left half-written by an interrupted run is rebuilt
        if name in names and db.open_table(name).count_rows() != rows:
            db.drop_table(name)
            names.discard(name)
    n_videos = (n_segments + SEGMENTS_PER_VIDEO - 1) // SEGMENTS_PER_VIDEO
    if S.VIDEOS not in names:
        rows = [
            {
                "video_id": video_id(i), "fingerprint": str(i), "path": f"/videos/v{i:05d}.mp4", "size_bytes": 1,
                "duration_s": 1000.0, "fps": 30.0, "n_frames": 30000, "width": 640, "height": 360, "rotation": 0,
                "backend": "decord", "n_samples": 1000, "status": S.STATUS_COMPLETE, "pipeline_version": "bench",
                "run_id": "", "indexed_at": None,
            }
            for i in range(n_videos)
        ]  # fmt: skip
        db.create_table(S.VIDEOS, pa.Table.from_pylist(rows, schema=S.videos_schema()))
    vectors = np.load(db_dir / f"vectors_{n_segments}.npy", mmap_mode="r")
    rng = np.random.default_rng(7)
    if S.FRAMES not in names:
        t0 = time.perf_counter()
        tbl = None
        for s in range(0, n_segments, 50_000):
            seg = np.asarray(vectors[s : s + 50_000])
            n = len(seg) * FRAMES_PER_SEGMENT
            emb = _unit(np.repeat(seg, FRAMES_PER_SEGMENT, axis=0) + rng.standard_normal((n, DIM), np.float32) * 0.02)
            g = np.repeat(np.arange(s, s + len(seg)), FRAMES_PER_SEGMENT)
            j = np.tile(np.arange(FRAMES_PER_SEGMENT), len(seg))
            t = (g % SEGMENTS_PER_VIDEO) * 4.0 + j
            batch = S.columns_table(
                {
                    "frame_id": [f"frame-{a:08d}-{b}" for a, b in zip(g, j, strict=True)],
                    "video_id": [video_id(int(a) // SEGMENTS_PER_VIDEO) for a in g],
                    "t": pa.array(t, pa.float64()),
                    "frame_idx": pa.array((t * 30).astype(np.int64)),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), DIM),
                    "boxes": pa.array([[] for _ in range(n)], pa.list_(S.BOX)),
                    "class_names": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
                },
                schema=S.frames_schema(DIM),
            )
            if tbl is None:
                tbl = db.create_table(S.FRAMES, batch)
            else:
                tbl.add(batch)
        print(f"frames table: {n_segments * FRAMES_PER_SEGMENT:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    if S.TRACKS not in names:
        idx = np.arange(0, n_segments, 2)
        emb = _unit(np.asarray(vectors[idx]) + rng.standard_normal((len(idx), DIM), np.float32) * 0.05)
        t_first = (idx % SEGMENTS_PER_VIDEO) * 4.0 + 1.0
        obs = {"t": 0.0, "x1": 0.1, "y1": 0.1, "x2": 0.3, "y2": 0.5, "conf": 0.6, "mask_area": -1.0}
        tracks = pa.table(
            {
                "track_id": [f"track-{i:08d}" for i in idx],
                "video_id": [video_id(int(i) // SEGMENTS_PER_VIDEO) for i in idx],
                "tracker_id": pa.array(idx, pa.int64()),
                "class_name": ["person"] * len(idx),
                "conf_mean": pa.array(np.full(len(idx), 0.6, np.float32)),
                "t_first": pa.array(t_first),
                "t_last": pa.array(t_first + 5.0),
                "duration_s": pa.array(np.full(len(idx), 5.0)),
                "n_obs": pa.array(np.full(len(idx), 6, np.int32)),
                "trajectory": [[obs]] * len(idx),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), DIM),
                "best_t": pa.array(t_first),
                "best_box": [[0.1, 0.1, 0.3, 0.5]] * len(idx),
                "thumb_id": [f"frame-{i:08d}-1" for i in idx],
            },
            schema=S.tracks_schema(DIM),
        )
        db.create_table(S.TRACKS, tracks)


def scalar_indexes(db_dir: Path) -> float:
    """The scalar indexes ``maintain`` builds on every table (BTREE on video_id, t, ...), as production has them."""
    import lancedb

    from pipeline.store.maintenance import build_scalar_indexes

    db = lancedb.connect(str(db_dir))
    t0 = time.perf_counter()
    for name in (S.VIDEOS, S.FRAMES, S.TRACKS, S.SEGMENTS):
        tbl = db.open_table(name)
        print(name, build_scalar_indexes(tbl, name, {ix.name for ix in tbl.list_indices()}), flush=True)
    return time.perf_counter() - t0


def queries() -> list[str]:
    labels = TESTDATA / "mmaction2" / "label_map_k400.txt"
    words = labels.read_text().split("\n") if labels.exists() else [f"query number {i}" for i in range(100)]
    return [f"a video of {w.strip()}" for w in words if w.strip()][:60]


PARTS = ("encode", "stage1", "contexts", "rerank")


def measure(searcher: Any, texts: list[str], warmup: int = 3) -> dict[str, list[float]]:
    """Per query, inside one ``Searcher.search``: the whole search (wall and process CPU seconds, all threads)
    and its parts: query encoding, stage 1 (ANN + its rows), re-rank contexts, re-rank scoring; ``rest`` is
    the remainder (complete-video list, results, keyframe boxes). ``<part> cpu``: process CPU seconds inside
    the part (on a loaded machine wall time includes waiting for a core; CPU seconds do not)."""
    import pipeline.search.searcher as search_module

    spent: dict[str, float] = {}

    def timed(part: str, fn: Any) -> Any:
        def run(*a: Any, **kw: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[part] = spent.get(part, 0.0) + time.perf_counter() - t0
                spent[f"{part} cpu"] = spent.get(f"{part} cpu", 0.0) + time.process_time() - c0

        return run

    rr = searcher.reranker(searcher.cfg.search.rerank)
    searcher.embed_query = timed("encode", searcher.embed_query)
    searcher.stage1 = timed("stage1", searcher.stage1)
    rr.score = timed("rerank", rr.score)
    real_contexts = search_module.span_contexts
    search_module.span_contexts = timed("contexts", real_contexts)
    try:
        for t in texts[:warmup]:
            searcher.search(text=t, k=10)
        out: dict[str, list[float]] = {k: [] for k in ("search", "cpu", *PARTS, "rest")}
        out.update({f"{part} cpu": [] for part in (*PARTS, "rest")})
        for t in texts:
            spent.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            res = searcher.search(text=t, k=10)
            out["search"].append(time.perf_counter() - t0)
            out["cpu"].append(time.process_time() - c0)
            assert len(res) == 10
            for part in PARTS:
                out[part].append(spent.get(part, 0.0))
                out[f"{part} cpu"].append(spent.get(f"{part} cpu", 0.0))
            out["rest"].append(out["search"][-1] - sum(out[part][-1] for part in PARTS))
            out["rest cpu"].append(out["cpu"][-1] - sum(out[f"{part} cpu"][-1] for part in PARTS))
    finally:
        search_module.span_contexts = real_contexts
        del searcher.embed_query, searcher.stage1, rr.score
    return out


def compare_former(searcher: Any, texts: list[str]) -> list[dict[str, Any]]:
    """The context lookup of the re-rank on each query's 50 stage-1 candidates: the former one (one query over
    the span of all candidates, cut in Python; kept in tests/test_search_contexts.py as the test's reference)
    against ``pipeline.search.contexts``, on the same candidates, alternating; and that both return the same arrays."""
    from pipeline.search.contexts import contexts
    from tests.test_search_contexts import reference_contexts

    fetch = 10 * searcher.cfg.search.overfetch
    timing: dict[str, list[tuple[float, float]]] = {"former": [], "new": []}
    for t in texts:
        q = searcher.embed_query(t, None)
        rows = searcher.stage1(q.embedding, S.SEGMENTS, fetch).to_pylist()
        cands = [searcher._result(S.SEGMENTS, r, "") for r in rows]
        out = {}
        for name, fn in (("former", reference_contexts), ("new", contexts)):
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn(searcher.store, cands)
            timing[name].append((time.perf_counter() - t0, time.process_time() - c0))
        assert out["former"].keys() == out["new"].keys()
        assert all(np.array_equal(out["former"][k], out["new"][k]) for k in out["former"])
    return [
        {"lookup": name, "queries": len(v), "p50_ms": round(1e3 * pct([w for w, _ in v], 50), 1),
         "p95_ms": round(1e3 * pct([w for w, _ in v], 95), 1), "cpu_p50_ms": round(1e3 * pct([c for _, c in v], 50), 1)}
        for name, v in timing.items()
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="use the 100k database of vector_search.py --quick")
    ap.add_argument("--db", help="database of vector_search.py (default: its default for the row count)")
    ap.add_argument("--rows", type=int, help="segments in the database (vector_search.py --rows)")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--no-scalar-index", action="store_true", help="skip the run with scalar indexes")
    ap.add_argument("--torch-threads", type=int, help="torch threads for the query encoder (default: torch's)")
    ap.add_argument("--compare-former", type=int, default=0, help="also time the former context lookup on N queries")
    args = ap.parse_args()
    n = args.rows or (100_000 if args.quick else 1_000_000)
    db_dir = Path(args.db or DEFAULT_DB.format(rows=n))
    if not (db_dir / f"vectors_{n}.npy").exists():
        first = "benchmarks/vector_search.py" + (" --quick" if args.quick else "")
        raise SystemExit(f"{db_dir} has no benchmark vectors: run {first} first")
    header(f"query latency end to end: text encode + stage 1 over {n:,} segments + attention re-rank of 50")
    import torch

    from pipeline.config import load_config
    from pipeline.search.searcher import Searcher

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    add_context_tables(db_dir, n)
    cfg = load_config("default", ["encoder.pretrained=null", f"db.path={db_dir}"])
    searcher = Searcher(str(db_dir), cfg)
    texts = queries()[: args.queries]
    print(
        f"torch threads {torch.get_num_threads()}, {len(texts)} queries, k=10, re-rank top "
        f"{10 * cfg.search.overfetch} with '{cfg.search.rerank}'",
        flush=True,
    )
    rows = []
    indexed = any("video_id" in i.columns for i in searcher.store.table(S.FRAMES).list_indices())
    runs = [("maintain's scalar indexes" if indexed else "no scalar index", None)]
    if not (indexed or args.no_scalar_index):
        runs.append(("maintain's scalar indexes", scalar_indexes))
    for label, prepare in runs:
        if prepare is not None:
            print(f"scalar indexes built in {prepare(db_dir):.1f} s", flush=True)
            searcher = Searcher(str(db_dir), cfg, encoder=searcher.encoder)  # reopen tables to see new indexes
        m = measure(searcher, texts)
        names = {"search": "whole Searcher.search (wall)", "cpu": "whole Searcher.search (process CPU, all threads)"}
        for part, values in m.items():
            rows.append(
                {"setup": label, "part": names.get(part, part), "p50_ms": round(1e3 * pct(values, 50), 1),
                 "p95_ms": round(1e3 * pct(values, 95), 1), "mean_ms": round(1e3 * float(np.mean(values)), 1)}
            )  # fmt: skip
            print(rows[-1], flush=True)
    print(table(rows, floatfmt=".1f"))
    if args.compare_former:
        print("\nre-rank context lookup, same candidates (identical arrays checked):")
        print(table(compare_former(searcher, texts[: args.compare_former]), floatfmt=".1f"))
    if os.environ.get("VIDSEARCH_PROFILE"):
        import cProfile

        cProfile.runctx("searcher.search(text=texts[0], k=10)", globals(), locals(), sort="cumulative")


if __name__ == "__main__":
    main()
