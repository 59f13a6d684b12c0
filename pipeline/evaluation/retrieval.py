"""Retrieval evaluation: index a labelled set of videos with a config, run its queries, score the hits.

A manifest (YAML mapping, or JSONL with one query per line) lists queries; each names a video (relative to
the media root), a text or an image to query with, the relevant span(s) in seconds (none: the whole video is
relevant) and optionally relevant boxes. Image queries are made at run time from the clip itself (the frame
nearest ``t``, optionally cropped and re-encoded as JPEG at some quality) into a cache folder, so nothing
binary is committed.

Metrics (``summarize``): R@1/R@5/R@10 (a relevant hit among the first 1/5/10), median rank of the first
relevant hit (a query with none in the top ``k`` counts as a miss, shown as ``>k`` when it decides the
median), mean temporal IoU of the top hit with the best matching relevant span (0 when the top hit is in
another video) and, over the queries that label boxes, the mean best IoU between a labelled box and the top
hit's boxes.

A hit is relevant when it comes from the query's video and its span overlaps a relevant span.

Search modes (``modes``, ``evaluate --modes vector,text,hybrid``): each config's database is indexed once and
its text queries run in every mode, side by side (``text`` and ``hybrid`` search segment captions, see
``pipeline/search/hybrid.py``; image queries run in ``vector`` mode only). The caption index is built before them.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from operators.base import StrictModel
from operators.contract import Level
from pipeline.evaluation.manifests import ImageSpec, default_media_root, query_image
from pipeline.evaluation.metrics import Box4, Span, box_iou, overlaps, temporal_iou
from pipeline.search.hybrid import Mode
from pipeline.store import schema as S

TEXT_NEEDS_PRETRAINED = (
    "NOTE: text queries are meaningful only with pretrained weights; config '{name}' uses randomly initialised "
    "models, so its text-query numbers below are chance level."
)
CAPTIONS_NEED_PRETRAINED = (
    "NOTE: modes {modes} search segment captions; config '{name}' uses randomly initialised models, so its "
    "captions are meaningless text and these modes' numbers below carry no meaning."
)
NO_CAPTIONS = (
    "NOTE: config '{name}' stored no segment captions (the caption stage is off or absent) and no on-screen text, "
    "so modes {modes} find nothing by words: their numbers below measure nothing."
)


class BoxLabel(StrictModel):
    t: float
    box: Box4  # normalised x1, y1, x2, y2 on the upright frame


class QuerySpec(StrictModel):
    id: str
    video: str  # relative to the media root
    text: str | None = None
    image: ImageSpec | None = None
    relevant: list[Span] | None = None  # None: the whole video
    boxes: list[BoxLabel] = []


class Manifest(StrictModel):
    name: str = ""
    description: str = ""
    level: Level = "segments"
    videos: list[str] = []  # indexed besides the queries' videos (distractors)
    queries: list[QuerySpec]

    def all_videos(self) -> list[str]:
        return list(dict.fromkeys([*self.videos, *(q.video for q in self.queries)]))


def load_manifest(path: str | Path) -> Manifest:
    """A YAML manifest (mapping with ``queries``) or JSONL (one query per line)."""
    text = Path(path).read_text()
    if str(path).endswith(".jsonl"):
        queries = [json.loads(line) for line in text.splitlines() if line.strip()]
        return Manifest.model_validate({"name": Path(path).stem, "queries": queries})
    return Manifest.model_validate(yaml.safe_load(text))


# -- metrics (pure) -----------------------------------------------------------------------------------------
@dataclass
class Hit:
    path: str
    start: float
    end: float
    boxes: list[Box4] = field(default_factory=list)


def is_relevant(hit: Hit, video: str, spans: list[Span]) -> bool:
    return hit.path == video and any(overlaps((hit.start, hit.end), s) for s in spans)


def score_query(hits: list[Hit], video: str, spans: list[Span], boxes: list[Box4], hit_pad: float = 0.5) -> dict:
    """Rank of the first relevant hit (None: none in ``hits``), top-hit temporal IoU and box IoU.

    A zero-length hit (a frame) is widened by ``hit_pad`` seconds on each side for the IoU, so that a frame
    inside a relevant span scores above 0.
    """
    rank = next((i + 1 for i, h in enumerate(hits) if is_relevant(h, video, spans)), None)
    tiou = 0.0
    box = None
    if hits:
        top = hits[0]
        span = (top.start, top.end) if top.end > top.start else (top.start - hit_pad, top.end + hit_pad)
        if top.path == video:
            tiou = max(temporal_iou(span, s) for s in spans)
        if boxes:
            box = float(np.mean([max((box_iou(b, h) for h in top.boxes), default=0.0) for b in boxes]))
    return {"rank": rank, "tiou": tiou, "box_iou": box}


def summarize(scores: list[dict], k: int) -> dict[str, Any]:
    """R@1/5/10, median rank (misses rank k+1, shown as '>k'), mean temporal IoU, mean box IoU."""
    n = len(scores)
    ranks = [s["rank"] if s["rank"] is not None else math.inf for s in scores]
    med = statistics.median(ranks) if ranks else math.nan
    boxes = [s["box_iou"] for s in scores if s["box_iou"] is not None]
    return {
        "queries": n,
        "R@1": sum(r <= 1 for r in ranks) / n if n else math.nan,
        "R@5": sum(r <= 5 for r in ranks) / n if n else math.nan,
        "R@10": sum(r <= 10 for r in ranks) / n if n else math.nan,
        "median_rank": med if math.isfinite(med) else f">{k}",
        "mean_tIoU": float(np.mean([s["tiou"] for s in scores])) if n else math.nan,
        "mean_box_IoU": float(np.mean(boxes)) if boxes else None,
    }


# -- running ------------------------------------------------------------------------------------------------
def evaluate(
    manifest: Manifest,
    cfg: Any,
    media_root: str | Path,
    work_dir: str | Path,
    k: int = 10,
    index: bool = True,
    mode: Mode = "vector",
) -> dict[str, Any]:
    """Index the manifest's videos with ``cfg`` (into ``cfg.db.path``; complete videos are skipped) and score
    every query in search ``mode`` (``text``/``hybrid``: the text queries only). Ray must be started by the
    caller when ``index`` is true. Returns the summary plus, per query, its rank."""
    from pipeline.index.runner import run_index
    from pipeline.search.searcher import Searcher, SearchResult

    root = Path(media_root)
    videos = {v: os.path.abspath(root / v) for v in manifest.all_videos()}  # the catalog's form of a path
    missing = [v for v, p in videos.items() if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"manifest videos not under {root}: {', '.join(missing)}")
    if index:
        summary = run_index(cfg, list(videos.values()), progress=False)
        if summary.failed:
            raise RuntimeError(f"indexing failed for {summary.failures}")
    searcher = Searcher(cfg.db.path, cfg)
    queries = manifest.queries if mode == "vector" else [q for q in manifest.queries if q.text is not None]
    if mode != "vector" and searcher.store.exists(S.SEGMENTS):
        from pipeline.store.fts import ensure_word_indexes

        ensure_word_indexes(searcher.store.table(S.SEGMENTS))  # evaluate runs without `maintain`
    durations = {
        r["path"]: float(r["duration_s"])
        for r in searcher.store.complete_videos().select(["path", "duration_s"]).to_pylist()
    }
    cache = Path(work_dir) / "query_images"
    scores, per_query = [], []
    for q in queries:
        path = videos[q.video]
        image = query_image(path, q.image, cache) if q.image is not None else None
        results: list[SearchResult] = searcher.search(text=q.text, image=image, k=k, level=manifest.level, mode=mode)
        hits = [Hit(r.path, r.start_s, r.end_s, [tuple(b.box) for b in r.boxes]) for r in results]  # type: ignore[misc]
        spans = q.relevant if q.relevant is not None else [(0.0, durations.get(path, math.inf))]
        s = score_query(hits, path, spans, [b.box for b in q.boxes])
        scores.append(s)
        per_query.append({"id": q.id, **s})
    return {"summary": summarize(scores, k), "queries": per_query}


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """Configs side by side: one row per metric, one column per config."""
    names = list(results)
    metrics = list(next(iter(results.values()))["summary"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in metrics:
        cells = []
        for n in names:
            v = results[n]["summary"][m]
            cells.append("n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_configs(
    manifest_path: str | Path,
    configs: list[str],
    overrides: list[str],
    media_root: str | Path | None,
    work_dir: str | Path,
    k: int = 10,
    start_ray: Any = None,
    modes: list[str] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Evaluate ``manifest_path`` with each config (its own database under ``work_dir``, reused across runs:
    complete videos are skipped) in each search mode of ``modes`` (default: vector). ``start_ray(cfg)`` is
    called before the first indexing. Returns the results by config (and mode, when more than vector) and the
    notices to print (random weights with text queries or caption modes; no captions stored)."""
    from pipeline.config import load_config
    from pipeline.search.hybrid import check_modes
    from pipeline.store.lock import DatabaseLock

    run_modes = check_modes(modes)  # before anything is indexed
    manifest = load_manifest(manifest_path)
    root = Path(media_root) if media_root else default_media_root()
    results: dict[str, dict[str, Any]] = {}
    notices: list[str] = []
    for name in configs:
        cfg = load_config(name, overrides)
        db = Path(work_dir) / f"{Path(name).stem}-{cfg.pipeline_version()}"
        cfg = load_config(name, [*overrides, f"db.path={db}", "maintenance.after_index=false"])
        random = cfg.encoder.pretrained is None  # text queries need a trained encoder
        if random and any(q.text is not None for q in manifest.queries):
            notices.append(TEXT_NEEDS_PRETRAINED.format(name=name))
        label = f"{Path(name).stem}{' (random weights)' if random else ''}"
        with DatabaseLock(cfg.db.path, "evaluate", cfg.db.lock_dir):
            if start_ray is not None:
                start_ray(cfg)
            for i, mode in enumerate(run_modes):  # indexed once, searched in every mode
                key = label if run_modes == ["vector"] else f"{label} [{mode}]"
                results[key] = evaluate(manifest, cfg, root, work_dir, k=k, index=i == 0, mode=mode)
            notices += caption_notices(name, cfg.db.path, random, list(run_modes))
    return results, notices


def caption_notices(name: str, db: str, random: bool, modes: list[str]) -> list[str]:
    """What the numbers of the caption modes (text, hybrid) mean for config ``name``."""
    from pipeline.store.db import Store

    words = [m for m in modes if m != "vector"]
    if not words:
        return []
    store = Store(db)
    segments = store.table(S.SEGMENTS) if store.exists(S.SEGMENTS) else None

    def stored(column: str) -> bool:
        return (
            segments is not None
            and column in segments.schema.names
            and segments.count_rows(f"{column} IS NOT NULL") > 0
        )

    notes = [] if stored("caption") or stored("screen_text") else [NO_CAPTIONS.format(name=name, modes="/".join(words))]
    return notes + ([CAPTIONS_NEED_PRETRAINED.format(name=name, modes="/".join(words))] if random else [])
