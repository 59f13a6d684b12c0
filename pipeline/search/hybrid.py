"""Full-text and hybrid search over segment captions, on-screen text and speech: the stage 1 of ``Searcher.search`` in
``text`` and ``hybrid`` mode (``vector`` mode is the embedding search of ``pipeline/search/searcher.py``).

- **Index**: LanceDB's native inverted index ``caption_fts`` on ``segments.caption``, built by ``maintain``
  (``pipeline/store/maintenance.py``), declared with every full-text index in ``pipeline/store/fts.py``. Captions are
  generated English sentences ("a man riding a bike down a street"), so the tokenizer splits words, lower-cases,
  folds accents, drops English stop words and stems (Snowball): "dogs" finds "a dog runs", "riding" finds "a
  woman rides". ``benchmarks/hybrid.py`` measures the choice against unstemmed words and character trigrams.
  Rows added after the build are searched too (LanceDB scans the unindexed part) until ``maintain`` folds them
  in with ``optimize()``.
- **On-screen text**: ``segments.screen_text`` (the OCR lines read on the segment's frames) has its own index
  ``screen_text_fts`` of character trigrams, as the ``texts`` level's (OCR drops, merges and misreads characters:
  "GATE7CL0SED" still shares most trigrams with "gate 7 closed"). Its candidates are re-scored by the query's
  approximate match inside a line (``screen_ranking``), so a sentence that merely shares trigrams with a sign is
  not a hit. ``maintain`` builds the index once some segment has screen text.
- **Speech**: ``segments.speech`` (the words spoken in the segment's span) has its own index
  ``segment_speech_fts`` (stemmed words, stop words kept, positions); its ranking puts the segments that hold the
  query as a phrase first, then BM25 (``pipeline/search/speech.py``, ``word_candidates``). ``maintain`` builds the
  index once some segment has speech.
- **text** mode: the query's words as a ``MatchQuery`` (any word may match; BM25), never parsed as query syntax,
  so quotes, ``AND`` or ``:`` in a query are words, not operators. Score: BM25 divided by the best candidate's,
  so the top hit scores 1 (BM25 has no fixed range and the fusion re-rankers add a score in [-1, 1]).
  With screen text or speech too, the word rankings that found something are fused by RRF (below).
- **hybrid** mode: the vector ranking (``Searcher.stage1``, exactly vector mode's), the word rankings
  (caption, then screen text, then speech, each where its index exists) and the rankings by meaning (the
  sentence embeddings of the captions, on-screen text and speech, each where the database holds vectors of the
  query model; ``pipeline/search/meaning.py``), each ``k * search.overfetch`` deep and prefiltered by the same
  ``where``, fused by reciprocal-rank fusion: ``rrf(d) = sum over the lists containing d of
  1 / (rrf_k + rank)``, reported scaled by ``(rrf_k + 1) / n_lists`` so a segment first in every list scores 1.
  Ties go to the vector ranking's order, then the caption ranking's, then the screen text's, then speech's.

Why RRF is computed here rather than by LanceDB's ``query_type="hybrid"`` with ``RRFReranker``: that builder
applies one ``select`` to both legs, so neither ``_distance`` nor ``_score`` can be named (lance then logs a
deprecation warning per leg on every query), and its vector leg would not be ``Searcher.stage1`` (the vector
index parameters, the column projection measured in BENCHMARKS.md). The formula and the tie order are
``RRFReranker``'s (its default K is 60, ours too): ``tests/test_hybrid.py`` checks the fused ranks against an
independent computation and against LanceDB's hybrid query, and ``benchmarks/hybrid.py`` found the same top 10
in the same order at the same CPU cost. The text ranking runs in a thread beside the vector one, as there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast

from operators.text_spans import normalise
from pipeline.errors import SearchError
from pipeline.search.fusion import fuse
from pipeline.search.speech import evidence, match_words, tokens, word_candidates
from pipeline.search.text import match_score
from pipeline.store import schema as S
from pipeline.store.fts import CAPTION_FTS, SCREEN_FTS, SEGMENT_SPEECH_FTS, WORD_INDEXES

Mode = Literal["vector", "text", "hybrid"]
MODES: tuple[str, ...] = ("vector", "text", "hybrid")
CAPTION_COLUMN = CAPTION_FTS.column
SCREEN_COLUMN = SCREEN_FTS.column
SPEECH_COLUMN = SEGMENT_SPEECH_FTS.column
#: The levels whose rows carry a caption (and so a caption index).
CAPTION_LEVELS: tuple[str, ...] = (S.SEGMENTS,)


def check_modes(modes: list[str] | None) -> list[Mode]:
    """A list of search modes validated (default ``["vector"]``), duplicates dropped, order kept."""
    from pipeline.errors import ConfigError

    unique = list(dict.fromkeys(modes or ["vector"]))
    bad = [m for m in unique if m not in MODES]
    if bad:
        raise ConfigError(f"unknown search mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    return cast(list[Mode], unique)


def check_mode(mode: str, level: str, text: Any, image: Any) -> None:
    """Refuse a mode that cannot serve the request, before any model loads."""
    if mode not in MODES:
        raise SearchError(f"mode must be one of {', '.join(MODES)}")
    if mode == "vector":
        return
    if level not in CAPTION_LEVELS:
        raise SearchError(
            f"mode '{mode}' searches captions and on-screen text, which only {', '.join(CAPTION_LEVELS)} have; use "
            f"level {CAPTION_LEVELS[0]} or mode vector"
        )
    if image is not None or text is None:
        raise SearchError(f"mode '{mode}' matches the words of a text query; an image needs mode vector")
    try:
        str(text).encode("utf-8")  # the full-text engine takes UTF-8 only (a JSON "\ud800" escape is not)
    except UnicodeEncodeError:
        raise SearchError("the query text must be valid Unicode text") from None


def check_word_indexes(table: Any) -> list[str]:
    """The word-searchable columns of ``table`` (those with a full-text index: caption, screen text), caption
    first; none is an error that names the command fixing it."""
    names = {ix.name for ix in table.list_indices()}
    legs = [ix.column for ix in WORD_INDEXES if ix.name in names]
    if legs:
        return legs
    if CAPTION_COLUMN not in table.schema.names:
        raise SearchError(
            "this database predates segment captions: run `vidsearch maintain` to add the column, then index "
            "with captions on"
        )
    raise SearchError("the segment captions have no full-text index yet: run `vidsearch maintain` to build it")


def text_ranking(table: Any, text: str, columns: list[str], fetch: int, where: str | None) -> list[dict[str, Any]]:
    """The ``fetch`` rows whose caption best matches ``text`` (BM25), best first, prefiltered by ``where``; each
    row holds ``columns`` and ``_score``."""
    from lancedb.query import MatchQuery

    q = table.search(MatchQuery(text, CAPTION_COLUMN), query_type="fts")  # type: ignore[call-arg]
    if where:
        q = q.where(where, prefilter=True)
    return q.select([*columns, "_score"]).limit(fetch).to_list()  # type: ignore[no-any-return]


def screen_ranking(
    table: Any, text: str, columns: list[str], fetch: int, where: str | None, min_similarity: float = 0.6
) -> list[dict[str, Any]]:
    """Up to ``fetch`` rows whose on-screen text holds ``text`` best, prefiltered by ``where``: the n-gram index
    proposes candidates, each is re-scored as the ``texts`` level does (``pipeline/search/text.py``: the query's
    best approximate match inside one of the segment's lines, case, accents and spaces ignored) and kept from
    ``min_similarity``, so a query must be (nearly) written on screen, not merely share trigrams with it. Each row
    holds ``columns`` and ``_score``, the similarity in [0, 1]."""
    from lancedb.query import MatchQuery

    q = table.search(MatchQuery(text, SCREEN_COLUMN), query_type="fts")  # type: ignore[call-arg]
    if where:
        q = q.where(where, prefilter=True)
    rows = q.select([*dict.fromkeys([*columns, SCREEN_COLUMN]), "_score"]).limit(max(50, 4 * fetch)).to_list()
    key = normalise(text)
    scored = []
    for r in rows:
        lines = (r[SCREEN_COLUMN] or "").splitlines()
        sim, cover = max((match_score(key, line, min_similarity) for line in lines), default=(0.0, 0.0))
        if sim >= min_similarity:
            scored.append(((sim, cover, float(r["_score"])), {**r, "_score": sim}))
    scored.sort(key=lambda x: x[0], reverse=True)
    return [r for _, r in scored[:fetch]]


def text_scores(rows: list[dict[str, Any]]) -> list[float]:
    """BM25 scores scaled so the best row scores 1."""
    top = max((float(r["_score"]) for r in rows), default=0.0)
    return [float(r["_score"]) / top if top > 0 else 0.0 for r in rows]


def caption_stage1(
    mode: Mode,
    table: Any,
    text: str,
    columns: list[str],
    fetch: int,
    depth: int,
    where: str | None,
    vector: Callable[[int], list[dict[str, Any]]],
    keep: Callable[[dict[str, Any]], bool],
    rrf_k: int = 60,
    dense: tuple[Callable[[int], list[dict[str, Any]]], ...] = (),
) -> list[tuple[dict[str, Any], float]]:
    """Stage 1 of ``text`` or ``hybrid`` mode: up to ``fetch`` rows, best first, with their score.

    ``columns``: those a result is built from, its key first. ``depth``: how deep each ranking goes before
    fusion (hybrid). ``vector(n)``: the vector ranking, ``n`` deep; ``keep``: whether a row may be returned
    (its video is complete), applied to each ranking before fusion, as vector mode applies it to its own.

    The word rankings are the caption's and the on-screen text's, each where its index exists. ``text`` mode
    with one ranking that found something scores as that ranking does (BM25 over the best, or the on-screen
    similarity); with two, they are fused by ``rrf``. ``hybrid`` fuses the vector ranking with every word
    ranking that has an index (found something or not, so a database's scores do not depend on the query), and
    the ``dense`` rankings (``dense[i](n)``: the segments nearest the query in meaning by one text-vector column,
    ``pipeline/search/meaning.py``); there the speech ranking keeps only segments holding the query as a phrase
    or half its words that are not stop words (``speech.evidence``)."""
    legs = check_word_indexes(table)
    n = fetch if mode == "text" else depth
    rank = {
        CAPTION_COLUMN: lambda: text_ranking(table, text, columns, n, where),
        SCREEN_COLUMN: lambda: screen_ranking(table, text, columns, n, where),
        SPEECH_COLUMN: lambda: _speech_ranking(table, text, columns, n, where, mode == "hybrid"),
    }
    pending = [_pool().submit(rank[leg]) for leg in legs]  # the word rankings run beside the vector one
    meanings = [_pool().submit(leg, depth) for leg in dense] if mode == "hybrid" else []
    vector_rows = vector(depth) if mode == "hybrid" else []
    words = [[r for r in p.result() if keep(r)] for p in pending]
    key = columns[0]
    if mode == "hybrid":
        near = [[r for r in p.result() if keep(r)] for p in meanings]
        return fuse([[r for r in vector_rows if keep(r)], *words, *near], key, rrf_k)[:fetch]
    found = [(leg, rows) for leg, rows in zip(legs, words, strict=True) if rows]
    if len(found) > 1:
        return fuse([rows for _, rows in found], key, rrf_k)[:fetch]
    if not found:
        return []
    leg, rows = found[0]
    scores = [float(r["_score"]) for r in rows] if leg == SCREEN_COLUMN else text_scores(rows)
    return list(zip(rows, scores, strict=True))


def _speech_ranking(
    table: Any, text: str, columns: list[str], n: int, where: str | None, content_only: bool
) -> list[dict[str, Any]]:
    """The segments' speech ranking (phrase first, then BM25); with ``content_only``, only the segments that hold
    the query as a phrase or are evidence for it (``speech.evidence``)."""
    rows = word_candidates(table, SPEECH_COLUMN, text, [*columns, SPEECH_COLUMN], n, where)
    query = tokens(text)
    if not content_only or not query:
        return rows
    out = []
    for r in rows:
        phrase, _, matched = match_words(query, [{"word": w} for w in (r.get(SPEECH_COLUMN) or "").split()])
        if phrase or evidence(query, matched):
            out.append(r)
    return out


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Threads for the text ranking of hybrid searches (LanceDB's hybrid query runs its two legs at once too)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hybrid-text")
        return _POOL
