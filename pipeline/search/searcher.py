"""Search: text or image -> encoder -> LanceDB vector search over segments | frames | tracks (stage 1,
over-fetching ``k * overfetch``) -> fusion re-rank (stage 2) -> typed results. Level ``speech`` searches what is
said, by words (``pipeline/search/speech.py``): utterance hits with their text and the matched words.

Filters (``pipeline/search/filters.py``) apply in every mode and level. Only rows of videos marked ``complete`` are
returned.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal, cast

import numpy as np

from operators.encoders import OpenClipEncoder, build_encoder, embedding_dim
from operators.rerank import RERANKERS, Query, RerankInput, build_reranker
from operators.text_embed import TextEmbedder
from pipeline.config import Config
from pipeline.errors import SearchError
from pipeline.search.contexts import contexts as span_contexts
from pipeline.search.filters import Filters, compile_filters, parse_filters
from pipeline.search.hybrid import Mode, caption_stage1, check_mode
from pipeline.search.images import load_image
from pipeline.search.meaning import VectorColumns, dense_ranking
from pipeline.search.results import SHOT_COLUMNS, Box, SearchResult
from pipeline.search.speech import SPEECH_LEVEL, SpeechSearcher, speech_results
from pipeline.search.text import TextSearchConfig, TextSearcher
from pipeline.store import schema as S
from pipeline.store.db import Store, in_list, quote
from pipeline.store.schema import Level

#: The levels searched by their words and meaning, whose default mode is hybrid (the others': vector).
TEXT_LEVELS = (S.SPEECH, S.TEXTS)
FRAME_TEXT = "text_lines"  # frames: the lines of on-screen text read on the frame
#: Per level: the columns stage 1 reads, those ``Searcher._result`` builds a result from.
RESULT_COLUMNS: dict[str, list[str]] = {
    "segments": ["segment_id", "video_id", "start_s", "end_s", "thumb_id"],
    "frames": ["frame_id", "video_id", "t", "boxes"],
    "tracks": [
        "track_id",
        "video_id",
        "t_first",
        "t_last",
        "thumb_id",
        "class_name",
        "trajectory",
        "best_box",
        "conf_mean",
    ],
}


def default_mode(level: str) -> Mode:
    """The mode a search at ``level`` gets when it names none: hybrid at the text levels, vector elsewhere."""
    return "hybrid" if level in TEXT_LEVELS else "vector"


class Searcher:
    """Search over the database at ``db`` with the encoder and search settings of ``config``."""

    def __init__(self, db: str | Store, config: Config, encoder: OpenClipEncoder | None = None) -> None:
        self.cfg = config
        self.store = db if isinstance(db, Store) else Store(db, embedding_dim(config.encoder))
        self.encoder = encoder
        self._text_embedder: TextEmbedder | None = None
        self.vectors = VectorColumns()  # which text-vector columns hold vectors of the query model
        self._rerankers: dict[str, Any] = {}
        self._shot_levels: set[str] = set()  # levels whose table has the shot columns (they are never dropped)

    # -- inputs ---------------------------------------------------------------------------------------------
    def _encoder(self) -> OpenClipEncoder:
        if self.encoder is None:
            self.encoder = build_encoder(self.cfg.encoder)
            self.encoder.setup()
        return self.encoder

    def text_embedder(self) -> TextEmbedder | None:
        """The sentence embedder of the config's ``text_embed`` model (loaded on its first query), or None when
        text embedding is off."""
        if not self.cfg.text_embed.enabled:
            return None
        if self._text_embedder is None:
            self._text_embedder = TextEmbedder(self.cfg.text_embed)
        return self._text_embedder

    def speech_searcher(self) -> SpeechSearcher:
        return SpeechSearcher(self.store, self.text_embedder(), self.vectors, self.cfg.maintenance)

    def texts_searcher(self, cfg: TextSearchConfig | None = None) -> TextSearcher:
        """The on-screen text searcher (level ``texts``), with this searcher's query embedder."""
        return TextSearcher(self.store, cfg, self.text_embedder(), self.vectors, self.cfg.maintenance)

    def embed_query(self, text: str | None, image: Any) -> Query:
        if (text is None) == (image is None):
            raise SearchError("give exactly one of a text query or an image")
        if text is not None:  # checked before the encoder loads, so a bad request is refused at once
            self._check_text(text)
            enc = self._encoder()
            pooled, tokens = enc.encode_text_query(text)  # one pass of the text tower gives both
            return Query(pooled, tokens, text=text)
        rgb = load_image(image)
        emb = self._encoder().encode_images([rgb])[0]
        return Query(emb, emb[None], image=rgb)

    def _check_text(self, text: Any) -> None:
        if not isinstance(text, str):
            raise SearchError(f"the query text must be a string, not {type(text).__name__}")
        if not text.strip():
            raise SearchError("the query text is empty")
        if len(text) > self.cfg.search.max_query_chars:
            raise SearchError(f"the query is longer than {self.cfg.search.max_query_chars} characters")

    # -- search ---------------------------------------------------------------------------------------------
    def search(
        self,
        text: str | None = None,
        image: Any = None,
        k: int = 10,
        level: Level | Literal["speech"] = "segments",
        filters: Filters | dict[str, Any] | None = None,
        rerank: str | None | Literal["default"] = "default",
        mode: Mode | None = None,
    ) -> list[SearchResult]:
        """``mode``: ``vector`` (embedding search), ``text`` (full-text over captions, on-screen text and speech)
        or ``hybrid`` (both, fused by reciprocal rank; ``pipeline/search/hybrid.py``); None: the level's default
        (``default_mode``). The filters and the re-ranker apply in every mode. Level ``speech`` is searched by its
        words and their meaning (``pipeline/search/speech.py``)."""
        mode = default_mode(level) if mode is None else mode
        if level == SPEECH_LEVEL:
            if isinstance(text, str):
                self._check_text(text)
            return speech_results(
                self.store, text, image, k, filters, rerank, mode, self.cfg.search.max_k, self.speech_searcher(),
                self.cfg.search.rrf_k,
            )  # fmt: skip
        level = cast(Level, level)
        if level not in S.LEVELS:
            raise SearchError(f"level must be one of {', '.join([*S.LEVELS, SPEECH_LEVEL])}")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.cfg.search.max_k:
            raise SearchError(f"k must be an integer from 1 to {self.cfg.search.max_k}")
        filters = parse_filters(filters)
        reranker = S.rerank_choice(rerank, self.cfg.search.rerank)
        if reranker is not None and (not isinstance(reranker, str) or reranker not in RERANKERS):
            raise SearchError(f"unknown re-ranker '{str(reranker)[:60]}'; choose one of {', '.join(RERANKERS)} or none")
        try:
            check_mode(mode, level, text, image)
        except SearchError as exc:
            raise SearchError(str(exc)) from None
        if mode == "text" and reranker is None:  # words only: the encoder is not needed
            self._check_text(text)
            query = Query(np.zeros(0, np.float32), np.zeros((0, 0), np.float32), text=text)
        else:
            query = self.embed_query(text, image)
        complete = self.store.rows(S.VIDEOS, f"status = {quote(S.STATUS_COMPLETE)}", ["video_id", "path"])
        videos = dict(zip(complete.column("video_id").to_pylist(), complete.column("path").to_pylist(), strict=True))
        if not videos or not self.store.exists(level):
            return []
        where = compile_filters(filters, level, videos)
        fetch = k * self.cfg.search.overfetch if reranker else k
        if mode == "vector":
            rows = [r for r in self.stage1(query.embedding, level, fetch, where).to_pylist() if r["video_id"] in videos]
            results = [self._result(level, r, videos[r["video_id"]]) for r in rows]
        else:
            results = self._caption_stage1(mode, query, level, fetch, k * self.cfg.search.overfetch, where, videos)
        if reranker and results:
            results = self._rerank(reranker, query, level, results)
        if filters is not None and filters.min_score is not None:
            results = [r for r in results if r.score >= filters.min_score]
        results = results[:k]
        self._attach_boxes(level, results)
        self._attach_captions(level, results)
        self._attach_frame_text(level, results)
        for i, r in enumerate(results):
            r.rank = i + 1
        return results

    def stage1(self, embedding: np.ndarray, level: Level, fetch: int, where: str | None = None) -> Any:
        """The ``fetch`` rows of ``level`` nearest to ``embedding`` (cosine; prefiltered by ``where``) as an Arrow
        table of the ``RESULT_COLUMNS`` of ``level`` and ``_distance``. The vector index parameters are the
        configured ones (``maintenance.nprobes``/``ef``/``refine_factor``; exact search ignores them)."""
        m = self.cfg.maintenance
        q = self.store.table(level).search(embedding.tolist(), vector_column_name="embedding").distance_type("cosine")
        q = q.nprobes(m.nprobes)
        if m.ef:
            q = q.ef(m.ef)
        if m.refine_factor:
            q = q.refine_factor(m.refine_factor)
        if where:
            q = q.where(where, prefilter=True)
        # only what a result is built from: reading the 50 rows' other columns cost as much CPU as the ANN itself
        # (BENCHMARKS.md item 4); `_distance` is named because lance warns on every query that implies it
        return q.select([*RESULT_COLUMNS[level], *self._shot_columns(level), "_distance"]).limit(fetch).to_arrow()

    def _shot_columns(self, level: str) -> list[str]:
        """The segment shot columns, when the table has them (a table indexed before shots lacks them until
        ``Store.migrate``); the check is cached once they are there."""
        if level != S.SEGMENTS:
            return []
        if level not in self._shot_levels and set(SHOT_COLUMNS) <= set(self.store.table(level).schema.names):
            self._shot_levels.add(level)
        return list(SHOT_COLUMNS) if level in self._shot_levels else []

    def _caption_stage1(
        self, mode: Mode, query: Query, level: Level, fetch: int, depth: int, where: str | None, videos: dict[str, str]
    ) -> list[SearchResult]:
        """Stage 1 of ``text`` and ``hybrid`` mode (``pipeline/search/hybrid.py``); scores in [0, 1], best 1."""
        try:
            pairs = caption_stage1(
                mode,
                self.store.table(level),
                str(query.text),
                RESULT_COLUMNS[level],
                fetch,
                depth,
                where,
                vector=lambda n: self.stage1(query.embedding, level, n, where).to_pylist(),
                keep=lambda r: r["video_id"] in videos,
                rrf_k=self.cfg.search.rrf_k,
                dense=self._dense_legs(mode, level, str(query.text), where),
            )
        except SearchError as exc:
            raise SearchError(str(exc)) from None
        results = []
        for r, score in pairs:
            res = self._result(level, {**r, "_distance": 0.0}, videos[r["video_id"]])
            res.score = res.stage1_score = score
            results.append(res)
        return results

    def _dense_legs(
        self, mode: Mode, level: Level, text: str, where: str | None
    ) -> tuple[Callable[[int], list[dict[str, Any]]], ...]:
        """Hybrid's rankings by meaning at ``level``: one per text-vector column holding vectors of the query
        model (none in text mode, or without a text embedder)."""
        embedder = self.text_embedder() if mode == "hybrid" else None
        if embedder is None:
            return ()
        table = self.store.table(level)
        model = embedder.model_id
        columns = [v.column for v in S.text_vectors(level) if self.vectors.has(table, level, v.column, model)]
        if not columns:
            return ()
        vec = embedder.query(text)
        return tuple(partial(self._dense, table, col, vec, model, RESULT_COLUMNS[level], where) for col in columns)

    def _dense(
        self, table: Any, column: str, vec: np.ndarray, model: str, columns: list[str], where: str | None, n: int
    ) -> list[dict[str, Any]]:
        return dense_ranking(table, column, vec, model, columns, n, where, self.cfg.maintenance)

    def _result(self, level: str, r: dict[str, Any], path: str) -> SearchResult:
        score = 1.0 - float(r["_distance"])
        common = {
            "rank": 0,
            "level": level,
            "video_id": r["video_id"],
            "path": path,
            "score": score,
            "stage1_score": score,
        }
        if level == "frames":
            boxes = [
                Box(b["class_name"], [b["x1"], b["y1"], b["x2"], b["y2"]], b["track_id"], b["conf"])
                for b in r["boxes"] or []
            ]
            return SearchResult(
                id=r["frame_id"], start_s=r["t"], end_s=r["t"], thumb_id=r["frame_id"], boxes=boxes, **common
            )
        if level == "segments":
            return SearchResult(
                id=r["segment_id"], start_s=r["start_s"], end_s=r["end_s"], thumb_id=r["thumb_id"], **common
            ).with_shot(r)
        b = r["best_box"]
        return SearchResult(
            id=r["track_id"],
            start_s=r["t_first"],
            end_s=r["t_last"],
            thumb_id=r["thumb_id"],
            class_name=r["class_name"],
            trajectory=r["trajectory"],
            boxes=[Box(r["class_name"], list(b), r["track_id"], r["conf_mean"])],
            **common,
        )

    def _attach_boxes(self, level: str, results: list[SearchResult]) -> None:
        """Segment hits show the boxes of their keyframe (the frame their thumbnail comes from)."""
        if level != "segments" or not results:
            return
        rows = self.store.rows(S.FRAMES, in_list("frame_id", [r.thumb_id for r in results]), ["frame_id", "boxes"])
        by_id = {r["frame_id"]: r["boxes"] or [] for r in rows.to_pylist()}
        for r in results:
            r.boxes = [
                Box(b["class_name"], [b["x1"], b["y1"], b["x2"], b["y2"]], b["track_id"], b["conf"])
                for b in by_id.get(r.thumb_id, [])
            ]

    def _attach_captions(self, level: str, results: list[SearchResult]) -> None:
        """Segment hits carry their caption, on-screen text and speech (one read of the hits' rows; tables from before
        these columns have none)."""
        if level != "segments" or not results:
            return
        columns = [c for c in ("caption", "screen_text", "speech") if c in self.store.table(S.SEGMENTS).schema.names]
        if not columns:
            return
        ids = [r.id for r in results]
        rows = self.store.rows(S.SEGMENTS, in_list("segment_id", ids), ["segment_id", *columns]).to_pylist()
        by_id = {r["segment_id"]: r for r in rows}
        for r in results:
            row = by_id.get(r.id, {})
            r.caption, r.screen_text, r.text = row.get("caption"), row.get("screen_text"), row.get("speech")

    def _attach_frame_text(self, level: str, results: list[SearchResult]) -> None:
        """Frame hits carry the lines of text read on the frame in ``screen_text`` (one read of the hits' rows;
        tables from before ``frames.text_lines`` have none until ``Store.migrate``, and then only nulls)."""
        if level != S.FRAMES or not results or FRAME_TEXT not in self.store.table(S.FRAMES).schema.names:
            return
        rows = self.store.rows(S.FRAMES, in_list("frame_id", [r.id for r in results]), ["frame_id", FRAME_TEXT])
        by_id = {r["frame_id"]: r[FRAME_TEXT] or [] for r in rows.to_pylist()}
        for r in results:
            lines = (" ".join(str(line["text"]).split()) for line in by_id.get(r.id, []))
            r.screen_text = "\n".join(line for line in lines if line) or None

    # -- stage 2 --------------------------------------------------------------------------------------------
    def reranker(self, name: str) -> Any:
        if name not in self._rerankers:
            rr = build_reranker(name, self.cfg.search.rerankers.get(name))
            rr.setup()
            self._rerankers[name] = rr
        return self._rerankers[name]

    def _rerank(self, name: str, query: Query, level: str, results: list[SearchResult]) -> list[SearchResult]:
        rr = self.reranker(name)
        contexts = span_contexts(self.store, results) if getattr(rr, "needs_context", True) else {}
        # Image-text re-rankers read every candidate's keyframe: fetch the thumbnails in one query, not one each.
        jpegs = self._thumbnails([r.thumb_id for r in results]) if getattr(rr, "needs_keyframes", False) else None
        inputs = [
            RerankInput(
                r.stage1_score,
                contexts.get(r.id, np.zeros((0, len(query.embedding)), np.float32)),
                keyframe=self._keyframe_loader(r.thumb_id, jpegs),
            )
            for r in results
        ]
        w = self.cfg.search.rerank_weight
        for r, s in zip(results, rr.score(query, inputs), strict=True):
            r.score = (1 - w) * r.stage1_score + w * float(s)
        return sorted(results, key=lambda r: -r.score)

    def _keyframe_loader(self, thumb_id: str, jpegs: dict[str, bytes] | None = None) -> Any:
        def load() -> Any:
            jpeg = jpegs.get(thumb_id) if jpegs is not None else self.thumbnail(thumb_id)
            return load_image(jpeg) if jpeg else None

        return load

    def _thumbnails(self, thumb_ids: list[str]) -> dict[str, bytes]:
        rows = self.store.rows(S.THUMBNAILS, in_list("thumb_id", sorted(set(thumb_ids))), ["thumb_id", "jpeg"])
        return {r["thumb_id"]: r["jpeg"] for r in rows.to_pylist()}

    # -- media ----------------------------------------------------------------------------------------------
    def thumbnail(self, thumb_id: str) -> bytes | None:
        rows = self.store.rows(S.THUMBNAILS, f"thumb_id = {quote(thumb_id)}", ["jpeg"])
        return rows.column("jpeg")[0].as_py() if rows.num_rows else None
