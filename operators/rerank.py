"""Stage-2 fusion re-rankers behind a registry (name -> builder).

``attention`` - parameter-free cross-modal attention in the joint embedding space: the query's token
embeddings attend over the candidate's frame, region and track embeddings with scaled dot-product
attention, softmax(Q K^T / sqrt(d)) V, and each attended vector is scored against the query.

Every re-ranker takes a ``RerankInput`` per candidate and returns one score per candidate; the searcher
combines it with the stage-1 score by ``search.rerank_weight``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


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
    extra: dict[str, Any] = field(default_factory=dict)


class Reranker(Protocol):
    def setup(self) -> None: ...

    def score(self, query: Query, candidates: list[RerankInput]) -> list[float]: ...


class AttentionReranker:
    """Cross-modal attention of query tokens over candidate embeddings; no weights of its own."""

    needs_keyframes = False

    def __init__(self, temperature: float = 1.0, **_: Any) -> None:
        self.temperature = temperature

    def setup(self) -> None:
        pass

    def score(self, query: Query, candidates: list[RerankInput]) -> list[float]:
        q = query.tokens if len(query.tokens) else query.embedding[None]
        scores = []
        for c in candidates:
            if len(c.context) == 0:
                scores.append(c.stage1_score)
                continue
            kv = np.asarray(c.context, dtype=np.float64) / self.temperature
            attended, _ = scaled_dot_product_attention(q, kv, np.asarray(c.context, dtype=np.float64))
            attended /= np.maximum(np.linalg.norm(attended, axis=-1, keepdims=True), 1e-12)
            scores.append(float(np.mean(attended @ np.asarray(query.embedding, dtype=np.float64))))
        return scores


RERANKERS: dict[str, Callable[..., Reranker]] = {"attention": AttentionReranker}


def build_reranker(name: str, options: dict[str, Any] | None = None) -> Reranker:
    if name not in RERANKERS:
        raise ValueError(f"unknown re-ranker '{name}'; registered: {sorted(RERANKERS)}")
    return RERANKERS[name](**(options or {}))
