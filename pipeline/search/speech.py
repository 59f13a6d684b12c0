"""Search what is said: full-text and sentence embeddings over the ``speech`` table (one row per utterance), and the
phrase-aware word ranking of ``segments.speech`` that text and hybrid mode fuse with the captions'
(``pipeline/search/hybrid.py``).

Two stages, like the other searches:

1. LanceDB's native full-text index ``speech_fts`` (``pipeline/store/fts.py``: words lower-cased, accents folded,
   stemmed, stop words kept, token positions stored) proposes candidates with the filters applied first
   (``prefilter``): the BM25 ranking of the query's words (``MatchQuery``, any word may match) and, for a query of
   two words or more, the utterances holding them as a phrase, in that order (``PhraseQuery``, which needs the
   positions). So a phrase said once in a long archive is a candidate even when its words are common.
2. Each candidate is re-scored on its own words (the recognised words and their times): ``phrase`` when the
   query's words appear consecutively in order (case, punctuation and common English endings ignored),
   ``coverage`` the share of the query's distinct words it holds. Score: 1 for the phrase (a single word
   spoken counts), else ``coverage / 2``; ties go to BM25. A hit returns the words that matched, with their
   times: the phrase's words, else every word matching a query word.

By meaning: each utterance's sentence embedding (``text_vector``) is searched too, in ``vector`` mode alone and in
``hybrid`` mode (the default) fused with the word ranking, exact phrases first (``pipeline/search/meaning.py``).

Only utterances of videos marked ``complete`` are returned, so a run in progress or a crashed one is never visible.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import SearchError
from pipeline.search.filters import Filters, parse_word_query
from pipeline.search.meaning import TextLevel, fuse_text_level
from pipeline.search.results import SearchResult
from pipeline.search.text import _where
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.fts import SPEECH_FTS

SPEECH_LEVEL = S.SPEECH
COLUMNS = ["utterance_id", "video_id", "start_s", "end_s", "text", "words", "language"]
OVERFETCH = 10  # candidates per requested hit for the re-scoring stage
MAX_QUERY_CHARS = 500
#: Endings dropped before two words are compared ("hoped" ~ "hope", "times" ~ "time"), longest first: roughly
#: what the index's stemmer does, so the words a hit returns are those the index matched.
ENDINGS = ("ing", "ed", "es", "s", "ly")
#: Lucene's English stop words (tantivy's list): the speech index keeps them, for phrase queries, but a row that
#: shares only these with a query is no evidence for it (``evidence``, ``pipeline/search/meaning.py``).
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)


@dataclass
class SpeechHit:
    rank: int
    utterance_id: str
    video_id: str
    path: str
    start_s: float  # the utterance's span, video clock
    end_s: float
    text: str
    words: list[dict[str, Any]]  # the matched words: {word, start_s, end_s, probability}
    match_start_s: float  # the span of the matched words (the utterance's when none matched by word)
    match_end_s: float
    language: str
    # text mode: 1 for the query's words in order, else half the share of its words present; vector mode: cosine
    # similarity; hybrid: the fused reciprocal-rank score (1: first in both rankings)
    score: float
    index_score: float  # BM25 of the word ranking (the cosine similarity for a hit found by meaning alone)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokens(text: str) -> list[str]:
    """Lower-case, accent-folded alphanumeric tokens (the index's simple tokenizer splits the same way)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.findall(r"[a-z0-9]+", folded)


def content_words(query: list[str]) -> set[str]:
    """The stemmed tokens of ``query`` that are not stop words."""
    return {stem(t) for t in query if t not in STOP_WORDS}


def evidence(query: list[str], matched: list[dict[str, Any]]) -> bool:
    """Whether the ``matched`` words of a row (not holding the query as a phrase) are evidence for ``query`` in a
    hybrid search: they hold at least half of its content words (the words that are not stop words). A row
    sharing one word of a longer paraphrase ("an age of faith and of doubt" and "the age of wisdom") is not."""
    want = content_words(query)
    have = {stem(t) for w in matched for t in tokens(str(w["word"]))}
    return bool(want) and len(want & have) >= 0.5 * len(want)


def stem(token: str) -> str:
    for end in ENDINGS:
        if token.endswith(end) and len(token) - len(end) >= 3:
            return token[: -len(end)]
    return token


def match_words(query: list[str], words: list[dict[str, Any]]) -> tuple[bool, float, list[dict[str, Any]]]:
    """(the query's tokens appear consecutively in order, the share of its distinct tokens present, the matched
    words) for an utterance's ``words``."""
    want = [stem(t) for t in query]
    flat = [(stem(t), i) for i, w in enumerate(words) for t in tokens(str(w["word"]))]
    if not want or not flat:
        return False, 0.0, []
    have = {t for t, _ in flat}
    coverage = len(set(want) & have) / len(set(want))
    for start in range(len(flat) - len(want) + 1):
        if all(flat[start + j][0] == want[j] for j in range(len(want))):
            picked = sorted({flat[start + j][1] for j in range(len(want))})
            return True, coverage, [words[i] for i in picked]
    picked = sorted({i for t, i in flat if t in set(want)})
    return False, coverage, [words[i] for i in picked]


def word_candidates(
    table: Any, column: str, text: str, columns: list[str], fetch: int, where: str | None
) -> list[dict[str, Any]]:
    """Up to ``fetch`` rows of ``table`` whose ``column`` matches ``text`` best, prefiltered by ``where``: the rows
    holding the query as a phrase first (their BM25 raised above every other row's), then the rest by BM25. Each
    row holds ``columns`` and ``_score``."""
    from lancedb.query import MatchQuery, PhraseQuery

    def run(query: Any) -> list[dict[str, Any]]:
        q = table.search(query, query_type="fts")
        if where:
            q = q.where(where, prefilter=True)
        return q.select([*dict.fromkeys([*columns, column]), "_score"]).limit(fetch).to_list()  # type: ignore[no-any-return]

    matched = run(MatchQuery(text, column))  # type: ignore[call-arg]
    phrase: list[dict[str, Any]] = []
    if len(tokens(text)) > 1:
        try:
            phrase = run(PhraseQuery(text, column))  # type: ignore[call-arg]
        except (ValueError, RuntimeError, OSError):  # an index built without positions: words only
            phrase = []
    key = columns[0]
    top = max((float(r["_score"]) for r in matched), default=0.0)
    in_phrase = {r[key]: r for r in phrase}
    first = [{**r, "_score": top + float(r["_score"])} for r in phrase]
    rest = [r for r in matched if r[key] not in in_phrase]
    return (first + rest)[:fetch]


class SpeechSearcher(TextLevel):
    """Search the ``speech`` table of the database at ``db`` by words, by meaning, or both (``mode``; see
    ``pipeline/search/meaning.py``, ``TextLevel`` for the other arguments)."""

    table_name = S.SPEECH
    level = "speech"

    def search(
        self,
        text: str,
        k: int = 10,
        filters: Filters | dict[str, Any] | None = None,
        mode: str = "hybrid",
        rrf_k: int = 60,
    ) -> list[SpeechHit]:
        parsed = parse_word_query(text, k, MAX_QUERY_CHARS, filters, "speech")
        query = tokens(text)
        if not query:
            raise SearchError("the query has no words to search for")
        dense = self.uses_meaning(mode)
        videos = self.complete_videos()
        if not videos or not self.store.exists(S.SPEECH):
            return []
        table = self.store.table(S.SPEECH)
        if not table.count_rows():
            return []
        where = _where(parsed, videos)
        scored = [] if mode == "vector" else self._words(table, text, query, k * OVERFETCH, where, videos)
        if not dense:
            picked = [(score, words, r) for _, score, words, r in scored]
        else:
            near = self.nearest(table, text, COLUMNS, k * OVERFETCH, where)
            near = [{**r, "_matched": [], "_phrase": False} for r in near if r["video_id"] in videos]
            if mode == "vector":
                picked = [(float(r["_score"]), [], r) for r in near]
            else:
                said = [
                    {**r, "_score": float(key[2]), "_matched": words, "_phrase": key[0]}
                    for key, _, words, r in scored
                    if key[0] or evidence(query, words)
                ]
                fused = fuse_text_level(said, near, "utterance_id", lambda r: bool(r["_phrase"]), rrf_k)
                picked = [(score, r["_matched"], r) for r, score in fused]
        if parsed is not None and parsed.min_score is not None:
            picked = [x for x in picked if x[0] >= parsed.min_score]
        return [
            _hit(i + 1, score, float(r["_score"]), words, r, videos[r["video_id"]])
            for i, (score, words, r) in enumerate(picked[:k])
        ]

    def _words(
        self, table: Any, text: str, query: list[str], fetch: int, where: str | None, videos: dict[str, str]
    ) -> list[tuple[tuple[bool, float, float], float, list[dict[str, Any]], dict[str, Any]]]:
        """The word ranking: candidates from the index re-scored on their words (see the module docstring), best
        first, each as ((phrase, coverage, BM25), score, matched words, row)."""
        if not any(ix.name == SPEECH_FTS.name for ix in table.list_indices()):
            SPEECH_FTS.build(table)  # normally `maintain`'s; a database indexed without it still answers
        rows = word_candidates(table, "text", text, COLUMNS, fetch, where)
        scored = []
        for r in rows:
            if r["video_id"] not in videos:  # the where clause restricts only when a filter names videos
                continue
            phrase, coverage, words = match_words(query, r["words"] or [])
            scored.append(((phrase, coverage, float(r["_score"])), 1.0 if phrase else coverage / 2, words, r))
        scored.sort(key=lambda x: x[0], reverse=True)
        return scored


def _hit(rank: int, score: float, bm25: float, words: list[dict[str, Any]], r: dict[str, Any], path: str) -> SpeechHit:
    return SpeechHit(
        rank=rank,
        utterance_id=r["utterance_id"],
        video_id=r["video_id"],
        path=path,
        start_s=float(r["start_s"]),
        end_s=float(r["end_s"]),
        text=r["text"],
        words=words,
        match_start_s=min((float(w["start_s"]) for w in words), default=float(r["start_s"])),
        match_end_s=max((float(w["end_s"]) for w in words), default=float(r["end_s"])),
        language=r["language"] or "",
        score=score,
        index_score=bm25,
    )


def speech_results(
    store: Store,
    text: str | None,
    image: Any = None,
    k: int = 10,
    filters: Filters | dict[str, Any] | None = None,
    rerank: str | None = S.RERANK_DEFAULT,
    mode: str = "hybrid",
    max_k: int = 1000,
    searcher: SpeechSearcher | None = None,
    rrf_k: int = 60,
) -> list[SearchResult]:
    """``Searcher.search`` at level ``speech``: the ``SpeechSearcher`` hits (``searcher``: one holding the query
    embedder) as search results (``text``: what was said; ``words``: the matched words with their times;
    ``stage1_score``: the word ranking's BM25, or the cosine similarity of a hit found by meaning alone). An image
    and a named re-ranker are refused."""
    if image is not None or text is None:
        raise SearchError("speech is searched by its words and their meaning: give a text query, not an image")
    if rerank not in (None, S.RERANK_NONE, S.RERANK_DEFAULT):
        raise SearchError("re-rankers do not apply to speech (level speech): leave rerank out")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise SearchError(f"k must be an integer from 1 to {max_k}")
    hits = (searcher or SpeechSearcher(store)).search(text, k, filters, mode, rrf_k)
    return [
        SearchResult(
            rank=h.rank,
            level=SPEECH_LEVEL,
            id=h.utterance_id,
            video_id=h.video_id,
            path=h.path,
            start_s=h.start_s,
            end_s=h.end_s,
            score=h.score,
            stage1_score=h.index_score,
            thumb_id="",
            text=h.text,
            words=h.words,
        )
        for h in hits
    ]
