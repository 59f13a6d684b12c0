"""Re-rank contexts: per stage-1 candidate, the embeddings of the frames in its span and of the tracks alive in
it, fetched by what each candidate needs.

Per table (frames, tracks) three steps, whatever the number of candidates:

1. **keys**: one query on the indexed ``video_id`` column (BTREE, ``pipeline/store/maintenance.py``) for the
   candidates' videos, selecting only the video id, the time columns and the row id: no embeddings, so the
   ~1,000 rows of each 1,000-second video cost a few bytes each;
2. **cut**: per candidate, its rows by its own span, with numpy on the key columns (rows grouped by video
   with one stable sort; no Python loop over rows, no ``to_pylist``);
3. **take**: the embeddings of only the rows some candidate needs (~5 frames and ~2 tracks per 4 s segment),
   by row id in one ``take``, straight into a float32 array.

Row ids are positions in one table version, so steps 1 and 3 must read the same version: a commit in between
(an index run, a compaction) retries the lookup. The rows, and their order, are those of the former lookup
(one query for the candidates' videos over ``[min start, max end]`` of all candidates, cut in Python): each
candidate's context lists its frames in table order, then its tracks in table order, so the re-rank scores
are bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store import schema as S
from pipeline.store.db import Store, in_list

EPS = 1e-6  # frame times are compared with this slack: a frame at a segment's end belongs to its context
RETRIES = 5


class Span(Protocol):
    """What a candidate needs for its context (``SearchResult`` has these)."""

    id: str
    video_id: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class _Source:
    table: str
    first: str  # time column compared with the candidate's end
    last: str  # time column compared with the candidate's start
    eps: float  # slack on both sides


FRAMES = _Source(S.FRAMES, "t", "t", EPS)
TRACKS = _Source(S.TRACKS, "t_first", "t_last", 0.0)


def contexts(store: Store, spans: Sequence[Span]) -> dict[str, npt.NDArray[np.float32]]:
    """Per candidate id: its frames' embeddings (``start - 1e-6 <= t <= end + 1e-6``), then its tracks'
    (``t_last >= start`` and ``t_first <= end``), each in table order, as one ``(n, dim)`` float32 array."""
    if not spans:
        return {}
    sources = [src for src in (FRAMES, TRACKS) if store.exists(src.table)]
    # the two tables at once: LanceDB releases the GIL, so on 2 cores the lookup takes the longer of the two
    with ThreadPoolExecutor(max_workers=len(sources) or 1) as pool:
        parts = list(pool.map(lambda src: _lookup(store, src, spans), sources))
    empty = np.zeros((0, store.dim), np.float32)
    out = {}
    for i, s in enumerate(spans):
        pieces = [p[i] for p in parts if len(p[i])]
        out[s.id] = np.concatenate(pieces) if len(pieces) > 1 else pieces[0] if pieces else empty
    return out


def _lookup(store: Store, src: _Source, spans: Sequence[Span]) -> list[npt.NDArray[np.float32]]:
    table = store.table(src.table)
    for _ in range(RETRIES):
        version = table.version
        keys = _keys(table, src, spans)
        picks = _cut(keys, src, spans)
        embeddings = _take(table, keys["_rowid"], picks, store.dim)
        if embeddings is not None and table.version == version:
            return embeddings
    raise RuntimeError(f"the {src.table} table kept changing while the re-rank context was read")


def _keys(table: Any, src: _Source, spans: Sequence[Span]) -> dict[str, Any]:
    """Step 1: video code (index into the sorted candidate videos), times and row id of every row that may
    belong to some candidate's context."""
    videos = sorted({s.video_id for s in spans})
    # video ids only: the overall span of 50 candidates spread over their videos covers nearly all of each,
    # and a range on the indexed time column made LanceDB intersect with nearly every row id of the table
    # (measured at 4M frames: 89 ms CPU with the range, 33 ms without; BENCHMARKS.md item 5)
    columns = list(dict.fromkeys(["video_id", src.first, src.last]))
    rows = table.search().where(in_list("video_id", videos)).select(columns).with_row_id(True).limit(None).to_arrow()
    code = pc.index_in(rows.column("video_id"), value_set=pa.array(videos, pa.string()))
    return {
        "videos": videos,
        "code": np.asarray(code.to_numpy(zero_copy_only=False), dtype=np.int64),
        "first": rows.column(src.first).to_numpy(),
        "last": rows.column(src.last).to_numpy(),
        "_rowid": rows.column("_rowid").to_numpy(),
    }


def _cut(keys: dict[str, Any], src: _Source, spans: Sequence[Span]) -> list[npt.NDArray[np.int64]]:
    """Step 2: per candidate, the positions (into the key rows, ascending: table order) of its context rows."""
    order = np.argsort(keys["code"], kind="stable")  # grouped by video, table order kept inside each group
    code = keys["code"][order]
    index = {v: i for i, v in enumerate(keys["videos"])}
    want = np.array([index[s.video_id] for s in spans], dtype=np.int64)
    begin = np.searchsorted(code, want, side="left")
    end = np.searchsorted(code, want, side="right")
    first, last = keys["first"][order], keys["last"][order]
    picks = []
    for s, a, b in zip(spans, begin, end, strict=True):
        inside = (last[a:b] >= s.start_s - src.eps) & (first[a:b] <= s.end_s + src.eps)
        picks.append(order[a:b][inside])
    return picks


def _take(
    table: Any, rowids: npt.NDArray[np.uint64], picks: list[npt.NDArray[np.int64]], dim: int
) -> list[npt.NDArray[np.float32]] | None:
    """Step 3: the embeddings of the picked rows, in one take by row id; None if a row is gone (retry)."""
    needed = np.unique(np.concatenate(picks)) if picks else np.zeros(0, np.int64)
    if not len(needed):
        return [np.zeros((0, dim), np.float32) for _ in picks]
    got = table.take_row_ids(rowids[needed].tolist()).select(["embedding"]).with_row_id().to_arrow()
    got_ids = got.column("_rowid").to_numpy()
    if len(got_ids) != len(needed):
        return None
    matrix = got.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    sort = np.argsort(got_ids, kind="stable")
    # position of each needed row's embedding in the take's answer (which comes back in row-id order)
    where = sort[np.searchsorted(got_ids[sort], rowids[needed])]
    if not np.array_equal(got_ids[where], rowids[needed]):
        return None
    slot = np.full(len(rowids), -1, np.int64)
    slot[needed] = where
    return [np.ascontiguousarray(matrix[slot[p]], dtype=np.float32) for p in picks]
