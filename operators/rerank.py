"""Stage-2 fusion re-rankers behind a registry (name -> builder).

``attention`` - parameter-free cross-modal attention in the joint embedding space: the query's token
embeddings attend over the candidate's frame, region and track embeddings with scaled dot-product
attention, softmax(Q K^T / sqrt(d)) V, and each attended vector is scored against the query.

``vilt`` - single-stream: image patches and query tokens in one transformer
(``ViltForImageAndTextRetrieval``); the score is sigmoid(logit) of its retrieval head.

``blip-itm`` - dual-stream: BLIP's text encoder cross-attends to the ViT's image features
(``BlipForImageTextRetrieval`` with the image-text matching head); the score is P(match).

Every re-ranker takes a ``RerankInput`` per candidate and returns one score per candidate; the searcher
combines it with the stage-1 score by ``search.rerank_weight``. Options come from
``search.rerankers.<name>`` in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from operators.base import MissingCheckpointError, StrictModel
from operators.weights import Device, load_checkpoint, pick_device


def scaled_dot_product_attention(
    q: npt.NDArray[np.float64], k: npt.NDArray[np.float64], v: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """softmax(Q K^T / sqrt(d_k)) V. Returns (output [n_q, d_v], weights [n_q, n_k]; rows sum to 1)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    logits = q @ k.T / np.sqrt(k.shape[-1])
    logits -= logits.max(axis=-1, keepdims=True)  # numerically stable softmax
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v, weights


@dataclass
class Query:
    """A query in the joint space: pooled embedding, per-token embeddings (text) and the raw inputs."""

    embedding: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.float32]
    text: str | None = None
    image: Any = None  # RGB uint8 array for image queries


@dataclass
class RerankInput:
    """What a re-ranker may look at for one candidate: its embeddings in the joint space and a keyframe."""

    stage1_score: float
    context: npt.NDArray[np.float32]  # [n, D] frame, region and track embeddings of the candidate
    keyframe: Callable[[], Any] | None = None  # lazily loaded RGB keyframe (from the stored thumbnail)


class Reranker(Protocol):
    needs_context: bool  # reads RerankInput.context (the searcher skips fetching embeddings otherwise)
    needs_keyframes: bool  # reads RerankInput.keyframe (the searcher fetches all thumbnails in one query)

    def setup(self) -> None: ...

    def score(self, query: Query, candidates: list[RerankInput]) -> list[float]: ...


class AttentionReranker:
    """Cross-modal attention of query tokens over candidate embeddings; no weights of its own.

    The embeddings are unit vectors, so Q K^T is a cosine in [-1, 1] and dividing by sqrt(d) alone would make
    the attention nearly uniform (a plain mean of the context). Keys are therefore scaled by
    ``logit_scale * sqrt(d)``: the attention logits become ``logit_scale * cos``, the same sharpness as a
    CLIP similarity (its learned scale is 100), so each query token attends to the frames, regions and tracks
    that match it. Score: mean over query tokens of cos(attended vector, pooled query).
    """

    needs_context = True
    needs_keyframes = False

    def __init__(self, logit_scale: float = 100.0) -> None:
        if not logit_scale > 0:
            raise ValueError("logit_scale must be positive")
        self.logit_scale = logit_scale

    def setup(self) -> None:
        pass

    def score(self, query: Query, candidates: list[RerankInput]) -> list[float]:
        q = np.asarray(query.tokens if len(query.tokens) else query.embedding[None], dtype=np.float64)
        pooled = np.asarray(query.embedding, dtype=np.float64)
        scores = []
        for c in candidates:
            if len(c.context) == 0:
                scores.append(c.stage1_score)
                continue
            v = np.asarray(c.context, dtype=np.float64)
            k = v * (self.logit_scale * np.sqrt(v.shape[-1]))
            attended, _ = scaled_dot_product_attention(q, k, v)
            attended /= np.maximum(np.linalg.norm(attended, axis=-1, keepdims=True), 1e-12)
            scores.append(float(np.mean(attended @ pooled)))
        return scores


# -- image-text matching models from transformers ----------------------------------------------------------


class PairRerankerConfig(StrictModel):
    """``search.rerankers.vilt`` / ``search.rerankers.blip-itm``."""

    #: A Hugging Face hub id (read from the local cache, downloaded if a network exists) or a local directory
    #: written by ``save_pretrained`` holding the model and its processor.
    checkpoint: str | None = None
    device: Device = "auto"
    batch_size: int = 16
    #: Never touch the network; also implied by HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1.
    local_files_only: bool = False
    cache_dir: str | None = None


def load_pretrained(name: str, cfg: PairRerankerConfig, model_cls: Any, processor_cls: Any) -> tuple[Any, Any]:
    """(model, processor) from ``cfg.checkpoint`` with ``from_pretrained`` (``operators/weights.py``: the local
    cache first, a download only where a network exists); one-sentence error when missing."""
    key = f"search.rerankers.{name}.checkpoint"
    if not cfg.checkpoint:
        raise MissingCheckpointError(
            f"Re-ranker '{name}' has no checkpoint: set {key} to a Hugging Face hub id or to a local directory "
            f"written by save_pretrained."
        )

    def load(path: str, local_only: bool) -> tuple[Any, Any]:
        processor = processor_cls.from_pretrained(path, local_files_only=local_only, cache_dir=cfg.cache_dir)
        model = model_cls.from_pretrained(path, local_files_only=local_only, cache_dir=cfg.cache_dir)
        return model, processor

    return load_checkpoint(
        f"Re-ranker '{name}'",
        key,
        cfg.checkpoint,
        load,
        holds=f"a saved {model_cls.__name__} with its processor",
        local_files_only=cfg.local_files_only,
        cache_dir=cfg.cache_dir,
    )


class PairReranker:
    """Scores (query text, keyframe) pairs with an image-text matching model, ``batch_size`` pairs per pass.

    Keyframes come from ``RerankInput.keyframe()`` (the stored JPEG thumbnail at the hit's time), so no
    video is decoded. These models score text against images, so for an image query (no text) and for a
    candidate without a keyframe the score is the stage-1 score: the stage-1 order is kept.
    """

    needs_context = False
    needs_keyframes = True
    name: ClassVar[str]
    model_class: ClassVar[str]
    processor_class: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.cfg = PairRerankerConfig(**options)
        self.model: Any = None
        self.processor: Any = None

    def setup(self) -> None:
        import transformers

        model_cls = getattr(transformers, self.model_class)
        processor_cls = getattr(transformers, self.processor_class)
        model, self.processor = load_pretrained(self.name, self.cfg, model_cls, processor_cls)
        self.device = pick_device(self.cfg.device)
        self.model = model.to(self.device).eval()

    def score(self, query: Query, candidates: list[RerankInput]) -> list[float]:
        scores = [c.stage1_score for c in candidates]
        if not query.text:
            return scores
        frames = [(i, c.keyframe()) for i, c in enumerate(candidates) if c.keyframe is not None]
        frames = [(i, f) for i, f in frames if f is not None]
        for start in range(0, len(frames), self.cfg.batch_size):
            chunk = frames[start : start + self.cfg.batch_size]
            matched = self.match(query.text, [f for _, f in chunk])
            for (i, _), s in zip(chunk, matched, strict=True):
                scores[i] = float(s)
        return scores

    def match(self, text: str, images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Match scores in [0, 1] of ``text`` against each RGB image."""
        import torch
        from PIL import Image

        assert self.model is not None, "call setup() first"
        inputs = self.processor(
            images=[Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images],
            text=[text] * len(images),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens(),
        ).to(self.device)
        with torch.inference_mode():
            return self.forward(inputs).float().cpu().numpy().astype(np.float32)

    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def forward(self, inputs: Any) -> Any:
        raise NotImplementedError


class ViltReranker(PairReranker):
    """ViLT retrieval head: one transformer over patches + tokens; score = sigmoid(logit)."""

    name = "vilt"
    model_class = "ViltForImageAndTextRetrieval"
    processor_class = "ViltProcessor"

    def max_text_tokens(self) -> int:
        return int(self.model.config.max_position_embeddings)  # ViLT has 40 text positions

    def forward(self, inputs: Any) -> Any:
        return self.model(**inputs).logits[:, 0].sigmoid()


class BlipItmReranker(PairReranker):
    """BLIP image-text matching head: text cross-attends to ViT features; score = P(match)."""

    name = "blip-itm"
    model_class = "BlipForImageTextRetrieval"
    processor_class = "BlipProcessor"

    def forward(self, inputs: Any) -> Any:
        return self.model(**inputs, use_itm_head=True).itm_score.softmax(dim=-1)[:, 1]


RERANKERS: dict[str, Callable[..., Reranker]] = {
    "attention": AttentionReranker,
    "vilt": ViltReranker,
    "blip-itm": BlipItmReranker,
}


def build_reranker(name: str, options: dict[str, Any] | None = None) -> Reranker:
    if name not in RERANKERS:
        raise ValueError(f"unknown re-ranker '{name}'; registered: {sorted(RERANKERS)}")
    try:
        return RERANKERS[name](**(options or {}))
    except (TypeError, ValueError) as exc:  # unknown or invalid option keys
        raise ValueError(f"invalid options for re-ranker '{name}' (search.rerankers.{name}): {exc}") from None
