"""Re-rank contexts fetched per candidate (``pipeline/search/contexts.py``) are exactly those of the former lookup (one
query over the span of all candidates, cut in Python; copied below as the reference): same rows, same order,
same float32 values, on a small database of several videos written in interleaved commits, with and without
scalar indexes, and when the table changes between the key query and the take."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import BTree

from pipeline.search import contexts as C
from pipeline.search.searcher import Searcher, SearchResult
from pipeline.store import schema as S
from pipeline.store.db import Store, in_list
from tests.helpers import tiny_config

DIM = 8
N_VIDEOS = 5


@dataclass
class Cand:
    id: str
    video_id: str
    start_s: float
    end_s: float


def reference_contexts(store: Store, results: list[Any]) -> dict[str, np.ndarray]:
    """``Searcher._contexts`` as it was before the per-candidate lookup (level argument dropped: unused)."""
    ids = in_list("video_id", sorted({r.video_id for r in results}))
    lo, hi = min(r.start_s for r in results) - 1e-6, max(r.end_s for r in results) + 1e-6
    frames = store.rows(S.FRAMES, f"{ids} AND t >= {lo!r} AND t <= {hi!r}", ["video_id", "t", "embedding"])
    frames = frames.to_pylist()
    tracks = (
        store.rows(
            S.TRACKS,
            f"{ids} AND t_last >= {lo!r} AND t_first <= {hi!r}",
            ["video_id", "t_first", "t_last", "embedding"],
        ).to_pylist()
        if store.exists(S.TRACKS)
        else []
    )
    out = {}
    for r in results:
        embs = [
            f["embedding"]
            for f in frames
            if f["video_id"] == r.video_id and r.start_s - 1e-6 <= f["t"] <= r.end_s + 1e-6
        ]
        embs += [
            t["embedding"]
            for t in tracks
            if t["video_id"] == r.video_id and t["t_last"] >= r.start_s and t["t_first"] <= r.end_s
        ]
        out[r.id] = np.asarray(embs, dtype=np.float32).reshape(-1, store.dim)
    return out


def _vid(i: int) -> str:
    return S.make_id("ctx-test", i)


def build(path: Path, dim: int = DIM, seed: int = 0) -> tuple[Store, list[dict[str, Any]], list[dict[str, Any]]]:
    """Frames at ~1 fps with jitter, some exactly on or within 1e-6 of a 4 s boundary; tracks of mixed spans;
    both written in three commits whose rows interleave the videos. Video 4 has no tracks."""
    rng = np.random.default_rng(seed)
    store = Store(str(path), dim)
    frames, tracks = [], []
    for v in range(N_VIDEOS):
        times = [i + (0.0 if i % 4 == 0 else float(rng.uniform(-0.3, 0.3))) for i in range(1, 30)]
        times += [4.0 + 5e-7, 8.0 - 5e-7, 12.0 + 2e-6, 16.0 - 2e-6, 0.0]
        for j, t in enumerate(times):
            frames.append(
                {"frame_id": S.make_id(_vid(v), "frame", j), "video_id": _vid(v), "t": t, "frame_idx": j,
                 "embedding": rng.standard_normal(dim).astype(np.float32).tolist(), "boxes": [], "class_names": []}
            )  # fmt: skip
        for j in range(0 if v == 4 else 7):
            t0 = float(rng.uniform(0, 28))
            t1 = t0 + float(rng.choice([0.0, 0.5, 3.0, 9.0]))
            tracks.append(
                {"track_id": S.make_id(_vid(v), "track", j), "video_id": _vid(v), "tracker_id": j, "class_name": "a",
                 "conf_mean": 0.5, "t_first": t0, "t_last": t1, "duration_s": t1 - t0, "n_obs": 2, "trajectory": [],
                 "embedding": rng.standard_normal(dim).astype(np.float32).tolist(), "best_t": t0,
                 "best_box": [0.0, 0.0, 1.0, 1.0], "thumb_id": ""}
            )  # fmt: skip
    for name, rows in ((S.FRAMES, frames), (S.TRACKS, tracks)):
        order = rng.permutation(len(rows))
        for part in np.array_split(order, 3):
            store.table(name).add(pa.Table.from_pylist([rows[i] for i in part], schema=S.table_schema(name, dim)))
    return store, frames, tracks


def candidates(frames: list[dict[str, Any]], tracks: list[dict[str, Any]]) -> list[Cand]:
    """Segments (4 s windows, ends on frames), frame hits (start == end) and track hits, from every video."""
    out = [Cand(f"seg-{v}-{w}", _vid(v), 4.0 * w, 4.0 * w + 4.0) for v in range(N_VIDEOS) for w in (0, 1, 3, 6)]
    out += [Cand(f"frame-{i}", f["video_id"], f["t"], f["t"]) for i, f in enumerate(frames[::7])]
    out += [Cand(f"track-{i}", t["video_id"], t["t_first"], t["t_last"]) for i, t in enumerate(tracks[::3])]
    out.append(Cand("nowhere", S.make_id("ctx-test", "no rows"), 2.0, 6.0))
    return out


def assert_same(new: dict[str, np.ndarray], ref: dict[str, np.ndarray], min_rows: int = 100) -> None:
    assert new.keys() == ref.keys()
    for key in ref:
        assert new[key].dtype == np.float32 and new[key].shape == ref[key].shape, key
        assert np.array_equal(new[key], ref[key]), key
    assert sum(len(a) for a in ref.values()) >= min_rows  # the comparison covered real contexts


@pytest.mark.parametrize("indexed", [False, True])
def test_contexts_equal_the_former_lookup(tmp_path: Path, indexed: bool) -> None:
    store, frames, tracks = build(tmp_path / "db")
    if indexed:  # the scalar indexes `maintain` builds on large tables
        for name, cols in ((S.FRAMES, ["video_id", "t"]), (S.TRACKS, ["video_id", "t_first", "t_last"])):
            for col in cols:
                store.table(name).create_index(col, config=BTree())
    cands = candidates(frames, tracks)
    ref = reference_contexts(store, cands)
    assert_same(C.contexts(store, cands), ref)
    assert len(ref["seg-0-1"]) >= 5  # the frame at 4.0 + 5e-7 and the one at exactly 8.0 are in [4, 8]
    assert len(ref["nowhere"]) == 0
    for sub in (cands[:1], cands[3:9], cands[-12:]):  # fewer candidates: a narrower overall span
        assert_same(C.contexts(store, sub), reference_contexts(store, sub), min_rows=1)


def test_contexts_retry_when_the_table_changes_between_keys_and_take(tmp_path: Path, monkeypatch) -> None:
    """A compaction between the key query and the take moves rows (row ids change); the lookup starts over."""
    store, frames, tracks = build(tmp_path / "db")
    cands = candidates(frames, tracks)
    ref = reference_contexts(store, cands)
    real_keys, calls = C._keys, []

    def keys_then_compact(table: Any, src: Any, spans: Any) -> dict[str, Any]:
        out = real_keys(table, src, spans)
        calls.append(src.table)
        if calls.count(S.FRAMES) == 1 and src.table == S.FRAMES:
            table.delete(f"video_id = '{_vid(0)}'")  # deleted rows and a compaction renumber the rest
            table.add(pa.Table.from_pylist([r for r in frames if r["video_id"] == _vid(0)], schema=table.schema))
            table.optimize()
        return out

    monkeypatch.setattr(C, "_keys", keys_then_compact)
    got = C.contexts(store, cands)
    assert sorted(calls) == [S.FRAMES, S.FRAMES, S.TRACKS]  # the frames lookup ran twice
    assert got.keys() == ref.keys()
    for c in cands:  # video 0's frames were re-added in another order: same rows; every other context unchanged
        if c.video_id != _vid(0):
            assert np.array_equal(got[c.id], ref[c.id]), c.id
        else:
            assert sorted(map(tuple, got[c.id].tolist())) == sorted(map(tuple, ref[c.id].tolist())), c.id


class _FixedEncoder:
    """A query encoder with a known output, so two searches differ only in how contexts are fetched."""

    def __init__(self, dim: int) -> None:
        rng = np.random.default_rng(3)
        self.tokens = rng.standard_normal((6, dim)).astype(np.float32)

    def encode_text_query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        pooled = self.tokens.mean(axis=0)
        return pooled / np.linalg.norm(pooled), self.tokens


def test_search_results_identical_to_the_former_lookup(tmp_path: Path, monkeypatch) -> None:
    """Whole ``Searcher.search`` with the attention re-rank: same ranks, ids and scores to the last bit."""
    cfg = tiny_config(tmp_path / "db")
    dim = 16  # the searcher reads the width from the store; the fixed encoder below matches it
    store, frames, _ = build(tmp_path / "db", dim=dim, seed=1)
    segs, rng = [], np.random.default_rng(2)
    for v in range(N_VIDEOS):
        for w in range(7):
            segs.append(
                {"segment_id": f"seg-{v}-{w}", "video_id": _vid(v), "start_s": 4.0 * w, "end_s": 4.0 * w + 4.0,
                 "n_frames": 4, "embedding": rng.standard_normal(dim).astype(np.float32).tolist(),
                 "thumb_id": frames[v * 34 + w]["frame_id"], "class_names": []}
            )  # fmt: skip
    store.table(S.SEGMENTS).add(pa.Table.from_pylist(segs, schema=S.segments_schema(dim)))
    videos = [
        {"video_id": _vid(v), "fingerprint": str(v), "path": f"/v/{v}.mp4", "size_bytes": 1, "duration_s": 30.0,
         "fps": 30.0, "n_frames": 900, "width": 64, "height": 64, "rotation": 0, "backend": "x", "n_samples": 30,
         "status": S.STATUS_COMPLETE, "pipeline_version": "t", "run_id": "", "indexed_at": None}
        for v in range(N_VIDEOS)
    ]  # fmt: skip
    store.table(S.VIDEOS).add(pa.Table.from_pylist(videos, schema=S.videos_schema()))
    searcher = Searcher(store, cfg, encoder=_FixedEncoder(dim))  # type: ignore[arg-type]

    def run() -> list[SearchResult]:
        return searcher.search(text="a dog", k=5, rerank="attention")

    new = run()
    monkeypatch.setattr("pipeline.search.searcher.span_contexts", reference_contexts)
    old = run()
    assert [(r.id, r.score, r.stage1_score) for r in new] == [(r.id, r.score, r.stage1_score) for r in old]
    assert any(r.score != r.stage1_score for r in new) and all(math.isfinite(r.score) for r in new)
