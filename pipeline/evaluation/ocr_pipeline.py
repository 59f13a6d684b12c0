"""On-screen text evaluation through the real pipeline, and the ``evaluate`` entry for ``kind: ocr`` manifests.

Two modes, reported side by side under their own labels:

- ``pipeline`` (the default): the manifest's clips are indexed on Ray by ``Runner`` into a fresh LanceDB folder,
  exactly as ``run_pipeline.py index`` would (decode -> OCR stage -> assembler -> text spans -> commit), then
  queried through ``TextSearcher``. The config is the named one's ``decode``, ``ocr`` and ``spans`` sections
  (``decode.fps`` set to the manifest's) with the tiny config's models for the stages that read no text (the
  encoder; detection is off): they change no text result, and the default encoder's trained weights need a
  download. Cost: Ray Data's CPU seconds per graph stage and the driver's.
- ``direct``: the clips are decoded and ``OcrFrames`` + ``text_spans`` run in this process
  (``pipeline/evaluation/ocr.py``, ``evaluate_ocr``).

The pipeline mode also searches the indexed **segments** in ``--mode text`` (``segments`` column: the words read
on a segment's frames, ``segments.screen_text``, found through its n-gram index; see ``pipeline/search/hybrid.py``): a
hit is relevant when it is the query's clip and overlaps the drawn interval; its tIoU is the segment window's
against that interval (segments are coarser than text spans), and it has no box.

Both report the per-frame OCR character error rate (``frame_cers``: in pipeline mode on the readings the index
stores with each frame, ``frames.text_lines``) and the spans' (``span CER``).

``--set eval.mode=pipeline|direct|both`` chooses; ``text_search.tokenizer`` picks one tokenizer (default both).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.config import Config
from pipeline.evaluation.ocr import (
    BoxAt,
    OcrManifest,
    evaluate_ocr,
    frame_cers,
    load_ocr_manifest,
    score_queries,
    span_cer,
    summarise_queries,
)
from pipeline.evaluation.ocr_clips import build_clip, decode_frames, ink_box

MODES = ("pipeline", "direct", "both")
EVAL_ONLY = ("text_search", "eval")  # override sections read here, not by the pipeline config


def pipeline_config(name: str, overrides: list[str], db: Path, fps: float) -> Config:
    """``name``'s decode, OCR and span settings on the tiny config's models, detection off, writing to ``db``."""
    from pipeline.config import load_config

    text = load_config(name, overrides)
    base = load_config("tiny", [f"db.path={db}", "maintenance.after_index=false", "detect.enabled=false"])
    decode = text.decode.model_copy(update={"fps": fps})
    return base.model_copy(update={"decode": decode, "ocr": text.ocr, "spans": text.spans})


def evaluate_ocr_pipeline(
    manifest: OcrManifest,
    media_root: Path,
    work_dir: Path,
    cfg: Config,
    tokenizers: tuple[str, ...] = ("ngram", "word"),
    k: int = 10,
) -> dict[str, dict[str, Any]]:
    """Index the manifest's clips with ``cfg`` (its ``db.path`` must be a fresh folder), then score the queries
    on what the index holds. Results per tokenizer: ``{"summary": {...}, "queries": [...], "run": {...}}``."""
    from pipeline.index.runner import run_index
    from pipeline.search.text import TextSearchConfig, TextSearcher
    from pipeline.store import schema as S
    from pipeline.store.db import Store
    from pipeline.store.fts import ensure_text_index

    fps = cfg.decode.fps
    built = {c.id: build_clip(c, media_root, work_dir / "ocr_clips") for c in manifest.clips}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = run_index(cfg, [str(video) for video, _ in built.values()], progress=False)
    driver_cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if summary.failed:
        raise RuntimeError(f"indexing the OCR clips failed: {summary.failures}")
    store = Store(cfg.db.path)
    rows = store.rows(S.VIDEOS, None, ["path", "video_id"]).to_pylist()
    by_path = {os.path.realpath(r["path"]): r["video_id"] for r in rows}
    vids = {cid: by_path[os.path.realpath(video)] for cid, (video, _) in built.items()}
    spans = store.rows(S.TEXTS).to_pylist()

    layers: dict[str, tuple[np.ndarray, list[Any]]] = {}
    for cid, (_, paths) in built.items():
        for i, layer in enumerate(paths):
            lt, _, lf = decode_frames(layer, fps)
            layers[f"{cid}/{i}"] = (np.asarray(lt), lf)

    def box_at(clip: str, target: int, t: float) -> tuple[float, float, float, float] | None:
        lt, lf = layers[f"{clip}/{target}"]
        return ink_box(lf[int(np.argmin(np.abs(lt - t)))])

    stages = summary.graph_stages
    graph_cpu = sum(s["cpu_s"] for s in stages.values())
    ocr_cpu = sum(s["cpu_s"] for name, s in stages.items() if "ocr" in name.split("+"))
    cost: dict[str, Any] = {
        "frames": summary.frames,
        "text spans": summary.texts,
        "index wall s": round(wall, 1),
        "graph CPU s": round(graph_cpu, 1),
        "OCR stage CPU s": round(ocr_cpu, 1),  # with any stage Ray fused into it (the name says which)
        "driver CPU s": round(driver_cpu, 1),
    }
    cer = span_cer(manifest, vids, spans, box_at)
    frame_cer = stored_frame_cer(store, manifest, vids, box_at)
    results: dict[str, dict[str, Any]] = {}
    for tok in tokenizers:
        ensure_text_index(store.table(S.TEXTS), tok, replace=True)  # type: ignore[arg-type]
        searcher = TextSearcher(store, TextSearchConfig(tokenizer=tok))  # type: ignore[arg-type]
        per_query = score_queries(searcher, manifest, vids, box_at, k)
        results[tok] = {
            "summary": {**summarise_queries(per_query, k), "CER": frame_cer, "span CER": cer, **cost},
            "queries": per_query,
            "run": {"graph_stages": stages, "stages": summary.stages},
        }
    from pipeline.search.searcher import Searcher
    from pipeline.store.fts import ensure_word_indexes

    ensure_word_indexes(store.table(S.SEGMENTS))  # evaluate runs without `maintain`
    per_query = score_queries(SegmentTextSearch(Searcher(store, cfg)), manifest, vids, box_at, k)
    results["segments"] = {
        "summary": {**summarise_queries(per_query, k), "CER": frame_cer, "span CER": cer, **cost},
        "queries": per_query,
        "run": {"graph_stages": stages, "stages": summary.stages},
    }
    return results


class SegmentTextSearch:
    """``Searcher.search(mode="text")`` over segments with the ``TextSearcher.search`` call shape that
    ``score_queries`` uses; a hit's ``text`` is the segment's screen text, its time the window's middle."""

    def __init__(self, searcher: Any) -> None:
        self.searcher = searcher

    def search(self, text: str, k: int = 10) -> list[Any]:
        from types import SimpleNamespace

        hits = self.searcher.search(text=text, k=k, mode="text", rerank=None)
        return [
            SimpleNamespace(
                video_id=h.video_id,
                start_s=h.start_s,
                end_s=h.end_s,
                best_t=(h.start_s + h.end_s) / 2,
                box=None,
                text=h.screen_text,
            )
            for h in hits
        ]


def stored_frame_cer(store: Any, manifest: OcrManifest, vids: dict[str, str], box_at: BoxAt) -> float:
    """``frame_cers`` over the readings stored on the indexed frames (``frames.text_lines``), in time order."""
    from pipeline.store import schema as S
    from pipeline.store.db import in_list

    where = in_list("video_id", list(vids.values()))
    rows = store.rows(S.FRAMES, where, ["video_id", "t", "text_lines"]).to_pylist()
    cers: list[float] = []
    for c in manifest.clips:
        frames = sorted((r for r in rows if r["video_id"] == vids[c.id]), key=lambda r: r["t"])
        lines = [r["text_lines"] or [] for r in frames]
        gts = [[box_at(c.id, i, r["t"]) for r in frames] for i in range(len(c.texts))]
        texts = [[line["text"] for line in ls] for ls in lines]
        boxes = [[(line["x1"], line["y1"], line["x2"], line["y2"]) for line in ls] for ls in lines]
        cers += frame_cers([d.text for d in c.texts], gts, texts, boxes)
    return float(np.mean(cers)) if cers else float("nan")


def run_ocr_configs(
    manifest_path: str | Path,
    configs: list[str],
    overrides: list[str],
    media_root: str | Path | None,
    work_dir: str | Path,
    k: int = 10,
    start_ray: Any = None,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``evaluate`` for an OCR manifest: results by label (``pipeline <config>/texts/<tokenizer>``,
    ``pipeline <config>/segments/text mode``, ``direct <config>/texts/<tokenizer>``) and the notices to print.
    Overrides: any config key (``ocr.*``, ``spans.*``, ``decode.*``...), ``text_search.tokenizer=ngram|word`` and
    ``eval.mode=pipeline|direct|both``."""
    from pipeline.evaluation.manifests import default_media_root

    extra: dict[str, dict[str, Any]] = {s: {} for s in EVAL_ONLY}
    cfg_overrides = []
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section in extra:
            extra[section][name] = yaml.safe_load(value)
        else:
            cfg_overrides.append(item)
    mode = str(extra["eval"].get("mode", "pipeline"))
    if mode not in MODES or set(extra["eval"]) - {"mode"}:
        raise ValueError(f"eval.mode must be one of {', '.join(MODES)} (no other eval.* keys)")
    tok = extra["text_search"].get("tokenizer")
    tokenizers = (str(tok),) if tok else ("ngram", "word")
    manifest = load_ocr_manifest(manifest_path)
    root, work = Path(media_root) if media_root else default_media_root(), Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    notices = []
    for name in configs:
        label = Path(name).stem
        if mode in ("pipeline", "both"):
            db = Path(tempfile.mkdtemp(prefix="ocr-pipeline-", dir=work))
            try:
                cfg = pipeline_config(name, cfg_overrides, db / "db", manifest.fps)
                if start_ray is not None:
                    start_ray(cfg)
                for t, r in evaluate_ocr_pipeline(manifest, root, work, cfg, tokenizers, k).items():
                    level = "segments/text mode" if t == "segments" else f"texts/{t}"
                    results[f"pipeline {label}/{level}"] = r
            finally:
                shutil.rmtree(db, ignore_errors=True)
        if mode in ("direct", "both"):
            from pipeline.config import load_config

            cfg = load_config(name, cfg_overrides)
            for t, r in evaluate_ocr(manifest, root, work, cfg.ocr, cfg.spans, tokenizers=tokenizers, k=k).items():
                results[f"direct {label}/texts/{t}"] = r
    if mode in ("pipeline", "both"):
        notices.append(
            "NOTE: 'pipeline' columns: the clips indexed on Ray by the real pipeline into a fresh database (the "
            "config's decode/OCR/span settings, decode.fps = the manifest's; tiny models for the encoder, detection "
            "off: they read no text), then searched with TextSearcher (texts) and in --mode text (segments, by the "
            "words read on their frames; tIoU of the segment window, no box). CER is per sampled frame, on the "
            "readings the index stores with each frame (frames.text_lines); 'span CER' is the spans' text."
        )
    if mode in ("direct", "both"):
        notices.append(
            "NOTE: 'direct' columns: clips decoded at the manifest's fps, OcrFrames + text_spans run in this process "
            "(not through Ray), written to a LanceDB folder and searched with TextSearcher; CER is per sampled frame."
        )
    keys = list(dict.fromkeys(m for r in results.values() for m in r["summary"]))  # the same rows in every column
    for r in results.values():
        r["summary"] = {m: r["summary"].get(m) for m in keys}
    return results, notices
