"""Reciprocal-rank fusion of ranked rows, the one formula every hybrid search uses (``pipeline/search/hybrid.py``
for segments, ``pipeline/search/meaning.py`` for the text levels): LanceDB's ``RRFReranker``'s, K 60 by default."""

from __future__ import annotations

from typing import Any

__all__ = ["fuse", "rrf"]


def rrf(rankings: list[list[str]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of ranked id lists (best first): ``(id, sum 1 / (k + rank))`` best first, scaled
    by ``(k + 1) / len(rankings)`` so an id first in every list scores 1. Ties keep the order of the lists
    concatenated (earlier list, then better rank), as LanceDB's ``RRFReranker`` does."""
    score: dict[str, float] = {}
    first: dict[str, int] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, 1):
            score[key] = score.get(key, 0.0) + 1.0 / (k + rank)
            first.setdefault(key, len(first))
    scale = (k + 1) / max(1, len(rankings))
    return sorted(((key, s * scale) for key, s in score.items()), key=lambda x: (-x[1], first[x[0]]))


def fuse(rankings: list[list[dict[str, Any]]], key: str, k: int = 60) -> list[tuple[dict[str, Any], float]]:
    """Rows of the rankings fused by ``rrf`` on ``key``, each with its fused score (a row that several rankings
    hold is taken from the first)."""
    by_id: dict[Any, dict[str, Any]] = {}
    for ranking in rankings:
        for r in ranking:
            by_id.setdefault(r[key], r)
    return [(by_id[i], s) for i, s in rrf([[r[key] for r in ranking] for ranking in rankings], k)]
