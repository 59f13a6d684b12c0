"""Ingest: rows/s written to LanceDB through the project's write path (``Store.commit``) vs per-row adds.

Rows are ``frames`` rows of the project's schema (512-d embedding, three boxes each), grouped into videos of
100 frames. Measured in one run, each into a fresh database:
  commit, empty table   one ``Store.commit`` of all N rows (the first commit of a database: a plain add)
  commit, existing      the same N rows of *new* videos committed into a table that already holds N rows
                        (the steady state: ``merge_insert`` on the key plus the stale-row delete)
  commit per video      ``Store.commit`` once per video of 100 frames (what ``db.commit_every_videos=1`` costs)
  per-row add           ``table.add`` of one row at a time (the anti-pattern), timed on a sample of rows

    python benchmarks/ingest.py --quick        # 10k rows
    python benchmarks/ingest.py                # 10k and 100k rows
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _common import ClusteredEmbeddings, header, table

from pipeline.store import schema as S
from pipeline.store.db import Store

DIM = 512
FRAMES_PER_VIDEO = 100


def frame_rows(first_video: int, n: int, gen: ClusteredEmbeddings) -> tuple[list[dict[str, Any]], pa.Table]:
    """``n`` frames rows of videos ``first_video, ...`` and their ``videos`` rows (for the commit call)."""
    emb = gen.sample(n, seed=first_video)
    vids = [S.make_id("ingest-video", first_video + i // FRAMES_PER_VIDEO) for i in range(n)]
    box = {"track_id": "", "class_name": "person", "conf": 0.5, "x1": 0.1, "y1": 0.1, "x2": 0.4, "y2": 0.6}
    rows = S.columns_table(
        {
            "frame_id": [S.make_id(v, "frame", i) for i, v in enumerate(vids)],
            "video_id": vids,
            "t": pa.array(np.arange(n) % FRAMES_PER_VIDEO, pa.float64()),
            "frame_idx": pa.array(np.arange(n) % FRAMES_PER_VIDEO * 30, pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), DIM),
            "boxes": [[box, box, box]] * n,
            "class_names": [["person"]] * n,
        },
        schema=S.frames_schema(DIM),
    )
    videos = [
        {
            "video_id": v, "fingerprint": v, "path": f"/videos/{v}.mp4", "size_bytes": 1, "duration_s": 100.0,
            "fps": 30.0, "n_frames": 3000, "width": 640, "height": 360, "rotation": 0, "backend": "decord",
            "n_samples": FRAMES_PER_VIDEO, "status": S.STATUS_STARTED, "pipeline_version": "bench", "run_id": "",
            "indexed_at": None,
        }
        for v in dict.fromkeys(vids)
    ]  # fmt: skip
    return videos, rows


def commit_all(db: str, batches: list[tuple[list[dict[str, Any]], pa.Table]]) -> float:
    store = Store(db, DIM)
    t0 = time.perf_counter()
    for videos, rows in batches:
        store.begin(videos)
        store.commit(videos, {S.FRAMES: [rows]})
    return time.perf_counter() - t0


def per_row(db: str, rows: pa.Table, n: int) -> float:
    store = Store(db, DIM)
    tbl = store.table(S.FRAMES)
    t0 = time.perf_counter()
    for i in range(n):
        tbl.add(rows.slice(i, 1))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma list of row counts (default 10000,100000)")
    ap.add_argument("--per-row-sample", type=int, default=300, help="rows added one by one (rate extrapolates)")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10000" if args.quick else "10000,100000")).split(",")]
    header("ingest: rows/s through Store.commit vs per-row table.add (frames rows, 512-d)")
    gen = ClusteredEmbeddings(DIM, n_clusters=200)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    out = []
    try:
        for n in sizes:
            videos, rows = frame_rows(0, n, gen)
            videos2, rows2 = frame_rows(n // FRAMES_PER_VIDEO + 1, n, gen)
            per_video = [
                (videos[i : i + 1], rows.slice(i * FRAMES_PER_VIDEO, FRAMES_PER_VIDEO)) for i in range(len(videos))
            ]
            t_empty = commit_all(str(work / f"a{n}"), [(videos, rows)])
            t_existing = commit_all(str(work / f"a{n}"), [(videos2, rows2)])  # same db: now non-empty
            n_pv = min(len(per_video), 100 if n > 10_000 else len(per_video))  # bounded: it grows slower per commit
            t_pv = commit_all(str(work / f"b{n}"), per_video[:n_pv])
            k = min(args.per_row_sample, n)
            t_row = per_row(str(work / f"c{n}"), rows, k)
            base = k / t_row
            for name, count, secs in (
                ("Store.commit, empty table", n, t_empty),
                ("Store.commit, existing table (merge_insert)", n, t_existing),
                (f"Store.commit per video of {FRAMES_PER_VIDEO} ({n_pv} videos)", n_pv * FRAMES_PER_VIDEO, t_pv),
                (f"table.add per row ({k} rows)", k, t_row),
            ):
                out.append(
                    {
                        "rows": n,
                        "write path": name,
                        "seconds": round(secs, 2),
                        "rows/s": round(count / secs),
                        "vs per-row": f"{count / secs / base:.0f}x",
                    }
                )
                print(out[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(out))


if __name__ == "__main__":
    main()
