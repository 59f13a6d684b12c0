"""``evaluate --manifest eval/semantic.yaml``: search by meaning through the real pipeline, scored per mode.

The manifest's clips are built at run time: real recordings muxed into real clips (``speech_clips.py``) and
real clips with text drawn in (``ocr_clips.py``); they are indexed together on Ray by the pipeline with each
config (speech and on-screen text on) into a fresh database. Each query names its level (``speech`` or
``texts``), its clip, the words said or shown there (``said``) and a paraphrase (``text``) written without them.

- **Paraphrases**, searched at their level in each mode (``text``, ``vector``, ``hybrid``): a hit is right when it
  is the query's clip and overlaps the time ``said`` is said or shown; R@1, R@5, MRR and the tIoU of the top hit's
  span with that time.
- **Exact phrases**: ``said`` itself in hybrid mode, whose right hit must stay first (R@1).
- **Silence**: every query at its level restricted to the clips without speech or drawn text (``--video-id``
  filter): the number of hits, which must be 0.

When a phrase is said is read from a float32 reference run of the config's speech model on its clip (the
``Transcribe`` operator, not the index: the words of ``said`` in order, as ``speech.py`` does); when a text is
shown, from the manifest's drawn-text times.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml

from operators.base import StrictModel
from pipeline.evaluation.metrics import temporal_iou
from pipeline.evaluation.ocr_clips import ClipSpec, build_clip
from pipeline.evaluation.speech_clips import SpokenClip, build_spoken_clip

MODES = ("text", "vector", "hybrid")


class SemanticQuery(StrictModel):
    id: str
    level: Literal["speech", "texts"]
    clip: str
    said: str  # the words said (in order) or shown in the clip
    text: str  # the paraphrase, without those words


class SemanticManifest(StrictModel):
    kind: str = "semantic"
    spoken: list[SpokenClip] = []
    drawn: list[ClipSpec] = []
    overrides: list[str] = []  # config settings the evaluation needs (speech and OCR on)
    queries: list[SemanticQuery]


def load_semantic_manifest(path: str | Path) -> SemanticManifest:
    return SemanticManifest.model_validate(yaml.safe_load(Path(path).read_text()))


Span = tuple[float, float]


def truth_spans(manifest: SemanticManifest, clips: dict[str, Path], speech_model: str) -> dict[str, Span]:
    """Query id -> when its ``said`` is said (a float32 reference run of ``speech_model``) or shown (drawn)."""
    from operators.speech import SpeechConfig, Transcribe
    from pipeline.search.speech import match_words, tokens

    spoken = {q.clip for q in manifest.queries if q.level == "speech"}
    words: dict[str, list[dict[str, Any]]] = {}
    if spoken:
        op = Transcribe(SpeechConfig(model=speech_model, device="cpu", compute_type="float32"))
        op.setup()
        words = {c: [w for u in op.utterances(str(clips[c])) for w in u["words"]] for c in spoken}
    shown = {(c.id, d.text.lower()): (d.start, d.end) for c in manifest.drawn for d in c.texts}
    out = {}
    for q in manifest.queries:
        if q.level == "speech":
            found, _, hit = match_words(tokens(q.said), words[q.clip])
            if not found:
                raise ValueError(f"query {q.id}: the reference run does not say '{q.said}' in clip {q.clip}")
            out[q.id] = (float(hit[0]["start_s"]), float(hit[-1]["end_s"]))
        else:
            span = next((v for (c, t), v in shown.items() if c == q.clip and q.said.lower() in t), None)
            if span is None:
                raise ValueError(f"query {q.id}: no text drawn in clip {q.clip} holds '{q.said}'")
            out[q.id] = span
    return out


def first_right(hits: list[tuple[str, Span]], clip: str, truth: Span) -> tuple[int, float]:
    """(rank of the first right hit, 0 if none; tIoU of the top hit's span with the truth, 0 if it is wrong)."""
    right = [i for i, (c, span) in enumerate(hits, 1) if c == clip and temporal_iou(span, truth) > 0]
    top = temporal_iou(hits[0][1], truth) if hits and hits[0][0] == clip else 0.0
    return (right[0] if right else 0), top


def evaluate_semantic(
    manifest: SemanticManifest, cfg: Any, clips: dict[str, Path], quiet: list[str], k: int
) -> dict[str, Any]:
    """Index ``clips`` with ``cfg`` and score the queries (see the module docstring); ``quiet``: the clips
    without speech or drawn text."""
    from pipeline.index.runner import run_index
    from pipeline.search.searcher import Searcher

    truth = truth_spans(manifest, clips, cfg.speech.model)
    summary = run_index(cfg, [str(p) for p in clips.values()], progress=False)
    searcher = Searcher(cfg.db.path, cfg)
    vid = {r["path"]: r["video_id"] for r in searcher.store.complete_videos().to_pylist()}
    clip_of = {vid[str(p)]: c for c, p in clips.items() if str(p) in vid}
    texts = searcher.texts_searcher()

    def search(level: str, text: str, mode: str, filters: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
        if level == "speech":
            hits = searcher.search(text, level="speech", k=k, mode=mode, filters=filters)  # type: ignore[arg-type]
        else:
            hits = texts.search(text, k, filters, mode, cfg.search.rrf_k)  # type: ignore[assignment]
        return [(clip_of.get(h.video_id, ""), (h.start_s, h.end_s)) for h in hits]

    silent = {"video_ids": [vid[str(clips[c])] for c in quiet if str(clips[c]) in vid]}
    rows: list[dict[str, Any]] = []
    for q in manifest.queries:
        row: dict[str, Any] = {"id": q.id, "level": q.level, "text": q.text, "said": q.said, "at": truth[q.id]}
        for mode in MODES:
            row[f"{mode}_rank"], row[f"{mode}_tiou"] = first_right(search(q.level, q.text, mode), q.clip, truth[q.id])
        row["exact_rank"], _ = first_right(search(q.level, q.said, "hybrid"), q.clip, truth[q.id])
        row["silent_hits"] = len(search(q.level, q.text, "hybrid", silent)) if silent["video_ids"] else 0
        rows.append(row)
    n = max(1, len(rows))

    def recall(key: str, at: int) -> float:
        return sum(1 for r in rows if 0 < r[key] <= at) / n

    out: dict[str, Any] = {}
    for mode in MODES:
        out[f"{mode} R@1"] = recall(f"{mode}_rank", 1)
        out[f"{mode} R@5"] = recall(f"{mode}_rank", 5)
        out[f"{mode} MRR"] = sum(1.0 / r[f"{mode}_rank"] for r in rows if r[f"{mode}_rank"]) / n
        out[f"{mode} tIoU"] = sum(r[f"{mode}_tiou"] for r in rows) / n
    out["exact phrase hybrid R@1"] = recall("exact_rank", 1)
    out["hits on silent clips"] = sum(r["silent_hits"] for r in rows)
    out["queries"] = len(rows)
    out["utterances"] = summary.speech
    out["text spans"] = summary.texts
    return {"summary": out, "queries": rows}


def run_semantic_configs(
    manifest_path: str | Path,
    configs: list[str],
    overrides: list[str],
    media_root: str | Path | None,
    work_dir: str | Path,
    k: int = 5,
    start_ray: Any = None,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``evaluate`` for a semantic manifest: results by config (each indexed into a fresh database), notices."""
    from pipeline.config import load_config
    from pipeline.evaluation.manifests import default_media_root

    manifest = load_semantic_manifest(manifest_path)
    root, work = Path(media_root) if media_root else default_media_root(), Path(work_dir)
    clips = {c.id: build_spoken_clip(c, root, work / "speech-clips") for c in manifest.spoken}
    clips |= {c.id: build_clip(c, root, work / "ocr-clips")[0] for c in manifest.drawn}
    quiet = [c.id for c in manifest.spoken if c.audio is None and c.id not in {d.id for d in manifest.drawn}]
    quiet += [c.id for c in manifest.drawn if not c.texts]
    results = {}
    for name in configs:
        db = Path(tempfile.mkdtemp(prefix="semantic-", dir=work))
        try:
            cfg = load_config(name, [*manifest.overrides, *overrides, f"db.path={db / 'db'}"])
            if not cfg.text_embed.enabled or cfg.speech.model == "none":
                raise ValueError(f"config {name} needs text_embed.model and speech.model set to evaluate meaning")
            if start_ray is not None:
                start_ray(cfg)
            results[f"{Path(name).stem} {cfg.text_embed.model}"] = evaluate_semantic(manifest, cfg, clips, quiet, k)
        finally:
            shutil.rmtree(db, ignore_errors=True)
    notices = [
        "NOTE: clips built with ffmpeg (real recordings muxed into real clips; text drawn into real clips), indexed "
        "by the pipeline on Ray into a fresh database per config; paraphrases avoid the words said or shown; a hit "
        "is right when it is the clip and overlaps when the words are said (word times of a float32 reference run) "
        "or shown (the drawn times)."
    ]
    return results, notices
