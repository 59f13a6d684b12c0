"""On-screen text evaluation: clips with text drawn in at known times and places, OCR -> spans -> text search.

The manifest (``eval/ocr_text.yaml``, ``kind: ocr``) names real clips from the media root and the texts to draw
into them (ffmpeg ``drawtext``: font, size, colour, box, outline, motion). Clips are built at run time into the
work dir (cached by content of their spec). The ground-truth box of a text at a sampled time is the ink of that
text rendered alone on black with the same filter, so moving text is labelled exactly
(``pipeline/evaluation/ocr_clips.py``).

``evaluate_ocr`` decodes each clip at ``fps`` (the indexer's sampling), runs ``OcrFrames`` and ``text_spans``,
writes ``videos`` (complete) and ``texts`` tables into a LanceDB folder and queries them through
``TextSearcher``, once per tokenizer. Reported: R@1/R@5/R@10 and median rank of the first relevant hit (same
clip, span overlapping the drawn interval), mean temporal IoU of the top hit's span with the drawn interval,
mean box IoU of the top hit's box with the drawn text's ink at the hit's frame, the same per query kind
(exact / word / one-error), and the character error rate of the OCR (per drawn text and sampled frame where the
text is fully on screen: edit distance of the best-overlapping line to the drawn text, whitespace collapsed,
case kept, over the drawn length; a text not read counts 1).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from operators.base import StrictModel
from operators.ocr import OcrConfig, OcrFrames
from operators.text_spans import SpanConfig, text_spans
from pipeline.evaluation.metrics import box_iou, cer, overlaps, temporal_iou
from pipeline.evaluation.ocr_clips import ClipSpec, build_clip, decode_frames, ink_box


class OcrQuery(StrictModel):
    id: str
    clip: str
    target: int  # index of the drawn text in the clip
    kind: str = "exact"
    text: str


class OcrManifest(StrictModel):
    kind: Literal["ocr"]
    name: str = ""
    description: str = ""
    fps: float = 1.0
    clips: list[ClipSpec]
    queries: list[OcrQuery]


def load_ocr_manifest(path: str | Path) -> OcrManifest:
    return OcrManifest.model_validate(yaml.safe_load(Path(path).read_text()))


def is_ocr_manifest(path: str | Path) -> bool:
    if str(path).endswith(".jsonl"):
        return False
    data = yaml.safe_load(Path(path).read_text())
    return isinstance(data, dict) and data.get("kind") == "ocr"


# -- running ------------------------------------------------------------------------------------------------
def read_clip(ocr: OcrFrames, video_id: str, path: Path, fps: float) -> dict[str, Any]:
    """Decode at ``fps`` and OCR every sampled frame; also the CPU seconds spent in OCR."""
    t, idx, frames = decode_frames(path, fps)
    n = len(frames)
    batch = {"video_id": np.full(n, video_id), "t": np.asarray(t), "frame": frames, "error": np.full(n, "")}
    read_before = ocr.frames_read
    cpu = time.process_time()
    out = ocr(batch)
    cpu = time.process_time() - cpu
    return {
        "t": t,
        "frame_idx": idx,
        "texts": list(out["ocr_text"]),
        "boxes": list(out["ocr_boxes"]),
        "conf": list(out["ocr_conf"]),
        "cpu_s": cpu,
        "frames": n,
        "read": ocr.frames_read - read_before,
    }


def _gt_boxes(layer: Path, t: list[float], fps: float) -> list[tuple[float, float, float, float] | None]:
    lt, _, lf = decode_frames(layer, fps)
    return [ink_box(lf[int(np.argmin(np.abs(np.asarray(lt) - ti)))]) for ti in t]


def frame_cers(
    drawn: list[str],
    gts: list[list[tuple[float, float, float, float] | None]],
    texts: Sequence[Sequence[str]],
    boxes: Sequence[Any],
) -> list[float]:
    """The OCR's character error rates on one clip: per drawn text (``drawn``, its ink box per sampled frame in
    ``gts``) and sampled frame where it is fully on screen, the CER of the line read there (``texts``, ``boxes``:
    per sampled frame, boxes [N, 4] normalised) whose box best overlaps the ink (IoU > 0.1); none counts 1."""
    out = []
    for text, gt in zip(drawn, gts, strict=True):
        for i, box in enumerate(gt):
            if box is None or box[0] <= 0.001 or box[2] >= 0.999:  # absent, or cut by the frame edge
                continue
            lines = [(box_iou(box, _box4(b)), s) for s, b in zip(texts[i], boxes[i], strict=True)]
            best = max(lines, default=(0.0, ""))
            out.append(cer(text, best[1]) if best[0] > 0.1 else 1.0)
    return out


def evaluate_ocr(
    manifest: OcrManifest,
    media_root: str | Path,
    work_dir: str | Path,
    ocr_cfg: OcrConfig | None = None,
    span_cfg: SpanConfig | None = None,
    tokenizers: tuple[str, ...] = ("ngram", "word"),
    k: int = 10,
) -> dict[str, dict[str, Any]]:
    """Results per tokenizer: ``{"summary": {...}, "queries": [...]}`` (see the module docstring)."""
    from pipeline.search.text import TextSearchConfig, TextSearcher
    from pipeline.store import schema as S

    root, work = Path(media_root), Path(work_dir)
    ocr = OcrFrames(ocr_cfg or OcrConfig())
    ocr.setup()
    reads: dict[str, dict[str, Any]] = {}
    gts: dict[str, list[list[tuple[float, float, float, float] | None]]] = {}
    rows: list[dict[str, Any]] = []
    videos: list[dict[str, Any]] = []
    cers: list[float] = []
    for c in manifest.clips:
        path, layers = build_clip(c, root, work / "ocr_clips")
        vid = S.make_id("ocr-eval", c.id)
        r = reads[c.id] = read_clip(ocr, vid, path, manifest.fps)
        gts[c.id] = [_gt_boxes(layer, r["t"], manifest.fps) for layer in layers]
        rows += text_spans(
            vid,
            r["t"],
            r["frame_idx"],
            r["texts"],
            r["boxes"],
            r["conf"],
            span_cfg,
            step_s=1.0 / manifest.fps,
            duration_s=c.duration,
        )
        videos.append(_video_row(vid, c, str(path)))
        cers += frame_cers([d.text for d in c.texts], gts[c.id], r["texts"], r["boxes"])
    frames = sum(r["frames"] for r in reads.values())
    cost = {
        "ocr_cpu_ms_per_frame": 1000 * sum(r["cpu_s"] for r in reads.values()) / max(1, frames),
        "ocr_frames_read_share": sum(r["read"] for r in reads.values()) / max(1, frames),
        "CER": float(np.mean(cers)) if cers else math.nan,
    }
    boxes_at = _nearest_boxes({c: reads[c]["t"] for c in reads}, gts)
    results = {}
    for tok in tokenizers:
        db = _write_db(work / f"ocr-db-{tok}", videos, rows)
        searcher = TextSearcher(db, TextSearchConfig(tokenizer=tok))  # type: ignore[arg-type]
        vids = {c.id: S.make_id("ocr-eval", c.id) for c in manifest.clips}
        per_query = score_queries(searcher, manifest, vids, boxes_at, k)
        summary: dict[str, Any] = {
            **summarise_queries(per_query, k),
            **cost,
            "span CER": span_cer(manifest, vids, rows, boxes_at),
        }
        results[tok] = {"summary": summary, "queries": per_query}
    return results


BoxAt = Callable[[str, int, float], "tuple[float, float, float, float] | None"]  # (clip, target, t) -> drawn box


def _nearest_boxes(times: dict[str, list[float]], gts: dict[str, list[list[Any]]]) -> BoxAt:
    """The ground-truth box of a clip's drawn text at the sampled time nearest ``t``."""

    def box_at(clip: str, target: int, t: float) -> tuple[float, float, float, float] | None:
        return gts[clip][target][int(np.argmin(np.abs(np.asarray(times[clip]) - t)))]  # type: ignore[no-any-return]

    return box_at


def score_queries(
    searcher: Any, manifest: OcrManifest, vids: dict[str, str], box_at: BoxAt, k: int
) -> list[dict[str, Any]]:
    """Per query: rank of the first relevant hit (its clip's video, span overlapping the drawn interval), the top
    hit's temporal IoU with the drawn interval and box IoU with the drawn ink at the hit's frame."""
    clips = {c.id: c for c in manifest.clips}
    per_query = []
    for q in manifest.queries:
        c = clips[q.clip]
        d, vid = c.texts[q.target], vids[c.id]
        hits = searcher.search(q.text, k=k)
        rank = next(
            (
                i + 1
                for i, h in enumerate(hits)
                if h.video_id == vid and overlaps((h.start_s, h.end_s), (d.start, d.end))
            ),
            None,
        )
        tiou, biou = 0.0, (0.0 if not hits or hits[0].box is not None else None)  # None: hits without a box
        if hits and hits[0].video_id == vid:
            top = hits[0]
            tiou = temporal_iou((top.start_s, top.end_s), (d.start, min(d.end, c.duration)))
            gt_box = box_at(c.id, q.target, top.best_t)
            if top.box is not None:
                biou = box_iou(gt_box, _box4(top.box)) if gt_box is not None else 0.0
        per_query.append(
            {
                "id": q.id,
                "kind": q.kind,
                "rank": rank,
                "tiou": tiou,
                "box_iou": biou,
                "top": hits[0].text if hits else None,
            }
        )
    return per_query


def span_cer(manifest: OcrManifest, vids: dict[str, str], spans: list[dict[str, Any]], box_at: BoxAt) -> float:
    """Character error rate of the spans' texts (what the index holds): per drawn text, the span of its clip that
    overlaps its interval and whose box best overlaps the drawn ink at the span's best frame (IoU > 0.1); a drawn
    text without one counts 1."""
    out = []
    for c in manifest.clips:
        for i, d in enumerate(c.texts):
            best = (0.1, None)
            for r in spans:
                if r["video_id"] != vids[c.id] or not overlaps((r["start_s"], r["end_s"]), (d.start, d.end)):
                    continue
                gt = box_at(c.id, i, r["best_t"])
                iou = box_iou(gt, _box4(r["box"])) if gt is not None else 0.0
                if iou > best[0]:
                    best = (iou, r["text"])
            out.append(cer(d.text, best[1]) if best[1] is not None else 1.0)
    return float(np.mean(out)) if out else math.nan


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _box4(b: Any) -> tuple[float, float, float, float]:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def summarise_queries(per_query: list[dict[str, Any]], k: int) -> dict[str, Any]:
    ranks = [q["rank"] if q["rank"] is not None else math.inf for q in per_query]
    med = statistics.median(ranks) if ranks else math.nan
    out: dict[str, Any] = {
        "queries": len(per_query),
        "R@1": float(np.mean([r <= 1 for r in ranks])),
        "R@5": float(np.mean([r <= 5 for r in ranks])),
        "R@10": float(np.mean([r <= 10 for r in ranks])),
        "median_rank": med if math.isfinite(med) else f">{k}",
        "mean_tIoU": float(np.mean([q["tiou"] for q in per_query])),
        "mean_box_IoU": _mean([q["box_iou"] for q in per_query if q["box_iou"] is not None]),
    }
    for kind in sorted({q["kind"] for q in per_query}):
        sub = [q for q in per_query if q["kind"] == kind]
        out[f"R@1 {kind}"] = float(np.mean([q["rank"] == 1 for q in sub]))
        out[f"tIoU {kind}"] = float(np.mean([q["tiou"] for q in sub]))
    return out


def _video_row(vid: str, clip: ClipSpec, path: str) -> dict[str, Any]:
    import datetime as dt

    from pipeline.store import schema as S

    return {
        "video_id": vid,
        "fingerprint": vid,
        "path": path,
        "size_bytes": 0,
        "duration_s": clip.duration,
        "fps": 0.0,
        "n_frames": 0,
        "width": 0,
        "height": 0,
        "rotation": 0,
        "backend": "",
        "n_samples": 0,
        "status": S.STATUS_COMPLETE,
        "pipeline_version": "ocr-eval",
        "run_id": "ocr-eval",
        "indexed_at": dt.datetime.now(dt.UTC),
    }


def _write_db(path: Path, videos: list[dict[str, Any]], texts: list[dict[str, Any]]) -> str:
    """A fresh LanceDB folder holding ``videos`` and ``texts`` (what the indexer's writer will commit)."""
    import shutil

    import lancedb
    import pyarrow as pa

    from pipeline.store import schema as S

    shutil.rmtree(path, ignore_errors=True)
    db = lancedb.connect(str(path))
    db.create_table(S.VIDEOS, pa.Table.from_pylist(videos, schema=S.videos_schema()))
    # created from the schema, then filled: LanceDB's create_table infers vector widths from the data, and cannot
    # from an all-null multivector column (the texts' sentence vectors, not computed here)
    db.create_table(S.TEXTS, schema=S.texts_schema()).add(pa.Table.from_pylist(texts, schema=S.texts_schema()))
    return str(path)
