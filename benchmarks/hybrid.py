"""Query latency of text and hybrid search against vector search, and the caption tokenizer choice.

A synthetic segments table (``--rows`` segments of 250 per video, CLIP-like clustered 512-d embeddings,
generated English captions "a {adjective} {subject} {action} {place}") is written through ``Store.commit`` and
maintained as production maintains it (``maintain``: the vector index from 50k rows, scalar indexes, the caption
full-text index). Then:

1. ``Searcher.search`` per mode (``k=10``, no re-rank, with and without a class filter), wall and process-CPU
   time per query. The query encoder is a stub that returns precomputed vectors, so the numbers are the
   search's own (the text tower, ~86 ms CPU for ViT-B/32, is in BENCHMARKS.md item 5 and is the same for vector
   and hybrid; text mode without a re-ranker never runs it).
2. Stage 1 only, the hybrid fusion two ways on the same queries: ``pipeline/search/hybrid.py`` (the two rankings,
   explicit RRF) and LanceDB's ``query_type="hybrid"`` with ``RRFReranker``; how often their top 10 agree.
3. On-screen text (``--screen-share`` of the segments carry a sign, "EXIT 1234"-like, in ``screen_text``, which
   ``maintain`` indexes as n-grams): text and hybrid search by a sign with one misread character, their latency
   and R@1, and the cost the screen ranking adds to caption queries (the same queries with its index dropped).
4. Tokenizers on a separate table of the same captions: build time, query latency and recall of queries whose
   words are inflected differently from the caption ("dogs rides bikes" for "a dog riding a bike"): stemmed
   words without stop words (the choice), plain words, character trigrams.

    python benchmarks/hybrid.py --rows 100000 --queries 40
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
from _common import ClusteredEmbeddings, header, pct, table, timed

ADJECTIVES = ["young", "old", "tall", "small", "happy", "tired", "busy", "quiet", "smiling", "lonely"]
#: word -> a differently inflected form a user might type (stemming maps the regular ones together)
SUBJECTS = {
    "dog": "dogs", "man": "men", "woman": "women", "cat": "cats", "child": "children", "horse": "horses",
    "cyclist": "cyclists", "bird": "birds", "girl": "girls", "boy": "boys", "player": "players", "car": "cars",
    "chef": "chefs", "dancer": "dancers", "runner": "runners", "student": "students", "worker": "workers",
    "skater": "skaters", "driver": "drivers", "singer": "singers",
}  # fmt: skip
ACTIONS = {
    "running": "runs", "sitting": "sits", "riding a bike": "rides bikes", "eating lunch": "eats lunches",
    "playing with a ball": "plays balls", "jumping": "jumps", "walking slowly": "walks slow",
    "reading a book": "reads books", "cooking dinner": "cooks dinners", "dancing": "dances",
    "talking on a phone": "talks phones", "opening a door": "opens doors", "carrying boxes": "carries box",
    "painting a wall": "paints walls", "throwing a frisbee": "throws frisbees", "climbing stairs": "climbs stair",
    "washing dishes": "washes dish", "typing on a laptop": "types laptops", "holding an umbrella": "holds umbrellas",
    "crossing the road": "crosses roads",
}  # fmt: skip
PLACES = {
    "on the beach": "beaches", "in a park": "parks", "on a busy street": "busy streets", "in a kitchen": "kitchens",
    "in an office": "offices", "near a river": "rivers", "in a garden": "gardens", "at a station": "stations",
    "in the snow": "snowy", "on a bridge": "bridges", "in a classroom": "classrooms", "at a market": "markets",
    "in a forest": "forests", "on a stage": "stages", "in a shop": "shops", "by a lake": "lakes",
    "on a boat": "boats", "in a garage": "garages", "at the airport": "airports", "on a farm": "farms",
}  # fmt: skip
PER_VIDEO = 250
DIM = 512


def captions(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` captions and the (adjective, subject, action, place) index of each."""
    rng = np.random.default_rng(seed)
    parts = np.stack([rng.integers(0, len(x), n) for x in (ADJECTIVES, SUBJECTS, ACTIONS, PLACES)], axis=1)
    subj, act, place = list(SUBJECTS), list(ACTIONS), list(PLACES)
    return [f"a {ADJECTIVES[a]} {subj[s]} {act[c]} {place[p]}" for a, s, c, p in parts], parts


SIGNS = ["EXIT", "GATE", "PLATFORM", "SALE", "ROOM", "BUS", "TRACK", "LEVEL", "ZONE", "DOCK"]


def signs(rows: int, share: float) -> list[str | None]:
    """A unique sign ("GATE 4711") on ``share`` of the segments, none on the others."""
    rng = np.random.default_rng(2)
    return [f"{SIGNS[i % len(SIGNS)]} {i}" if rng.random() < share else None for i in range(rows)]


def misread(sign: str, rng: np.random.Generator) -> str:
    """``sign`` with one letter of its word replaced, as OCR misreads it."""
    i = int(rng.integers(0, sign.index(" ")))
    return sign[:i] + ("0" if sign[i] != "0" else "O") + sign[i + 1 :]


def build(db: Path, rows: int, screen_share: float = 0.0) -> Any:
    from pipeline.config import MaintenanceConfig
    from pipeline.store import schema as S
    from pipeline.store.db import Store
    from pipeline.store.maintenance import maintain

    store = Store(str(db), DIM)
    n_videos = max(1, rows // PER_VIDEO)
    caps, _ = captions(rows, seed=1)
    emb = ClusteredEmbeddings(dim=DIM).sample(rows, seed=1)
    vids = [f"video-{i:05d}" for i in range(n_videos)]
    video_of = [vids[i // PER_VIDEO % n_videos] for i in range(rows)]
    start = np.array([4.0 * (i % PER_VIDEO) for i in range(rows)])
    segs = S.columns_table(
        {
            "segment_id": [f"seg-{i:07d}" for i in range(rows)],
            "video_id": video_of,
            "start_s": pa.array(start, pa.float64()),
            "end_s": pa.array(start + 4.0, pa.float64()),
            "n_frames": pa.array(np.full(rows, 4), pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM),
            "thumb_id": [f"frame-{i:07d}" for i in range(rows)],
            "class_names": pa.array([[("person", "dog", "car")[i % 3]] for i in range(rows)], pa.list_(pa.string())),
            "caption": caps,
            "screen_text": pa.array(signs(rows, screen_share), pa.string()),
        },
        S.segments_schema(DIM),
    )
    videos = [
        {"video_id": v, "fingerprint": v, "path": f"/archive/{v}.mp4", "size_bytes": 1, "duration_s": 1000.0,
         "fps": 25.0, "n_frames": 25000, "width": 640, "height": 360, "rotation": 0, "backend": "bench",
         "n_samples": 1000, "status": S.STATUS_STARTED, "pipeline_version": "bench", "run_id": "",
         "indexed_at": None}
        for v in vids
    ]  # fmt: skip
    t0 = time.perf_counter()
    store.begin(videos)
    store.commit(videos, {S.SEGMENTS: [segs]})
    print(f"# wrote {rows} segments of {n_videos} videos in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    report = maintain(store, MaintenanceConfig())
    print(f"# maintain {time.perf_counter() - t0:.1f} s: {report['tables'][S.SEGMENTS]['actions']}", flush=True)
    return store


class StubEncoder:
    """Precomputed query vectors from the same distribution as the rows (the search's cost, not the tower's)."""

    def __init__(self, n: int) -> None:
        self.vectors = ClusteredEmbeddings(dim=DIM).sample(n, seed=7)
        self.i = 0

    def encode_text_query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        v = self.vectors[self.i % len(self.vectors)]
        self.i += 1
        return v, v[None]


def row(name: str, wall: list[float], cpu: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "what": name,
        "p50 ms (wall)": pct(wall, 50),
        "p95 ms (wall)": pct(wall, 95),
        "p50 CPU ms": pct(cpu, 50),
        "p95 CPU ms": pct(cpu, 95),
        **extra,
    }


def latency(store: Any, queries: list[str]) -> None:
    from pipeline.config import load_config
    from pipeline.search.hybrid import text_ranking
    from pipeline.search.searcher import RESULT_COLUMNS, Searcher

    cfg = load_config("default", ["encoder.pretrained=null"])
    n = len(queries)
    searcher = Searcher(store, cfg, encoder=StubEncoder(n))  # type: ignore[arg-type]
    rows = []
    for filters in (None, {"classes": ["dog"]}):
        for mode in ("vector", "text", "hybrid"):

            def one(i: int, mode: str = mode, filters: dict[str, Any] | None = filters) -> Any:
                return searcher.search(text=queries[i], k=10, mode=mode, rerank=None, filters=filters)  # type: ignore[arg-type]

            one(0)  # warm
            wall, cpu = timed(one, n)
            rows.append(row(f"search {mode}" + (" + class filter" if filters else ""), wall, cpu))
    print("\n## Searcher.search, k=10, no re-rank (stub query encoder)\n")
    print(table(rows))

    from lancedb.query import MatchQuery
    from lancedb.rerankers import RRFReranker

    from pipeline.search.hybrid import fuse

    segs = store.table("segments")
    cols = RESULT_COLUMNS["segments"]
    depth = 10 * cfg.search.overfetch
    vecs = ClusteredEmbeddings(dim=DIM).sample(n, seed=7)

    def ours(i: int) -> list[str]:
        vec = searcher.stage1(vecs[i], "segments", depth).to_pylist()
        words = text_ranking(segs, queries[i], cols, depth, None)
        return [r["segment_id"] for r, _ in fuse([vec, words], "segment_id")[:10]]

    def lance(i: int) -> list[str]:
        q = (
            segs.search(query_type="hybrid", vector_column_name="embedding")
            .vector(vecs[i].tolist())
            .text(MatchQuery(queries[i], "caption"))
        )
        q = q.distance_type("cosine").nprobes(cfg.maintenance.nprobes).rerank(RRFReranker(K=cfg.search.rrf_k))
        return [r["segment_id"] for r in q.select(cols).limit(depth).to_list()[:10]]

    ours(0), lance(0)
    stage = []
    for name, fn in (("vector ranking (Searcher.stage1)", lambda i: searcher.stage1(vecs[i], "segments", depth)),
                     ("text ranking (BM25, MatchQuery)", lambda i: text_ranking(segs, queries[i], cols, depth, None)),
                     ("hybrid: both + explicit RRF (pipeline/search/hybrid.py)", ours),
                     ("hybrid: LanceDB query_type=hybrid + RRFReranker", lance)):  # fmt: skip
        wall, cpu = timed(fn, n)
        stage.append(row(name, wall, cpu))
    same = sum(ours(i) == lance(i) for i in range(n))
    top = sum(set(ours(i)) == set(lance(i)) for i in range(n))  # (ties aside, the order is the same too)
    print(f"\n## Stage 1 only, {depth} rows per ranking\n")
    print(table(stage))
    print(f"\ntop 10 identical in order: {same}/{n} queries; same top-10 set: {top}/{n}")


def screen(store: Any, rows: int, share: float, queries: list[str]) -> None:
    """Sign queries with one misread letter (relevant: the segment with that sign), then the caption queries with
    and without the screen index, all through ``Searcher.search`` (k=10, no re-rank)."""
    from pipeline.config import load_config
    from pipeline.search.searcher import Searcher
    from pipeline.store.fts import SCREEN_FTS

    cfg = load_config("default", ["encoder.pretrained=null"])
    n = len(queries)
    searcher = Searcher(store, cfg, encoder=StubEncoder(n))  # type: ignore[arg-type]
    shown = [(i, t) for i, t in enumerate(signs(rows, share)) if t]
    rng = np.random.default_rng(4)
    picks = [shown[int(j)] for j in rng.integers(0, len(shown), n)]
    asked = [misread(t, rng) for _, t in picks]
    out = []
    for mode in ("text", "hybrid"):
        got: list[list[str]] = []

        def sign(i: int, mode: str = mode, got: list[list[str]] = got) -> None:
            got.append([h.id for h in searcher.search(text=asked[i], k=10, mode=mode, rerank=None)])  # type: ignore[arg-type]

        sign(0)
        got.clear()
        wall, cpu = timed(sign, n)
        r1 = sum(g[:1] == [f"seg-{i:07d}"] for g, (i, _) in zip(got, picks, strict=True)) / n
        r10 = sum(f"seg-{i:07d}" in g for g, (i, _) in zip(got, picks, strict=True)) / n
        out.append(row(f"{mode}, sign with one misread letter", wall, cpu, **{"R@1": r1, "R@10": r10}))
    segs = store.table("segments")
    for indexed in (True, False):
        if not indexed:
            segs.drop_index(SCREEN_FTS.name)
        for mode in ("text", "hybrid"):

            def caption(i: int, mode: str = mode) -> Any:
                return searcher.search(text=queries[i], k=10, mode=mode, rerank=None)  # type: ignore[arg-type]

            caption(0)
            wall, cpu = timed(caption, n)
            out.append(row(f"{mode}, caption query, {'with' if indexed else 'without'} the screen index", wall, cpu))
    SCREEN_FTS.build(segs)
    print(f"\n## On-screen text: {len(shown)} of {rows} segments show a sign, {n} queries\n")
    print(table(out))


def tokenizers(store: Any, rows: int, n_queries: int) -> None:
    """Recall@10 of inflected queries: a hit is relevant when it has the query's subject, action and place."""
    from pipeline.store.fts import FtsIndex

    caps, parts = captions(rows, seed=1)
    tbl = store.db.create_table("tok", pa.table({"id": np.arange(rows), "caption": caps}), mode="overwrite")
    rng = np.random.default_rng(3)
    picks = rng.integers(0, rows, n_queries)
    subj, act, place = list(SUBJECTS.items()), list(ACTIONS.items()), list(PLACES.items())
    forms = {
        "as captioned": lambda s, c, p: f"{s[0]} {c[0]} {p[0]}",
        "inflected": lambda s, c, p: f"{s[1]} {c[1]} {p[1]}",
    }
    variants = {
        "stemmed words, no stop words (chosen)": {
            "base_tokenizer": "simple", "language": "English", "stem": True, "remove_stop_words": True,
            "lower_case": True, "ascii_folding": True},
        "plain words": {"base_tokenizer": "simple", "stem": False, "remove_stop_words": False, "lower_case": True,
                        "ascii_folding": True},
        "character trigrams": {"base_tokenizer": "ngram", "ngram_min_length": 3, "ngram_max_length": 3,
                               "stem": False, "remove_stop_words": False, "ascii_folding": True},
    }  # fmt: skip
    from lancedb.query import MatchQuery

    out = []
    for name, opts in variants.items():
        t0 = time.perf_counter()
        FtsIndex("tok", "caption", "tok_fts", opts).build(tbl, replace=True)
        built = time.perf_counter() - t0
        for form, make in forms.items():
            top1, hits, wall, cpu = 0, 0, [], []
            for i in picks:
                _, s, c, p = parts[i]
                q = make(subj[s], act[c], place[p])
                t0, c0 = time.perf_counter(), time.process_time()
                res = tbl.search(MatchQuery(q, "caption"), query_type="fts").select(["id", "_score"]).limit(10)
                res = res.to_list()
                wall.append(1000 * (time.perf_counter() - t0))
                cpu.append(1000 * (time.process_time() - c0))
                good = [bool((parts[r["id"]][1:] == parts[i][1:]).all()) for r in res]
                top1, hits = top1 + (good[:1] == [True]), hits + any(good)
            n = len(picks)
            out.append({"tokenizer": name, "build s": built, "queries": form, "R@1": top1 / n, "R@10": hits / n,
                        "p50 ms (wall)": pct(wall, 50), "p50 CPU ms": pct(cpu, 50)})  # fmt: skip
    print(f"\n## Caption tokenizers, {rows} captions, {n_queries} queries (relevant: same subject, action, place)\n")
    print(table(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--screen-share", type=float, default=0.3, help="share of segments with on-screen text")
    ap.add_argument("--db", help="where to build the database (default: a temp dir, removed)")
    args = ap.parse_args()
    header(f"hybrid search: {args.rows} segments, {args.queries} queries")
    folder = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="vidsearch-hybrid-"))
    try:
        store = build(folder / "db", args.rows, args.screen_share)
        caps, _ = captions(args.queries, seed=5)
        queries = [c.removeprefix("a ") for c in caps]  # a caption-like query: "tired dog running in a park"
        latency(store, queries)
        if args.screen_share > 0:
            screen(store, args.rows, args.screen_share, queries)
        tokenizers(store, args.rows, args.queries * 5)
    finally:
        if not args.db:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
