"""The state behind the HTTP routes: one ``Searcher`` shared by concurrent requests, the video and thumbnail
lookups, and the media check (``pipeline/serve/media.py``).

Searches run concurrently in the server's thread pool: the encoder and the attention re-ranker only read
their weights, and LanceDB reads are thread-safe. Only the first search per re-ranker (which loads the models)
and searches with the transformers re-rankers (whose tokenizers are not thread-safe) are serialised, by a lock
held around ``Searcher.search``; ``VIDSEARCH_SERIAL_SEARCH=1`` serialises every search.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from typing import Any, Literal, cast

import numpy as np
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict

from pipeline.config import Config
from pipeline.errors import SearchError
from pipeline.index.catalog import Verifier
from pipeline.search.hybrid import Mode
from pipeline.search.searcher import Filters, Searcher, default_mode
from pipeline.search.shot_list import video_shots
from pipeline.search.text import TextSearchConfig
from pipeline.serve.media import media_type
from pipeline.store import schema as S
from pipeline.store.db import Store, quote
from pipeline.store.schema import Level

SERIAL_ENV = "VIDSEARCH_SERIAL_SEARCH"  # "1": one search at a time (a baseline, or an encoder that needs it)
THREAD_SAFE_RERANKERS = (None, "attention")  # numpy over the query and contexts; no model state
TEXTS_LEVEL = "texts"  # on-screen text spans, searched by words (pipeline/search/text.py), not by vector
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # uuid5 ids, nothing else


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``: the parameters of ``Searcher.search`` (the image comes as a file)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    k: int = 10
    level: Level | Literal["texts", "speech"] = "segments"
    filters: Filters | None = None
    rerank: str | None = "default"  # a re-ranker name, "default" (the config's), or null / "none"
    # vector, text (full-text over captions, on-screen text and speech) or hybrid (both, fused by reciprocal rank);
    # at levels texts and speech, vector searches by meaning (sentence embeddings). None: hybrid at texts and
    # speech, vector elsewhere
    mode: Mode | None = None


class Api:
    """The state behind the routes: one searcher (models loaded once), shared by concurrent requests."""

    def __init__(self, cfg: Config, searcher: Searcher | None, media_roots: list[str], refresh_s: float) -> None:
        self.cfg = cfg
        self.searcher = searcher or Searcher(cfg.db.path, cfg)
        self.media_roots = [os.path.realpath(r) for r in media_roots]
        self._shown_roots = sorted({*self.media_roots, *(os.path.abspath(r) for r in media_roots)}, key=len)[::-1]
        self.refresh_s = refresh_s
        self.verifier = Verifier()
        self.model_lock = threading.Lock()  # model loading, and re-rankers that are not thread-safe
        self._refresh_lock = threading.Lock()
        self._warm: set[str | None] = set()  # re-rankers whose first search (loading the models) succeeded
        self._opened = time.monotonic()
        self.serial = os.environ.get(SERIAL_ENV) == "1"  # every search under the lock (a custom encoder's needs)
        self.text_cfg = TextSearchConfig()
        self._texts_lock = threading.Lock()
        self._texts_warm = False

    def store(self) -> Store:
        """The database, re-opened every ``refresh_s`` so videos indexed while serving become visible."""
        if time.monotonic() - self._opened > self.refresh_s:
            with self._refresh_lock:
                if time.monotonic() - self._opened > self.refresh_s:
                    self.searcher.store = Store(self.cfg.db.path, self.searcher.store.dim)
                    self._opened = time.monotonic()
        return self.searcher.store

    def search(self, req: SearchRequest, image: np.ndarray | None) -> dict[str, Any]:
        """``image``: the upload, already decoded (once, by the route, outside any lock)."""
        if req.level == TEXTS_LEVEL:
            return self.search_texts(req, image is not None)
        rerank = None if req.rerank in (None, S.RERANK_NONE) else req.rerank
        # speech hits are ranked by their words and meaning, never re-ranked (pipeline/search/speech.py)
        name = None if req.level == S.SPEECH else S.rerank_choice(rerank, self.cfg.search.rerank)
        mode = default_mode(req.level) if req.mode is None else req.mode
        t0 = time.perf_counter()
        self.store()
        serial = self.serial or name not in THREAD_SAFE_RERANKERS or name not in self._warm
        with self.model_lock if serial else contextlib.nullcontext():
            results = self.searcher.search(
                text=req.text,
                image=image,
                k=req.k,
                level=cast(Level | Literal["speech"], req.level),
                filters=req.filters,
                rerank=rerank,
                mode=mode,
            )
            self._warm.add(name)
        return {
            "level": req.level,
            "mode": mode,
            "rerank": name,
            "took_ms": round(1000 * (time.perf_counter() - t0), 1),
            "count": len(results),
            "results": [r.as_dict() for r in results],
        }

    # -- on-screen text ---------------------------------------------------------------------------------------
    def has_texts(self) -> bool:
        """Whether the database has a ``texts`` table (databases indexed before on-screen text was read lack it)."""
        return self.store().exists(S.TEXTS)

    def search_texts(self, req: SearchRequest, has_image: bool) -> dict[str, Any]:
        """Level ``texts``: ``req.text`` in the on-screen text spans by words and meaning (``TextSearcher``, mode
        hybrid unless the request names one); each result carries the text read, its span, its normalised box on
        the thumbnail ``thumb_id`` and the box trajectory. Refused (``SearchError``, a 400): an image, a re-ranker,
        a database without a ``texts`` table."""
        if has_image:
            raise SearchError("on-screen text is searched by words and meaning: give a text query, not an image")
        if req.rerank not in (None, S.RERANK_NONE, S.RERANK_DEFAULT):
            raise SearchError("re-rankers do not apply to on-screen text (level texts): leave rerank out")
        mode = default_mode(TEXTS_LEVEL) if req.mode is None else req.mode
        if not isinstance(req.k, int) or not 1 <= req.k <= self.cfg.search.max_k:
            raise SearchError(f"k must be an integer from 1 to {self.cfg.search.max_k}")
        t0 = time.perf_counter()
        store = self.store()
        if not store.exists(S.TEXTS):
            raise SearchError(
                "this database has no on-screen text (no texts table): it was indexed before text was read; "
                "index it again with ocr.engine=rapidocr to search on-screen text"
            )
        # The first search may build the full-text index (a write), so it runs alone.
        with self._texts_lock if not self._texts_warm else contextlib.nullcontext():
            searcher = self.searcher.texts_searcher(self.text_cfg)
            hits = searcher.search(req.text or "", req.k, req.filters, mode, self.cfg.search.rrf_k)
            self._texts_warm = True
        return {
            "level": TEXTS_LEVEL,
            "mode": mode,
            "rerank": None,
            "took_ms": round(1000 * (time.perf_counter() - t0), 1),
            "count": len(hits),
            "results": [{"id": h.text_id, "level": TEXTS_LEVEL, **h.as_dict()} for h in hits],
        }

    def shown(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` as an answer shows it: with media roots its ``path`` is relative to the root holding it (the
        file name alone for a file outside them), so answers do not reveal the server's folders; without roots,
        as indexed."""
        path = row.get("path")
        if not self.media_roots or not isinstance(path, str):
            return row
        root = next((r for r in self._shown_roots if path.startswith(os.path.join(r, ""))), None)
        return {**row, "path": os.path.relpath(path, root) if root else os.path.basename(path)}

    def videos(self, video_id: str | None = None) -> list[dict[str, Any]]:
        where = f"status = {quote(S.STATUS_COMPLETE)}"
        if video_id is not None:
            where += f" AND video_id = {quote(video_id)}"
        rows = self.store().rows(S.VIDEOS, where).to_pylist()
        return sorted(jsonable_encoder(rows), key=lambda r: r["path"])

    def video(self, video_id: str) -> dict[str, Any] | None:
        found = self.videos(video_id) if ID.fullmatch(video_id) else []
        if not found:
            return None
        store, key = self.store(), f"video_id = {quote(video_id)}"
        segments = store.rows(S.SEGMENTS, key, ["segment_id", "start_s", "end_s", "thumb_id", "class_names"])
        tracks = store.rows(S.TRACKS, key, ["track_id", "class_name", "t_first", "t_last", "n_obs", "thumb_id"])
        return {
            **found[0],
            "segments": sorted(segments.to_pylist(), key=lambda r: r["start_s"]),
            "tracks": sorted(tracks.to_pylist(), key=lambda r: (r["t_first"], r["track_id"])),
        }

    def shots(self, video_id: str) -> dict[str, Any] | None:
        """A complete video's shots (``pipeline/search/shot_list.py``), for the player's timeline; None if unknown."""
        found = self.videos(video_id) if ID.fullmatch(video_id) else []
        if not found:
            return None
        return {"video_id": video_id, "duration_s": found[0]["duration_s"], **video_shots(self.store(), video_id)}

    def has_speech(self) -> bool:
        """Whether the database holds any transcribed utterance (level ``speech`` finds something)."""
        return self.store().count(S.SPEECH) > 0

    def transcript(self, video_id: str) -> dict[str, Any] | None:
        """A complete video's utterances in time order (start, end, text, words with their times); None if unknown."""
        if not (self.videos(video_id) if ID.fullmatch(video_id) else []):
            return None
        cols = ["utterance_id", "start_s", "end_s", "text", "words", "language"]
        rows = self.store().rows(S.SPEECH, f"video_id = {quote(video_id)}", cols).to_pylist()
        return {"video_id": video_id, "utterances": sorted(rows, key=lambda r: r["start_s"])}

    def thumbnail(self, thumb_id: str) -> bytes | None:
        if not ID.fullmatch(thumb_id):
            return None
        rows = self.store().rows(S.THUMBNAILS, f"thumb_id = {quote(thumb_id)}", ["video_id", "jpeg"]).to_pylist()
        if not rows or not self.videos(rows[0]["video_id"]):
            return None
        return rows[0]["jpeg"]

    def media(self, video_id: str) -> tuple[int, os.stat_result, str] | None:
        """An open descriptor of a complete video's file, its stat and its type, if the file still is the
        indexed content (size and fingerprint) inside the media roots; the caller closes the descriptor."""
        found = self.videos(video_id) if ID.fullmatch(video_id) else []
        if not found:
            return None
        video = found[0]
        real = os.path.realpath(video["path"])
        if self.media_roots and not any(real.startswith(os.path.join(root, "")) for root in self.media_roots):
            return None
        opened = self.verifier.open(real, video["size_bytes"], video["fingerprint"], video.get("mtime_ns"))
        return None if opened is None else (*opened, media_type(video["path"]))
