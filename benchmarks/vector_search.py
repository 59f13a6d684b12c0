"""Vector search at scale: LanceDB ANN vs exact numpy brute force on clustered 512-d embeddings.

Builds a ``segments`` table of N rows (default 1,000,000; ``--quick`` 100,000) with the project's schema and
the vector index the project builds (``pipeline.store.maintenance.build_vector_index`` with ``MaintenanceConfig``),
and, for comparison, other index types on copies of the
same vectors. For every index and a sweep of ``nprobes`` / ``ef`` / ``refine_factor`` it reports recall@10
against exact search, p50/p95 single-query latency and the speed-up over numpy brute force (one query at a
time, timed in the same run).

The database is kept (``--db``) so ``benchmarks/query_latency.py`` can reuse it; ``--reuse`` skips writing
and index building when the tables are already there.

    python benchmarks/vector_search.py --quick
    python benchmarks/vector_search.py                       # 1M rows; index builds take minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from _common import ClusteredEmbeddings, exact_topk, header, pct, table

from pipeline.config import MaintenanceConfig
from pipeline.search.searcher import RESULT_COLUMNS
from pipeline.store import schema as S

DIM = 512
SEGMENTS_PER_VIDEO = 250  # 1000 s videos at 4 s segments
#: One class per segment, in turn: a class filter on one of them keeps 10% of the rows.
CLASSES = ("person", "car", "dog", "cat", "bicycle", "bus", "truck", "horse", "bird", "boat")
DEFAULT_DB = os.environ.get("VIDSEARCH_BENCH_DB", "/tmp/vidsearch_bench/db_{rows}")


def video_id(i: int) -> str:
    return S.make_id("bench-video", i)


def segment_rows(start: int, emb: npt.NDArray[np.float32]) -> pa.Table:
    """Rows of the project's ``segments`` schema for vectors ``start .. start+len(emb)``."""
    n = len(emb)
    idx = np.arange(start, start + n)
    vids = [video_id(int(i) // SEGMENTS_PER_VIDEO) for i in idx]
    starts = (idx % SEGMENTS_PER_VIDEO) * 4.0
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    return S.columns_table(
        {
            "segment_id": pa.array([f"seg-{i:08d}" for i in idx]),
            "video_id": pa.array(vids),
            "start_s": pa.array(starts, pa.float64()),
            "end_s": pa.array(starts + 4.0, pa.float64()),
            "n_frames": pa.array(np.full(n, 4, np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM),
            "thumb_id": pa.array([f"frame-{i:08d}-1" for i in idx]),
            "class_names": pa.array([[CLASSES[i % len(CLASSES)]] for i in idx], pa.list_(pa.string())),
        },
        schema=S.segments_schema(DIM),
    )


def build_index(tbl: Any, cfg: MaintenanceConfig, n_rows: int) -> tuple[float, str]:
    """Build the vector index exactly as the project does; returns (seconds, which code path built it)."""
    from pipeline.store.maintenance import build_vector_index

    t0 = time.perf_counter()
    build_vector_index(tbl, cfg, n_rows, force=True)
    return time.perf_counter() - t0, "pipeline.store.maintenance.build_vector_index"


def ensure_data(db_dir: Path, n: int, reuse: bool) -> npt.NDArray[np.float32]:
    """The N vectors (as a memory-mapped .npy beside the database), generated once."""
    path = db_dir / f"vectors_{n}.npy"
    if reuse and path.exists():
        return np.load(path, mmap_mode="r")
    gen = ClusteredEmbeddings(DIM)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    pos = 0
    for chunk in gen.chunks(n, seed=1):
        data[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    data.flush()
    return np.load(path, mmap_mode="r")


def queries(n: int) -> npt.NDArray[np.float32]:
    return ClusteredEmbeddings(DIM).sample(n, seed=424242)  # same distribution, never in the table


def write_table(db: Any, name: str, data: npt.NDArray[np.float32]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    if name in db.table_names(limit=1000):
        db.drop_table(name)
    tbl = db.create_table(name, schema=S.segments_schema(DIM))
    step = 200_000
    batches = (segment_rows(s, np.asarray(data[s : s + step])) for s in range(0, len(data), step))
    tbl.add(pa.Table.from_batches([b for t in batches for b in t.to_batches()], schema=S.segments_schema(DIM)))
    return tbl, time.perf_counter() - t0


#: What stage 1 of a search reads (``Searcher.stage1``).
STAGE1_COLUMNS = RESULT_COLUMNS[S.SEGMENTS]


def search_ids(
    tbl: Any,
    q: npt.NDArray[np.float32],
    k: int,
    nprobes: int | None,
    ef: int | None,
    refine: int | None,
    fetch: int | None = None,
    where: str | None = None,
) -> Any:
    """Ids of the ``k`` nearest rows; with ``fetch``, the query fetches that many rows and the columns
    ``Searcher.stage1`` reads (as a search with re-ranking does) and the first ``k`` ids are returned."""
    s = tbl.search(q.tolist(), vector_column_name="embedding").distance_type("cosine")
    if nprobes:  # None: LanceDB's defaults, which is what a query that sets nothing gets
        s = s.nprobes(nprobes)
    if ef:
        s = s.ef(ef)
    if refine:
        s = s.refine_factor(refine)
    if where:
        s = s.where(where, prefilter=True)
    s = s.select([*(STAGE1_COLUMNS if fetch else ["segment_id"]), "_distance"])
    return s.limit(fetch or k).to_arrow().column("segment_id").to_pylist()[:k]


def measure(
    tbl: Any,
    qs: npt.NDArray[np.float32],
    truth: npt.NDArray[np.int64],
    k: int,
    nprobes: int | None,
    ef: int | None,
    refine: int | None,
    fetch: int | None = None,
    where: str | None = None,
) -> dict[str, float]:
    for q in qs[:10]:  # warm the index cache
        search_ids(tbl, q, k, nprobes, ef, refine, fetch, where)
    lat, hits = [], 0
    c0 = time.process_time()
    for q, t in zip(qs, truth, strict=True):
        t0 = time.perf_counter()
        ids = search_ids(tbl, q, k, nprobes, ef, refine, fetch, where)
        lat.append(time.perf_counter() - t0)
        got = {int(s[4:]) for s in ids}
        hits += len(got & set(t[:k].tolist()))
    cpu_ms = 1e3 * (time.process_time() - c0) / len(qs)  # all threads of this process, per query
    return {
        "recall": hits / (k * len(qs)),
        "p50_ms": 1e3 * pct(lat, 50),
        "p95_ms": 1e3 * pct(lat, 95),
        "cpu_ms": cpu_ms,
    }


def numpy_latency(data: npt.NDArray[np.float32], qs: npt.NDArray[np.float32], k: int) -> list[float]:
    """Exact search one query at a time (matrix-vector product + argpartition), data resident in RAM."""
    lat = []
    for q in qs:
        t0 = time.perf_counter()
        sims = data @ q
        top = np.argpartition(-sims, k)[:k]
        top[np.argsort(-sims[top])]
        lat.append(time.perf_counter() - t0)
    return lat


def filter_cases(n: int) -> dict[str, tuple[str, npt.NDArray[np.bool_]]]:
    """Prefilters that keep 10% of the rows, compiled by the search code itself: name -> (where, row mask)."""
    from pipeline.search.searcher import Filters, compile_filters

    idx = np.arange(n)
    n_videos = (n + SEGMENTS_PER_VIDEO - 1) // SEGMENTS_PER_VIDEO
    paths = {video_id(i): f"/videos/v{i:05d}.mp4" for i in range(n_videos)}
    last_start = 4.0 * (SEGMENTS_PER_VIDEO // 10 - 1)  # the first tenth of every video
    cases = {
        f"class {CLASSES[0]}": (Filters(classes=[CLASSES[0]]), idx % len(CLASSES) == 0),
        f"time 0-{last_start:g} s": (
            Filters(time_range=(0.0, last_start)),
            (idx % SEGMENTS_PER_VIDEO) * 4.0 <= last_start,
        ),
        "path /videos/v*0.mp4": (Filters(path_glob="/videos/v*0.mp4"), (idx // SEGMENTS_PER_VIDEO) % 10 == 0),
    }
    out = {}
    for name, (f, mask) in cases.items():
        where = compile_filters(f, "segments", paths)
        assert where is not None
        out[name] = (where, mask)
    return out


def filtered_recall(
    tbl: Any,
    resident: npt.NDArray[np.float32],
    qs: npt.NDArray[np.float32],
    k: int,
    setting: tuple[int | None, int | None, int | None],
    fetch: int | None,
) -> list[dict[str, Any]]:
    """Recall@k and latency of prefiltered searches (each filter keeps 10% of the rows) against exact search
    over the rows the filter keeps, at one (nprobes, ef, refine) setting."""
    from pipeline.store.maintenance import build_scalar_indexes

    t0 = time.perf_counter()
    built = build_scalar_indexes(tbl, S.SEGMENTS, {ix.name for ix in tbl.list_indices()})
    if built:
        print(f"scalar indexes for the filters in {time.perf_counter() - t0:.0f} s: {built}", flush=True)
    rows = []
    for name, (where, mask) in filter_cases(len(resident)).items():
        keep = np.flatnonzero(mask)
        truth = keep[exact_topk(np.ascontiguousarray(resident[keep]), qs, k)]
        m = measure(tbl, qs, truth, k, *setting, fetch=fetch, where=where)
        rows.append(
            {"filter": name, "kept": f"{mask.mean():.0%}", "nprobes": setting[0], "ef": setting[1] or "default",
             "refine": setting[2] or "-", f"recall@{k}": round(m["recall"], 3), "p50_ms": round(m["p50_ms"], 2),
             "p95_ms": round(m["p95_ms"], 2), "cpu_ms": round(m["cpu_ms"], 2)}
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def _ints(text: str | None) -> list[int | None] | None:
    """``"8,16,none"`` -> ``[8, 16, None]``."""
    return None if text is None else [None if v.strip().lower() == "none" else int(v) for v in text.split(",")]


def sweep(index_type: str) -> list[tuple[int | None, int | None, int | None]]:
    """(nprobes, ef, refine_factor) settings; the first, all None, is LanceDB's defaults."""
    if "HNSW" in index_type:
        return [(None, None, None)] + [(p, ef, r) for p in (8, 16, 32, 64) for ef in (None, 100) for r in (None, 5)]
    return [(None, None, None)] + [(p, None, r) for p in (8, 16, 32, 64, 128) for r in (None, 5, 20)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k rows, fewer queries, project index only")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--queries", type=int)
    ap.add_argument("--db", help="database folder (kept for query_latency.py)")
    ap.add_argument("--reuse", action="store_true", help="reuse the vectors, tables and indexes in --db")
    ap.add_argument(
        "--alternatives", default="IVF_PQ,IVF_FLAT", help="comma list of other index types to compare ('' for none)"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="MaintenanceConfig key=value")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--nprobes", help="sweep these nprobes instead of the built-in grid, e.g. 2,4,8")
    ap.add_argument("--ef", help="with --nprobes: HNSW ef values, e.g. none,40,80")
    ap.add_argument("--refine", help="with --nprobes: refine factors, e.g. none,5")
    ap.add_argument("--fetch", type=int, help="fetch this many rows with stage 1's columns (search: k x overfetch)")
    ap.add_argument("--filters", action="store_true", help="also recall with 10%% prefilters at the default setting")
    args = ap.parse_args()
    n = args.rows or (100_000 if args.quick else 1_000_000)
    nq = args.queries or (50 if args.quick else 200)
    k = 10
    header(f"vector search: {n:,} x {DIM} clustered float32, {nq} queries, recall@{k} vs exact numpy")

    import lancedb
    import yaml

    cfg = MaintenanceConfig.model_validate(
        {
            **MaintenanceConfig().model_dump(),
            **{kv.split("=")[0]: yaml.safe_load(kv.split("=", 1)[1]) for kv in args.overrides},
        }
    )
    db_dir = Path(args.db or DEFAULT_DB.format(rows=n))
    if not args.reuse and db_dir.exists():
        shutil.rmtree(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = ensure_data(db_dir, n, args.reuse)
    print(f"vectors: {time.perf_counter() - t0:.1f} s", flush=True)
    qs = queries(nq)
    t0 = time.perf_counter()
    resident = np.ascontiguousarray(data)
    truth = exact_topk(resident, qs, k)
    np_lat = numpy_latency(resident, qs[: min(nq, 30)], k)
    np_p50 = 1e3 * pct(np_lat, 50)
    truth_s = time.perf_counter() - t0
    print(f"numpy exact: p50 {np_p50:.1f} ms, p95 {1e3 * pct(np_lat, 95):.1f} ms (ground truth in {truth_s:.0f} s)")

    db = lancedb.connect(str(db_dir))
    plans = [("project", cfg)]
    if not args.quick:
        plans += [(t, cfg.model_copy(update={"index_type": t})) for t in args.alternatives.split(",") if t]
    rows: list[dict[str, Any]] = []
    builds: dict[str, Any] = {}
    for label, c in plans:
        name = S.SEGMENTS if label == "project" else f"alt_{c.index_type.lower()}"
        log = db_dir / f"build_{name}.json"  # how the index was built, for --reuse reports
        if args.reuse and name in db.table_names(limit=1000) and db.open_table(name).list_indices() and log.exists():
            tbl = db.open_table(name)
            write_s, build_s, how = json.loads(log.read_text())
            how = f"reused; built by {how}"
        else:
            tbl, write_s = write_table(db, name, resident)
            build_s, how = build_index(tbl, c, n)
            log.write_text(json.dumps([write_s, build_s, how]))
        idx = tbl.list_indices()
        builds[label] = {
            "index_type": c.index_type,
            "write_s": write_s,
            "build_s": build_s,
            "how": how,
            "indices": str(idx),
        }
        print(
            f"[{label}] {c.index_type}: write {write_s:.1f} s, index build {build_s:.1f} s via {how}; {idx}", flush=True
        )
        settings = sweep(c.index_type)
        if args.nprobes:
            settings = [
                (p, e, r)
                for p in _ints(args.nprobes) or []
                for e in _ints(args.ef) or [None]
                for r in _ints(args.refine) or [None]
            ]
        default = (cfg.nprobes, cfg.ef, cfg.refine_factor)
        if label == "project" and default not in settings:
            settings.insert(0, default)
        if args.quick:
            settings = [default, *(s for s in settings[::3] if s != default)]
        for nprobes, ef, refine in settings:
            m = measure(tbl, qs, truth, k, nprobes, ef, refine, fetch=args.fetch)
            near = 1e3 * pct(numpy_latency(resident, qs[:8], k), 50)  # baseline next to it in time: load drifts
            row = {
                "index": c.index_type + (" (project)" if label == "project" else ""),
                "nprobes": nprobes or "default",
                "ef": ef or "default",
                "refine": refine or "-",
                f"recall@{k}": round(m["recall"], 3),
                "p50_ms": round(m["p50_ms"], 2),
                "p95_ms": round(m["p95_ms"], 2),
                "cpu_ms": round(m["cpu_ms"], 2),
                "numpy_p50_ms": round(near, 1),
                "speedup_vs_numpy": round(near / m["p50_ms"], 1),
            }
            if (nprobes, ef, refine) == default and label == "project":
                row["index"] += " DEFAULT"
            rows.append(row)
            print(row, flush=True)
    filtered = []
    if args.filters:
        filtered = filtered_recall(db.open_table(S.SEGMENTS), resident, qs, k, default, args.fetch)
    print(f"\nnumpy brute force p50 {np_p50:.1f} ms (one query at a time, {n:,} rows resident)\n")
    print(table(rows))
    if filtered:
        print("\nprefiltered (project index, default setting):\n" + table(filtered))
    if args.json:
        out = {"rows": rows, "filtered": filtered, "builds": builds, "numpy_p50_ms": np_p50}
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
