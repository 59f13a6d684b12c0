"""Temporal IoU of segment hits through the whole pipeline (``evaluate --manifest eval/shots.yaml --pipeline``).

``pipeline/evaluation/shots.py`` scores shot boundaries and computes tIoU on windows directly; this indexes the
manifest's hard-cut composites with the real pipeline once per shot detector (``none`` always: fixed windows)
and asks segments-level near-duplicate queries: for every point ``t`` of the 1 fps grid of a composite, the
composite's frame nearest ``t`` re-encoded as JPEG (quality 50) searches the segments of that composite (a
``video_ids`` filter: composites share source clips, so another composite's copy of a scene is a right answer
with no span to compare), stage 1 only. The top hit's span is scored against the true shot holding ``t``:

  tIoU segment      the hit segment's own ``start_s``..``end_s`` (fixed windows without shots, shot-aligned
                    windows with them)
  tIoU shot span    the hit's ``shot_start_s``..``shot_end_s`` (the new segment columns; n/a without shots)
  hit holds t       the share of hits whose segment contains ``t`` (is the right moment found at all)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from operators.shots import ShotConfig
from pipeline.evaluation.manifests import ImageSpec, query_image
from pipeline.evaluation.metrics import temporal_iou
from pipeline.evaluation.shots import ShotClip, ShotManifest, build_clip, detector_label
from pipeline.search.searcher import Searcher

JPEG_QUALITY = 50


def span_tious(searcher: Searcher, clips: list[tuple[ShotClip, str]], cache: Path) -> dict[str, Any]:
    """Query every 1 fps point of each ``(clip, path)`` (indexed in ``searcher``'s database) and average the
    tIoU of the top segment hit with the true shot (see the module docstring)."""
    ids = {
        os.path.abspath(r["path"]): r["video_id"]
        for r in searcher.store.complete_videos().select(["path", "video_id"]).to_pylist()
    }
    seg, shot, holds = [], [], []
    for clip, path in clips:
        starts = [0.0, *(a for a, _ in clip.transitions())]
        length = clip.length()
        spans = list(zip(starts, [*starts[1:], length], strict=True))
        video_id = ids[os.path.abspath(path)]
        for t in np.arange(0.0, length - 1e-9, 1.0):
            true = spans[int(np.searchsorted(starts, t, side="right")) - 1]
            image = query_image(path, ImageSpec(t=float(t), jpeg_quality=JPEG_QUALITY), cache)
            hits = searcher.search(image=image, k=1, level="segments", filters={"video_ids": [video_id]}, rerank=None)
            if not hits:
                seg.append(0.0)
                holds.append(0.0)
                continue
            hit = hits[0]
            seg.append(temporal_iou((hit.start_s, hit.end_s), true))
            holds.append(float(hit.start_s - 1e-6 <= t < hit.end_s - 1e-6))
            if hit.shot_start_s is not None and hit.shot_end_s is not None:
                shot.append(temporal_iou((hit.shot_start_s, hit.shot_end_s), true))
    return {
        "queries": len(seg),
        "tIoU segment": float(np.mean(seg)) if seg else None,
        "tIoU shot span": float(np.mean(shot)) if shot and len(shot) == len(seg) else None,
        "hit holds t": float(np.mean(holds)) if holds else None,
    }


def evaluate_shots_pipeline(
    manifest: ShotManifest,
    config: str,
    overrides: list[str],
    media_root: str | Path,
    work_dir: str | Path,
    detectors: list[Any] | None = None,
    start_ray: Callable[[Any], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Index the manifest's ``hard`` composites with ``config`` once per detector (``none`` first, then
    ``detectors``, default the manifest's) and score segment hits (``span_tious``). Databases live under
    ``work_dir`` keyed by the pipeline version, so a rerun skips indexed videos."""
    from pipeline.config import load_config
    from pipeline.index.runner import run_index
    from pipeline.store.lock import DatabaseLock

    cache = Path(work_dir) / "shot_clips"
    clips = [(c, str(build_clip(c, manifest, Path(media_root), cache))) for c in manifest.clips if c.category == "hard"]
    if not clips:
        raise ValueError("the manifest has no clips of category 'hard' to query")
    specs: list[Any] = ["none", *[d for d in (detectors or manifest.detectors) if d != "none"]]
    results: dict[str, dict[str, Any]] = {}
    started = False
    for spec in specs:
        shots = ShotConfig.model_validate(spec)
        options = {"detector": shots.detector, **shots.model_dump(exclude_defaults=True)}
        sets = [*overrides, f"segments.shots={json.dumps(options)}"]
        cfg = load_config(config, sets)
        db = Path(work_dir) / f"shots-pipeline-{Path(config).stem}-{cfg.pipeline_version()}"
        cfg = load_config(config, [*sets, f"db.path={db}", "maintenance.after_index=false"])
        with DatabaseLock(cfg.db.path, "evaluate", cfg.db.lock_dir):
            if start_ray is not None and not started:
                start_ray(cfg)
                started = True
            summary = run_index(cfg, [os.path.abspath(p) for _, p in clips], progress=False)
            if summary.failed:
                raise RuntimeError(f"indexing failed for {summary.failures}")
            scores = span_tious(Searcher(cfg.db.path, cfg), clips, Path(work_dir) / "query_images")
        label = "fixed windows (none)" if shots.detector == "none" else detector_label(shots)
        results[label] = {"summary": {"segments window_s": cfg.segments.window_s, **scores}}
    return results


def run_shots_pipeline(
    manifest_path: str | Path,
    config: str,
    overrides: list[str],
    detectors: list[str] | None,
    media_root: str | Path | None,
    work_dir: str | Path,
    start_ray: Callable[[Any], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """``evaluate --manifest <shots manifest> --pipeline``: ``detectors`` are YAML strings (None: the manifest's)."""
    import yaml

    from pipeline.evaluation.manifests import default_media_root
    from pipeline.evaluation.shots import load_shot_manifest

    specs = [yaml.safe_load(d) for d in detectors] if detectors else None
    root = Path(media_root) if media_root else default_media_root()
    return evaluate_shots_pipeline(
        load_shot_manifest(manifest_path), config, overrides, root, work_dir, specs, start_ray
    )
