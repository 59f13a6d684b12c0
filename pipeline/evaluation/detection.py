"""Detection evaluation: precision, recall and AP50 of the configured detector against MOTChallenge ground truth
(``kind: detection`` manifests, e.g. ``eval/detection.yaml`` over ``mot17_mini``), at each input size asked for.

Ground truth (MOT17 ``gt.txt``: frame, id, left, top, width, height, flag, class, visibility): the boxes with
flag 1 and a class in ``classes`` (1, pedestrian) are the objects to find. Boxes of the classes in ``ignore``
(person on vehicle, static person, distractor, reflection) and flag-0 rows are regions a detection may hit
without counting as a false positive, as the MOT evaluation does. Matching is greedy by confidence, one
ground-truth box per detection, at IoU >= ``iou``.

- P and R: the detections at the config's ``detect.conf``.
- AP50: the area under the precision/recall curve of every detection down to ``ap_conf`` (all-point
  interpolation, as COCO and VOC 2010+), over all frames of all sequences together.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from operators.base import StrictModel
from pipeline.evaluation.metrics import box_iou, prf

Box4 = tuple[float, float, float, float]


class DetectionManifest(StrictModel):
    kind: str = "detection"
    name: str = ""
    description: str = ""
    sequences: list[str]  # MOT17 sequence folders relative to the media root (img1/, gt/gt.txt)
    label: str = "person"  # the detector's class name scored
    classes: list[int] = [1]  # MOT17 classes that are the objects to find
    ignore: list[int] = [2, 7, 8, 12]  # MOT17 classes whose boxes are neither found nor false positives
    imgsz: list[int] = []  # input sizes to score; none: the config's detect.imgsz
    iou: float = 0.5
    ap_conf: float = 0.01  # detections below this are left out of the AP curve


def load_detection_manifest(path: str | Path) -> DetectionManifest:
    return DetectionManifest.model_validate(yaml.safe_load(Path(path).read_text()))


def read_gt(seq: Path, m: DetectionManifest) -> tuple[dict[int, list[Box4]], dict[int, list[Box4]]]:
    """Per frame number: the boxes to find and the ignore regions, in pixels (x1, y1, x2, y2)."""
    find: dict[int, list[Box4]] = {}
    ignore: dict[int, list[Box4]] = {}
    with open(seq / "gt" / "gt.txt", newline="") as f:
        for row in csv.reader(f):
            frame, _, left, top, w, h, flag, cls = (float(v) for v in row[:8])
            box = (left, top, left + w, top + h)
            if int(flag) == 1 and int(cls) in m.classes:
                find.setdefault(int(frame), []).append(box)
            elif int(cls) in m.ignore or int(cls) in m.classes:
                ignore.setdefault(int(frame), []).append(box)
    return find, ignore


def match_frame(
    dets: list[tuple[float, Box4]], gt: list[Box4], ignore: list[Box4], iou: float
) -> list[tuple[float, int]]:
    """(confidence, 1 for a true positive / 0 for a false positive) per counted detection; detections that
    match no ground truth but lie on an ignore region are dropped."""
    taken = [False] * len(gt)
    out = []
    for conf, box in sorted(dets, key=lambda d: -d[0]):
        ious = [box_iou(box, g) if not taken[i] else -1.0 for i, g in enumerate(gt)]
        best = int(np.argmax(ious)) if ious else -1
        if best >= 0 and ious[best] >= iou:
            taken[best] = True
            out.append((conf, 1))
        elif not any(box_iou(box, r) >= iou for r in ignore):
            out.append((conf, 0))
    return out


def average_precision(scored: list[tuple[float, int]], positives: int) -> float:
    """All-point interpolated AP of detections ``(confidence, is_tp)`` against ``positives`` ground-truth boxes."""
    if positives == 0:
        return float("nan")
    order = sorted(scored, key=lambda s: -s[0])
    tp = np.cumsum([s[1] for s in order], dtype=np.float64)
    fp = np.cumsum([1 - s[1] for s in order], dtype=np.float64)
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1e-9), [0.0]])
    for i in range(len(precision) - 2, -1, -1):  # the precision envelope: best precision at any higher recall
        precision[i] = max(precision[i], precision[i + 1])
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def evaluate_detection(
    manifest: DetectionManifest, detect_cfg: Any, media_root: Path, predictor_for: Any = None
) -> dict[str, dict[str, Any]]:
    """P, R (at ``detect_cfg.conf``) and AP50 per input size; ``predictor_for(cfg)`` builds the detector
    (default: the pipeline's own ``YoloPredictor`` on the resolved checkpoint)."""
    from PIL import Image

    from operators.detect_track import YoloPredictor, resolve_yolo

    build = predictor_for or (lambda c: YoloPredictor(c, resolve_yolo(c.model)))
    results: dict[str, dict[str, Any]] = {}
    for size in manifest.imgsz or [detect_cfg.imgsz]:
        cfg = detect_cfg.model_copy(update={"imgsz": size, "conf": min(manifest.ap_conf, detect_cfg.conf)})
        predict = build(cfg)
        scored: list[tuple[float, int]] = []
        positives = 0
        for name in manifest.sequences:
            seq = media_root / name
            find, ignore = read_gt(seq, manifest)
            for jpg in sorted((seq / "img1").glob("*.jpg")):
                frame = int(jpg.stem)
                img = np.asarray(Image.open(jpg).convert("RGB"))
                h, w = img.shape[:2]
                det = predict([img])[0]
                boxes = [
                    (float(c), (b[0] * w, b[1] * h, b[2] * w, b[3] * h))
                    for b, c, n in zip(det.boxes, det.conf, det.names, strict=True)
                    if n == manifest.label
                ]
                gt = find.get(frame, [])
                positives += len(gt)
                scored += match_frame(boxes, gt, ignore.get(frame, []), manifest.iou)
        at_conf = [s for s in scored if s[0] >= detect_cfg.conf]
        tp = sum(s[1] for s in at_conf)
        p, r, f1 = prf(tp, len(at_conf) - tp, positives - tp)
        results[f"{Path(detect_cfg.model).name} @ {size}"] = {
            "summary": {
                "objects": positives,
                "detections": len(at_conf),
                f"P@{detect_cfg.conf:g}": round(p, 3),
                f"R@{detect_cfg.conf:g}": round(r, 3),
                "F1": round(f1, 3),
                "AP50": round(average_precision(scored, positives), 3),
            }
        }
    return results
