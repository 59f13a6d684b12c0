"""Every full-text index of the database, declared once: its table, column, name and tokenizer, and the one
function that builds any of them. ``maintain`` builds what ``missing`` lists; the search modules read the
names from here, so no index name is spelled twice.

- Filter indexes (``videos.path``, ``tracks.class_name``, ``segments/frames.class_names``): LanceDB's default
  word tokens, for the ``--path-glob`` and ``--class`` prefilters.
- ``texts_fts`` (on-screen text spans) and ``screen_text_fts`` (the OCR lines on each segment): character
  trigrams, so a misread or word-merged line ("GATE7CL0SED") still shares most n-grams with the query
  (``pipeline/search/text.py``).
- ``caption_fts``: generated English sentences, so words are lower-cased, accent-folded, stop words dropped and
  stemmed: "dogs" finds "a dog runs" (``pipeline/search/hybrid.py``; ``benchmarks/hybrid.py`` measures it).
- ``speech_fts`` (``speech.text``, one row per utterance) and ``segment_speech_fts`` (``segments.speech``, the
  words spoken in each segment): transcripts, so words are lower-cased, accent-folded and stemmed ("hoped"
  finds "hope"), but stop words are KEPT, and token positions are stored (``with_position``) so that a quoted
  line is searched as a phrase (LanceDB's ``PhraseQuery`` finds nothing without positions): "it was the best of
  times" is all stop words but "best", and "to be or not to be" is nothing but stop words.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.store import schema as S

Tokenizer = Literal["ngram", "word"]

#: Word tokens for generated English sentences.
CAPTION_TOKENS: dict[str, Any] = {
    "base_tokenizer": "simple",
    "language": "English",
    "lower_case": True,
    "ascii_folding": True,
    "stem": True,
    "remove_stop_words": True,
}


#: Word tokens for transcribed speech: stop words kept, positions stored for phrase queries.
SPEECH_TOKENS: dict[str, Any] = {
    "base_tokenizer": "simple",
    "language": "English",
    "lower_case": True,
    "ascii_folding": True,
    "stem": True,
    "remove_stop_words": False,
    "with_position": True,
}


def ocr_tokens(tokenizer: Tokenizer = "ngram") -> dict[str, Any]:
    """The tokenizer options of an index over on-screen text (trigrams, or plain words)."""
    common = {"remove_stop_words": False, "stem": False, "ascii_folding": True}
    tokens = {"base_tokenizer": "ngram", "ngram_min_length": 3, "ngram_max_length": 3} if tokenizer == "ngram" else {}
    return common | tokens


@dataclass(frozen=True)
class FtsIndex:
    table: str
    column: str
    name: str
    tokens: Mapping[str, Any] | None = None  # None: LanceDB's default word tokens
    when_filled: bool = False  # built only once some row has a value (OCR was on for some video)
    label: str = field(default="", compare=False)  # what ``maintain`` reports

    def wanted(self, table: Any) -> bool:
        """Whether ``table`` should have this index: it has the column (and, if asked, a value in it)."""
        if self.column not in table.schema.names:
            return False
        return not self.when_filled or int(table.count_rows(f"{self.column} IS NOT NULL")) > 0

    def build(self, table: Any, replace: bool = False, tokens: Mapping[str, Any] | None = None) -> bool:
        """Build the index if it is missing (or ``replace``), with ``tokens`` instead of the declared ones if
        given; returns whether it was built. A database this user cannot write (a reader building a missing
        index on first use) is ``DatabaseUnusable``: one sentence saying who can build it."""
        if not replace and any(ix.name == self.name for ix in table.list_indices()):
            return False
        try:
            return self._build(table, tokens)
        except (OSError, RuntimeError) as exc:
            if "Permission denied" not in str(exc) and "os error 13" not in str(exc):
                raise
            from pipeline.errors import DatabaseUnusable

            raise DatabaseUnusable(
                f"the {self.label or self.name} of table {self.table} is not built yet and this user cannot write "
                "the database: run `vidsearch maintain` once as a user who can"
            ) from None

    def _build(self, table: Any, tokens: Mapping[str, Any] | None) -> bool:
        opts = self.tokens if tokens is None else tokens
        if opts is None:
            from lancedb.index import FTS

            table.create_index(self.column, config=FTS(), replace=True, name=self.name)
            return True
        with warnings.catch_warnings():
            # lancedb 0.40 marks create_fts_index deprecated, but its suggested create_index(config=FTS()) on a
            # synchronous table takes the metric argument for the column name; this call still does the work.
            warnings.simplefilter("ignore", DeprecationWarning)
            table.create_fts_index(self.column, replace=True, name=self.name, **dict(opts))
        return True


def _filter(table: str, column: str) -> FtsIndex:
    return FtsIndex(table, column, f"{column}_fts", label=f"FTS index on {column}")


TEXTS_FTS = FtsIndex(S.TEXTS, "text", "texts_fts", ocr_tokens("ngram"), label="FTS index (n-grams) on text")
CAPTION_FTS = FtsIndex(
    S.SEGMENTS, "caption", "caption_fts", CAPTION_TOKENS, label="FTS index (stemmed words) on caption"
)
SCREEN_FTS = FtsIndex(
    S.SEGMENTS, "screen_text", "screen_text_fts", ocr_tokens("ngram"), True, "FTS index (n-grams) on screen_text"
)
SPEECH_FTS = FtsIndex(S.SPEECH, "text", "speech_fts", SPEECH_TOKENS, label="FTS index (words, positions) on text")
SEGMENT_SPEECH_FTS = FtsIndex(
    S.SEGMENTS, "speech", "segment_speech_fts", SPEECH_TOKENS, True, "FTS index (words, positions) on speech"
)
INDEXES: tuple[FtsIndex, ...] = (
    _filter(S.VIDEOS, "path"),
    _filter(S.TRACKS, "class_name"),
    _filter(S.SEGMENTS, "class_names"),
    _filter(S.FRAMES, "class_names"),
    TEXTS_FTS,
    CAPTION_FTS,
    SCREEN_FTS,
    SPEECH_FTS,
    SEGMENT_SPEECH_FTS,
)
#: The segment columns searched by words in text and hybrid mode, with their indexes, caption first.
WORD_INDEXES: tuple[FtsIndex, ...] = (CAPTION_FTS, SCREEN_FTS, SEGMENT_SPEECH_FTS)


def missing(table: Any, name: str, existing: Any) -> list[FtsIndex]:
    """The full-text indexes table ``name`` should have and lacks (``existing``: its index names)."""
    return [ix for ix in INDEXES if ix.table == name and ix.name not in existing and ix.wanted(table)]


def ensure_text_index(table: Any, tokenizer: Tokenizer = "ngram", replace: bool = False) -> None:
    """Build the on-screen text spans' index (``texts.text``) if it is missing (or ``replace``)."""
    TEXTS_FTS.build(table, replace, ocr_tokens(tokenizer))


def ensure_word_indexes(table: Any) -> None:
    """The segments' caption index, and their on-screen text and speech indexes once some segment has screen text
    or speech (what ``maintain`` builds; for callers that run without it, like ``evaluate``)."""
    for ix in WORD_INDEXES:
        if ix.wanted(table):
            ix.build(table)
