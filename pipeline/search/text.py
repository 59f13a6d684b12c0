"""Full-text search over on-screen text spans (the ``texts`` table), tolerant of OCR errors.

Two stages, like the vector search:

1. LanceDB's native full-text index proposes candidates (``limit = k * overfetch``), with the filters applied
   before the search (``prefilter``). ``tokenizer: ngram`` indexes character trigrams, so a query still shares
   most of its n-grams with a misread or word-merged line ("GATE7CLOSED"); ``tokenizer: word`` indexes words
   and matches each query word within ``fuzziness`` edits. Rows written after the index was built are searched
   too (LanceDB scans the unindexed part), so a writer need not rebuild it after each commit.
2. Candidates are re-scored by how well the query matches inside the span's text: the smallest edit distance
   between the normalised query and any substring of the normalised text (case, accents and spaces removed),
   as a similarity in [0, 1]; ties go to the line the query covers more of, then to the index score.

By meaning: each span's sentence embedding (``text_vector``) is searched too, in ``vector`` mode alone and in
``hybrid`` mode (the default) fused with the word ranking, the query as written on screen first
(``pipeline/search/meaning.py``).

Only spans of videos marked ``complete`` are returned, so a run in progress or a crashed one is never visible.
``benchmarks/ocr.py`` and ``evaluate --manifest eval/ocr_text.yaml`` measure the two tokenizers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from operators.base import StrictModel
from operators.text_spans import normalise
from pipeline.search.filters import Filters, parse_word_query
from pipeline.search.meaning import TextLevel, fuse_text_level
from pipeline.store import schema as S
from pipeline.store.db import Store, in_list
from pipeline.store.fts import Tokenizer, ensure_text_index

EXACT = 0.999  # a word hit this similar is the query written on screen (hybrid ranks it first)
#: What a hit is built from.
HIT_COLUMNS = [
    "text_id", "video_id", "text", "start_s", "end_s", "best_t", "box", "thumb_id", "conf_mean", "trajectory",
]  # fmt: skip


class TextSearchConfig(StrictModel):
    tokenizer: Tokenizer = "ngram"
    fuzziness: int = 1  # edits per query word (word tokenizer only)
    overfetch: int = 10  # candidates per requested hit for the re-scoring stage
    min_similarity: float = 0.6  # hits whose best substring match is below this are dropped
    max_query_chars: int = 200


@dataclass
class TextHit:
    rank: int
    text_id: str
    video_id: str
    path: str
    text: str
    start_s: float
    end_s: float
    best_t: float
    box: list[float]  # normalised x1, y1, x2, y2 on the thumbnail ``thumb_id`` (taken at ``best_t``)
    thumb_id: str
    conf: float
    # text mode: substring similarity of the query in the text, 0..1; vector: cosine similarity; hybrid: the
    # fused reciprocal-rank score (1: first in both rankings)
    score: float
    index_score: float
    trajectory: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def substring_distance(query: str, text: str) -> int:
    """Fewest edits turning ``query`` into some substring of ``text`` (Sellers' approximate matching)."""
    prev = [0] * (len(text) + 1)  # a match may start anywhere in the text at no cost
    for i, qc in enumerate(query, 1):
        cur = [i]
        for j, tc in enumerate(text, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (qc != tc)))
        prev = cur
    return min(prev)


def match_score(query_key: str, text: str, floor: float = 0.0) -> tuple[float, float]:
    """(substring similarity, coverage) of a normalised query in a span's text. With ``floor``, a text that
    cannot reach it scores (0, 0) without the edit distance: a query character the text has fewer of costs an
    edit each, so their count bounds the distance from below (most candidates of a long query fail here)."""
    key = normalise(text)
    if not query_key or not key:
        return 0.0, 0.0
    if floor > 0 and sum((Counter(query_key) - Counter(key)).values()) > (1.0 - floor) * len(query_key):
        return 0.0, 0.0
    sim = 1.0 - substring_distance(query_key, key) / len(query_key)
    return max(0.0, sim), min(1.0, len(query_key) / len(key))


def _where(filters: Filters | None, videos: dict[str, str]) -> str | None:
    """The prefilter for ``filters``; video ids are listed only when a filter restricts them (the complete-video
    restriction is applied to the candidates, as in ``pipeline.search.searcher``)."""
    import fnmatch

    if filters is None:
        return None
    parts = []
    if filters.video_ids is not None or filters.path_glob is not None:
        ids = set(videos) if filters.video_ids is None else set(filters.video_ids) & set(videos)
        if filters.path_glob is not None:
            ids = {v for v in ids if fnmatch.fnmatchcase(videos[v], filters.path_glob)}
        parts.append(in_list("video_id", sorted(ids)) if ids else "false")
    if filters.time_range is not None:
        a, b = filters.time_range
        parts.append(f"end_s >= {float(a)!r} AND start_s <= {float(b)!r}")
    return " AND ".join(f"({p})" for p in parts) if parts else None


class TextSearcher(TextLevel):
    """Search the ``texts`` table of the database at ``db`` by words, by meaning, or both (``mode``; see
    ``pipeline/search/meaning.py``, ``TextLevel`` for the other arguments; the word ranking is the two stages
    above, tuned by ``cfg``)."""

    table_name = S.TEXTS
    level = "texts"

    def __init__(
        self,
        db: str | Store,
        cfg: TextSearchConfig | None = None,
        embedder: Any = None,
        vectors: Any = None,
        index: Any = None,
    ) -> None:
        super().__init__(db, embedder, vectors, index)
        self.cfg = cfg or TextSearchConfig()

    def search(
        self,
        text: str,
        k: int = 10,
        filters: Filters | dict[str, Any] | None = None,
        mode: str = "hybrid",
        rrf_k: int = 60,
    ) -> list[TextHit]:
        parsed = parse_word_query(text, k, self.cfg.max_query_chars, filters, "on-screen text")
        dense = self.uses_meaning(mode)
        videos = self.complete_videos()
        if not videos or not self.store.exists(S.TEXTS):
            return []
        table = self.store.table(S.TEXTS)
        where = _where(parsed, videos)
        fetch = k * self.cfg.overfetch
        scored = [] if mode == "vector" else self._words(table, text, fetch, where, videos)
        if not dense:
            picked = [(s[0], s, r) for s, r in scored]
        else:
            near = self.nearest(table, text, HIT_COLUMNS, fetch, where)
            near = [{**r, "_sim": (0.0, 0.0, float(r["_score"]))} for r in near if r["video_id"] in videos]
            if mode == "vector":
                picked = [(float(r["_score"]), (float(r["_score"]), 0.0, float(r["_score"])), r) for r in near]
            else:
                said = [{**r, "_sim": s} for s, r in scored]
                fused = fuse_text_level(said, near, "text_id", lambda r: r["_sim"][0] >= EXACT, rrf_k)
                picked = [(score, r["_sim"], r) for r, score in fused]
        if parsed is not None and parsed.min_score is not None:
            picked = [x for x in picked if x[0] >= parsed.min_score]
        hits = enumerate(picked[:k])
        return [self._hit(i + 1, (score, s[1], s[2]), r, videos[r["video_id"]]) for i, (score, s, r) in hits]

    def _words(
        self, table: Any, text: str, fetch: int, where: str | None, videos: dict[str, str]
    ) -> list[tuple[tuple[float, float, float], dict[str, Any]]]:
        """The word ranking, best first: ((similarity, coverage, index score), row) of each candidate kept."""
        if table.count_rows() == 0:  # no text was read (OCR off): nothing to index or find
            return []
        ensure_text_index(table, self.cfg.tokenizer)
        rows = self._candidates(table, text, fetch, where)
        key = normalise(text)
        scored = []
        for r in rows:
            if r["video_id"] not in videos:  # belt and braces: the where clause already restricts to them
                continue
            sim, cover = match_score(key, r["text"], self.cfg.min_similarity)
            if sim >= self.cfg.min_similarity:
                scored.append(((sim, cover, float(r["_score"])), r))
        scored.sort(key=lambda x: x[0], reverse=True)
        return scored

    def _candidates(self, table: Any, text: str, limit: int, where: str | None) -> list[dict[str, Any]]:
        if self.cfg.tokenizer == "ngram":
            query: Any = text
        else:
            from lancedb.query import MatchQuery

            query = MatchQuery(text, "text", fuzziness=self.cfg.fuzziness)  # type: ignore[call-arg]
        q = table.search(query, query_type="fts", fts_columns="text" if isinstance(query, str) else None)
        if where:
            q = q.where(where, prefilter=True)
        return q.limit(limit).to_list()  # type: ignore[no-any-return]

    @staticmethod
    def _hit(rank: int, score: tuple[float, float, float], r: dict[str, Any], path: str) -> TextHit:
        return TextHit(
            rank=rank,
            text_id=r["text_id"],
            video_id=r["video_id"],
            path=path,
            text=r["text"],
            start_s=r["start_s"],
            end_s=r["end_s"],
            best_t=r["best_t"],
            box=[float(v) for v in r["box"]],
            thumb_id=r["thumb_id"],
            conf=float(r["conf_mean"]),
            score=score[0],
            index_score=score[2],
            trajectory=r["trajectory"] or [],
        )
