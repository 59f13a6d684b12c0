"""Search by meaning: the dense rankings of the text rows (utterances, on-screen text spans, and each segment's
captions, on-screen text and speech), and how the text levels fuse them with their word rankings.

- **Vectors**: sentence embeddings written with the rows (``operators/text_embed.py``; columns declared in
  ``pipeline/store/schema.py``, ``TEXT_VECTORS``), each row labelled with the model that wrote them
  (``text_model``). A dense ranking reads only rows of the query model's label, prefiltered by the search's
  ``where`` like every other ranking, so vectors of two models are never compared. Score: cosine similarity.
- **Modes at the text levels** (``speech``, ``texts``): ``text`` is the word ranking alone, ``vector`` the dense
  ranking alone, ``hybrid`` (their default) both fused by reciprocal rank (``pipeline/search/fusion.py``)
  with one rule on top: rows the words match exactly (the query's words said in order; the query written on
  screen) come first, in their fused order. A paraphrase has no such row and is ranked by the fusion; an exact
  phrase stays first even when another row is nearer in meaning. In hybrid the speech word ranking keeps only
  rows that hold the query as a phrase or at least half of its words that are not stop words
  (``speech.evidence``): the speech index keeps stop words for phrase queries, and an utterance sharing "the",
  or one word of a longer paraphrase, is no evidence for it.
- A database without vectors of the query model (indexed before text vectors, or with ``text_embed: none``) is
  searched by words in hybrid mode; vector mode says how to add them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from pipeline.config import MaintenanceConfig
from pipeline.errors import SearchError
from pipeline.search.fusion import fuse
from pipeline.store import schema as S
from pipeline.store.db import Store, quote

TEXT_MODES = ("vector", "text", "hybrid")


def vector_where(column: str, model: str, where: str | None) -> str:
    """The prefilter of a dense ranking: rows with a vector in ``column`` written by ``model``, and ``where``."""
    own = f"{S.TEXT_MODEL} = {quote(model)} AND {column} IS NOT NULL"
    return f"({own}) AND ({where})" if where else own


def dense_ranking(
    table: Any,
    column: str,
    vector: np.ndarray,
    model: str,
    columns: list[str],
    fetch: int,
    where: str | None,
    index: MaintenanceConfig | None = None,
) -> list[dict[str, Any]]:
    """The ``fetch`` rows of ``table`` whose ``column`` vector (of ``model``) is nearest ``vector``, best first,
    each with ``columns`` and ``_score`` (cosine similarity). Through an ANN index (``maintain``'s) the search
    probes as ``index`` says (``nprobes``/``ef``) and always re-ranks its candidates on their full vectors (a
    refine factor of at least 1), so a score is the true cosine similarity, not a quantised estimate."""
    m = index or MaintenanceConfig()
    q = table.search(vector.tolist(), vector_column_name=column).distance_type("cosine").nprobes(m.nprobes)
    if m.ef:
        q = q.ef(m.ef)
    q = q.refine_factor(max(1, m.refine_factor or 1))
    q = q.where(vector_where(column, model, where), prefilter=True)
    rows = q.select([*dict.fromkeys(columns), "_distance"]).limit(fetch).to_list()
    return [{**r, "_score": 1.0 - float(r.pop("_distance"))} for r in rows]


class VectorColumns:
    """Which text-vector columns of a table hold vectors of a model, cached per table version (checked once per
    commit, not once per query)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[int, bool]] = {}
        self._lock = threading.Lock()

    def has(self, table: Any, name: str, column: str, model: str) -> bool:
        if column not in table.schema.names or S.TEXT_MODEL not in table.schema.names:
            return False
        version = int(table.version)
        key = (name, column, model)
        with self._lock:
            seen = self._seen.get(key)
        if seen is not None and seen[0] == version:
            return seen[1]
        found = int(table.count_rows(vector_where(column, model, None))) > 0
        with self._lock:
            self._seen[key] = (version, found)
        return found


def check_text_mode(mode: str) -> None:
    if mode not in TEXT_MODES:
        raise SearchError(f"mode must be one of {', '.join(TEXT_MODES)}")


def no_vectors(level: str, model: str | None) -> SearchError:
    if model is None:
        return SearchError(
            f"mode vector at level {level} needs a text embedding model: set text_embed.model (e.g. all-MiniLM-L6-v2) "
            "in the config, or search with --mode text"
        )
    return SearchError(
        f"this database has no {level} vectors of {model}: index it with that text_embed.model (a changed model "
        "re-indexes), or search with --mode text"
    )


def fuse_text_level(
    words: list[dict[str, Any]],
    dense: list[dict[str, Any]],
    key: str,
    exact: Callable[[dict[str, Any]], bool],
    rrf_k: int = 60,
) -> list[tuple[dict[str, Any], float]]:
    """Hybrid at a text level: the word and dense rankings fused by RRF, rows the words match exactly first (see
    the module docstring). A row both rankings hold is taken from the word ranking (it carries the matched
    words)."""
    fused = fuse([words, dense], key, rrf_k)
    exact_ids = {r[key] for r in words if exact(r)}
    return sorted(fused, key=lambda x: x[0][key] not in exact_ids)  # stable: fused order within each group


class TextLevel:
    """What the searchers of the text levels share (``SpeechSearcher``, ``TextSearcher``): the database, the query
    embedder (a ``TextEmbedder``, or None: words only), the cache of which columns hold vectors, the ANN search
    parameters (a ``MaintenanceConfig``), and the ranking by meaning of their table's ``text_vector``."""

    table_name: ClassVar[str]
    level: ClassVar[str]
    column: ClassVar[str] = "text_vector"

    def __init__(
        self, db: str | Store, embedder: Any = None, vectors: VectorColumns | None = None, index: Any = None
    ) -> None:
        self.store = db if isinstance(db, Store) else Store(db)
        self.embedder = embedder
        self.vectors = vectors or VectorColumns()
        self.index = index

    def uses_meaning(self, mode: str) -> bool:
        """Whether ``mode`` ranks by meaning here: not in text mode, nor without vectors of the query model (then
        hybrid is the words alone, and vector mode an error saying why)."""
        check_text_mode(mode)
        dense = mode != "text" and self.embedder is not None and self.store.exists(self.table_name)
        dense = dense and self.vectors.has(
            self.store.table(self.table_name), self.table_name, self.column, self.embedder.model_id
        )
        if mode == "vector" and not dense:
            raise no_vectors(self.level, self.embedder.model_id if self.embedder is not None else None)
        return bool(dense)

    def complete_videos(self) -> dict[str, str]:
        """video id -> path of the videos marked complete (the only ones a search returns)."""
        rows = self.store.complete_videos().select(["video_id", "path"]).to_pylist()
        return {r["video_id"]: r["path"] for r in rows}

    def nearest(self, table: Any, text: str, columns: list[str], fetch: int, where: str | None) -> list[dict[str, Any]]:
        """The ranking by meaning of ``text`` over the table's vectors (``dense_ranking``)."""
        assert self.embedder is not None
        return dense_ranking(
            table, self.column, self.embedder.query(text), self.embedder.model_id, columns, fetch, where, self.index
        )
