"""``evaluate --manifest eval/speech.yaml``: speech through the real pipeline, scored.

The manifest's clips are built at run time (``speech_clips.py``: a real recording muxed into a real clip with the
ffmpeg CLI) and indexed on Ray by the pipeline with each config (its own fresh database). Then:

- **WER** per clip with a reference text: the stored utterances of the clip, in time order, against the reference,
  both normalised (``words_of``: case, punctuation and dashes dropped; the reading has no numbers to normalise).
- **Spoken-phrase queries**, through ``search --level speech`` and segments ``--mode text`` (``rerank none``):
  a hit is right when it is the query's clip and overlaps the time the phrase is said; R@1, R@5 and the tIoU of
  the top hit's span with it (speech: the matched words' span, and the whole utterance's; segments: the segment's).
  When the phrase is said is read from **a float32 reference run** of the same model, transcribed here with the
  ``Transcribe`` operator (not through the index): the words of the phrase found in order in its word times. So
  the spans are Whisper's word timestamps, not hand labels, and do not move with the compute type evaluated.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from operators.base import StrictModel
from pipeline.evaluation.metrics import temporal_iou, wer
from pipeline.evaluation.speech_clips import SpokenClip, build_spoken_clip, words_of


class SpokenQuery(StrictModel):
    id: str
    clip: str
    text: str  # a phrase said in the clip (words in order)


class SpeechManifest(StrictModel):
    kind: str = "speech"
    clips: list[SpokenClip]
    references: dict[str, str] = {}  # clip id -> reference text file (relative to the media root)
    queries: list[SpokenQuery]


def load_speech_manifest(path: str | Path) -> SpeechManifest:
    return SpeechManifest.model_validate(yaml.safe_load(Path(path).read_text()))


def phrase_spans(manifest: SpeechManifest, clips: dict[str, Path], model: str) -> dict[str, tuple[float, float]]:
    """Query id -> when its phrase is said, from a float32 run of ``model`` on its clip (the first place its words
    are said in order)."""
    from operators.speech import SpeechConfig, Transcribe
    from pipeline.search.speech import match_words, tokens

    op = Transcribe(SpeechConfig(model=model, device="cpu", compute_type="float32"))
    op.setup()
    asked = {q.clip for q in manifest.queries}
    said = {c: [w for u in op.utterances(str(clips[c])) for w in u["words"]] for c in asked}
    out = {}
    for q in manifest.queries:
        found, _, words = match_words(tokens(q.text), said[q.clip])
        if not found:
            raise ValueError(f"query {q.id}: the reference run does not say '{q.text}' in clip {q.clip}")
        out[q.id] = (float(words[0]["start_s"]), float(words[-1]["end_s"]))
    return out


def _score(hits: list[tuple[str, tuple[float, float]]], clip: str, truth: tuple[float, float]) -> tuple[int, float]:
    """(rank of the first right hit, 0 if none; tIoU of the top hit's span with the truth, 0 if it is wrong)."""
    right = [i for i, (vid, span) in enumerate(hits, 1) if vid == clip and temporal_iou(span, truth) > 0]
    top = temporal_iou(hits[0][1], truth) if hits and hits[0][0] == clip else 0.0
    return (right[0] if right else 0), top


def evaluate_speech(manifest: SpeechManifest, cfg: Any, clips: dict[str, Path], root: Path, k: int) -> dict[str, Any]:
    """Index ``clips`` with ``cfg`` and score WER and the phrase queries (see the module docstring)."""
    from pipeline.index.runner import run_index
    from pipeline.search.searcher import Searcher
    from pipeline.store import schema as S

    truth = phrase_spans(manifest, clips, cfg.speech.model)  # first: a query the recording does not say stops here
    summary = run_index(cfg, [str(p) for p in clips.values()], progress=False)
    searcher = Searcher(cfg.db.path, cfg)
    store = searcher.store
    vid = {r["path"]: r["video_id"] for r in store.complete_videos().to_pylist()}
    clip_of = {vid[str(p)]: c for c, p in clips.items() if str(p) in vid}
    per_clip: dict[str, Any] = {}
    for c, ref in manifest.references.items():
        rows = store.rows(S.SPEECH, f"video_id = '{vid[str(clips[c])]}'").to_pylist()
        hyp = " ".join(r["text"] for r in sorted(rows, key=lambda r: r["start_s"]))
        per_clip[c] = {"wer": wer(words_of((root / ref).read_text()), words_of(hyp)), "transcript": hyp}
    queries: list[dict[str, Any]] = []
    for q in manifest.queries:
        said = searcher.search(q.text, level="speech", k=k)
        segs = searcher.search(q.text, mode="text", rerank="none", k=k)
        span = truth[q.id]
        rank_w, tiou_w = _score([(clip_of.get(h.video_id, ""), _words_span(h)) for h in said], q.clip, span)
        _, tiou_u = _score([(clip_of.get(h.video_id, ""), (h.start_s, h.end_s)) for h in said], q.clip, span)
        rank_s, tiou_s = _score([(clip_of.get(h.video_id, ""), (h.start_s, h.end_s)) for h in segs], q.clip, span)
        queries.append(
            {"id": q.id, "text": q.text, "said_at": truth[q.id], "speech_rank": rank_w, "speech_tiou_words": tiou_w,
             "speech_tiou_utterance": tiou_u, "segments_rank": rank_s, "segments_tiou": tiou_s,
             "top_speech": said[0].text if said else None}
        )  # fmt: skip
    n = max(1, len(queries))

    def recall(key: str, at: int) -> float:
        return sum(1 for x in queries if 0 < x[key] <= at) / n

    def mean(key: str) -> float:
        return sum(float(x[key]) for x in queries) / n

    wers = [v["wer"] for v in per_clip.values()]
    return {
        "summary": {
            "WER": sum(wers) / len(wers) if wers else None,
            "speech R@1": recall("speech_rank", 1),
            "speech R@5": recall("speech_rank", 5),
            "speech tIoU (matched words)": mean("speech_tiou_words"),
            "speech tIoU (utterance)": mean("speech_tiou_utterance"),
            "segments text R@1": recall("segments_rank", 1),
            "segments text R@5": recall("segments_rank", 5),
            "segments text tIoU": mean("segments_tiou"),
            "utterances": summary.speech,
            "queries": len(queries),
        },
        "clips": per_clip,
        "queries": queries,
    }


def _words_span(hit: Any) -> tuple[float, float]:
    words = hit.words or []
    if not words:
        return (hit.start_s, hit.end_s)
    return (float(words[0]["start_s"]), float(words[-1]["end_s"]))


def run_speech_configs(
    manifest_path: str | Path,
    configs: list[str],
    overrides: list[str],
    media_root: str | Path | None,
    work_dir: str | Path,
    k: int = 5,
    start_ray: Any = None,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``evaluate`` for a speech manifest: results by config (each indexed into a fresh database) and the notices."""
    from pipeline.config import load_config
    from pipeline.evaluation.manifests import default_media_root

    manifest = load_speech_manifest(manifest_path)
    root, work = Path(media_root) if media_root else default_media_root(), Path(work_dir)
    clips = {c.id: build_spoken_clip(c, root, work / "speech-clips") for c in manifest.clips}
    results = {}
    for name in configs:
        db = Path(tempfile.mkdtemp(prefix="speech-", dir=work))
        try:
            cfg = load_config(name, [*overrides, f"db.path={db / 'db'}"])
            if cfg.speech.model == "none":
                raise ValueError(f"config {name} has speech.model none: nothing to evaluate (--set speech.model=...)")
            if start_ray is not None:
                start_ray(cfg)
            label = f"{Path(name).stem} {cfg.speech.model} {cfg.speech.compute_type or 'auto'}"
            results[label] = evaluate_speech(manifest, cfg, clips, root, k)
        finally:
            shutil.rmtree(db, ignore_errors=True)
    notices = [
        "NOTE: clips built with ffmpeg (a real recording muxed into a real clip), indexed by the pipeline on Ray into "
        "a fresh database per config; WER over the stored utterances (case and punctuation dropped); a phrase hit "
        "is right when it is the clip and overlaps the time the phrase is said, read from the word times of a "
        "float32 run of the same model (not hand labels); segments searched in --mode text with rerank none."
    ]
    return results, notices
