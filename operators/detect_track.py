"""Object detection (ultralytics YOLO, batched, stateless) and multi-object tracking (ultralytics trackers).

Detection is a stateless batch stage, so it runs as an actor pool on any frames in any order. Tracking is
stateful and runs per video, in time order, on the detector's output (``VideoTracker``): one tracker per
video, created fresh for each, with the tracker's frame rate set to the *sampling* rate. The tracker sees
boxes in the thumbnail's pixel space together with the thumbnail itself, which is what BoT-SORT's global
motion compensation needs; ByteTrack ignores the image.

A detector can be injected through the constructor (``predictor=``): tests feed ground-truth boxes through
exactly the path the YOLO output takes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from configs import shipped
from operators import contract as C
from operators import model_catalog
from operators.backends import Backend, ExportCache, Precision, check_precision, yolo_export
from operators.base import Batch, MissingCheckpointError, Operator, StrictModel, objects
from operators.weights import Device, pick_device


class DetectConfig(StrictModel):
    enabled: bool = True
    model: str = "yolo11n.pt"  # a checkpoint path or name; a *.yaml builds the architecture with random weights
    conf: float = 0.25
    iou: float = 0.7
    imgsz: int = 640
    max_det: int = 100
    classes: list[str] | None = None  # keep only these class names
    device: Device = "auto"
    half: bool = True  # fp16 on CUDA
    #: Inference runtime on CPU, through ultralytics' own export (fp32, dynamic shapes), built at setup() from
    #: the loaded weights and cached (operators/backends.py); parity with torch is tested (tests/test_backends.py).
    backend: Backend = "torch"
    precision: Precision = "fp32"  # bf16: OpenVINO only, faster on CPUs with bf16, outputs differ (new version)
    export_cache: str | None = None  # folder of cached exports; default $VIDSEARCH_EXPORT_CACHE or ~/.cache/vidsearch
    mask_downscale: int = 4  # masks travel at 1/k of the working frame size
    tracker: Literal["bytetrack", "botsort"] = "bytetrack"
    tracker_config: str | None = None  # a YAML in ultralytics' tracker format; default configs/trackers/<tracker>.yaml
    track_buffer_s: float = 5.0  # seconds a lost track is kept; converted to frames at the sampling rate
    min_track_obs: int = 1  # tracks with fewer observations are not written


@dataclass
class FrameDetections:
    """One frame's detections: normalised xyxy boxes, confidences, class names, optional masks [K, mh, mw]."""

    boxes: npt.NDArray[np.float32]
    conf: npt.NDArray[np.float32]
    names: list[str]
    masks: npt.NDArray[np.uint8] | None = None


Predictor = Callable[[Sequence[npt.NDArray[np.uint8]]], list[FrameDetections]]


def resolve_yolo(model: str) -> str:
    """The local file (or architecture YAML) to build YOLO from; one sentence when it cannot be had. Names in the
    model catalog (``yolo11n.pt``) resolve there: hash-checked cache, bundled wheel copy, then download."""
    if model.endswith((".yaml", ".yml")) or os.path.isfile(model):
        return model
    if model_catalog.lookup(model) is not None:
        return str(model_catalog.resolve(model).path)
    from ultralytics.utils import SETTINGS

    cached = Path(SETTINGS.get("weights_dir", "weights")) / model
    if cached.is_file():
        return str(cached)
    if os.sep not in model and os.environ.get("YOLO_OFFLINE") != "1":
        try:
            from ultralytics.utils.downloads import attempt_download_asset

            path = attempt_download_asset(model)
            if os.path.isfile(path):
                return str(path)
        except Exception:
            pass
    raise MissingCheckpointError(
        f"Detector checkpoint '{model}' is not on disk and could not be downloaded: download it where a network "
        f"exists and set detect.model to its local path, or put it in ultralytics' weights directory ({cached.parent})."
    )


class YoloPredictor:
    """ultralytics YOLO on RGB frames -> ``FrameDetections`` per frame."""

    def __init__(self, cfg: DetectConfig, path: str) -> None:
        if path.endswith((".yaml", ".yml")):
            os.environ.setdefault("YOLO_OFFLINE", "1")  # random weights: nothing to fetch, never reach out
        from operators.backends import no_autoinstall

        no_autoinstall()  # a missing requirement is an error here, never a pip install inside a worker
        import torch
        from ultralytics import YOLO

        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # an architecture YAML gets the same random weights in every worker
            self.model = YOLO(path)

        self.device = pick_device(cfg.device)
        if cfg.backend != "torch" and self.device == "cpu":
            check_precision(cfg.backend, cfg.precision)
            cache = ExportCache(cfg.export_cache)
            self.model = yolo_export(self.model, cfg.backend, cache, cfg.imgsz, None, cfg.precision)
        names = self.model.names
        self.names = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
        self.class_ids = [self.names.index(c) for c in cfg.classes if c in self.names] if cfg.classes else None
        if cfg.classes and not self.class_ids:
            raise ValueError(f"none of detect.classes {cfg.classes} is a class of {cfg.model}")

    def __call__(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[FrameDetections]:
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]  # ultralytics takes numpy frames as BGR
        results = self.model.predict(
            bgr,
            conf=self.cfg.conf,
            iou=self.cfg.iou,
            imgsz=self.cfg.imgsz,
            classes=self.class_ids,
            device=self.device,
            **({"half": True} if self.cfg.half and self.device == "cuda" else {}),
            max_det=self.cfg.max_det,
            retina_masks=True,
            verbose=False,
        )
        out = []
        for r in results:  # ultralytics Results (its stubs also allow tensors, which predict never returns here)
            b = r.boxes.cpu().numpy()  # type: ignore[union-attr]
            masks = None
            if r.masks is not None:  # type: ignore[union-attr]
                k = self.cfg.mask_downscale
                masks = (r.masks.data.cpu().numpy()[:, ::k, ::k] > 0.5).astype(np.uint8)  # type: ignore[union-attr]
            out.append(
                FrameDetections(
                    b.xyxyn.astype(np.float32), b.conf.astype(np.float32), [self.names[int(c)] for c in b.cls], masks
                )
            )
        return out


class Detector(Operator):
    """Detection stage (actor). Reads ``frame``, ``error``; writes ``det_boxes`` (float32 [K, 4] normalised
    xyxy), ``det_conf`` ([K]), ``det_names`` (JSON list of K class names) and, for segmentation models,
    ``det_masks`` (uint8 [K, mh, mw]). 1:1.
    """

    reads = (C.FRAME, C.ERROR)
    writes = (C.DET_BOXES, C.DET_CONF, C.DET_NAMES)  # and DET_MASKS, for segmentation models only

    def __init__(self, cfg: DetectConfig, predictor: Predictor | None = None) -> None:
        self.cfg = cfg
        self.predictor = predictor

    def setup(self) -> None:
        if self.predictor is None:
            self.predictor = YoloPredictor(self.cfg, resolve_yolo(self.cfg.model))

    def __call__(self, batch: Batch) -> Batch:
        assert self.predictor is not None, "call setup() first"
        ok = np.asarray(batch[C.ERROR]) == ""
        frames = [f for f, good in zip(batch[C.FRAME], ok, strict=True) if good]
        dets = iter(self.predictor(frames) if frames else [])
        empty = FrameDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])
        per_frame = [next(dets) if good else empty for good in ok]
        if self.cfg.classes:
            per_frame = [_keep(d, self.cfg.classes) for d in per_frame]
        batch[C.DET_BOXES] = objects([d.boxes.astype(np.float32).reshape(-1, 4) for d in per_frame])
        batch[C.DET_CONF] = objects([d.conf.astype(np.float32) for d in per_frame])
        batch[C.DET_NAMES] = np.array([json.dumps(d.names) for d in per_frame])
        if any(d.masks is not None for d in per_frame):
            shape = next(d.masks.shape[1:] for d in per_frame if d.masks is not None)
            batch[C.DET_MASKS] = objects(
                [d.masks if d.masks is not None else np.zeros((len(d.boxes), *shape), np.uint8) for d in per_frame]
            )
        return batch


def _keep(d: FrameDetections, classes: list[str]) -> FrameDetections:
    keep = np.array([n in classes for n in d.names], dtype=bool)
    masks = d.masks[keep] if d.masks is not None else None
    return FrameDetections(d.boxes[keep], d.conf[keep], [n for n, k in zip(d.names, keep, strict=True) if k], masks)


class _TrackerInput:
    """The results-like object ultralytics trackers take: xyxy/xywh/conf/cls arrays with boolean indexing."""

    def __init__(self, xyxy: npt.NDArray[np.float32], conf: npt.NDArray[np.float32], cls: npt.NDArray[np.float32]):
        self.xyxy, self.conf, self.cls = xyxy, conf, cls
        self.xywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, idx: Any) -> _TrackerInput:
        return _TrackerInput(self.xyxy[idx], self.conf[idx], self.cls[idx])


def tracker_args(cfg: DetectConfig, sample_fps: float) -> Any:
    import yaml
    from ultralytics.utils import IterableSimpleNamespace

    path = cfg.tracker_config or f"configs/trackers/{cfg.tracker}.yaml"
    if cfg.tracker_config is None or (not os.path.exists(path) and path.startswith("configs/")):
        path = str(shipped(path.removeprefix("configs/")) or path)  # a shipped one, from the installed package
    with open(path) as f:
        args = yaml.safe_load(f)
    # track_buffer counts frames; the tracker sees sampled frames, so convert from seconds at the sampling rate.
    args["track_buffer"] = max(1, int(round(cfg.track_buffer_s * sample_fps)))
    return IterableSimpleNamespace(**args)


class VideoTracker:
    """Tracker state of one video. ``update`` takes a frame's detections in time order and returns, per
    detection, its tracker id (-1 when the tracker dropped the detection)."""

    def __init__(self, cfg: DetectConfig, sample_fps: float) -> None:
        from ultralytics.trackers.track import TRACKER_MAP

        args = tracker_args(cfg, sample_fps)
        self.tracker: Any = TRACKER_MAP[args.tracker_type](args)  # BYTETracker or BOTSORT
        # Only BoT-SORT's camera-motion compensation looks at the picture; ByteTrack needs boxes alone.
        self.needs_image = args.tracker_type == "botsort" and str(getattr(args, "gmc_method", "none")) != "none"
        self.classes: dict[str, int] = {}

    def update(
        self, boxes_px: npt.NDArray[np.float32], conf: npt.NDArray[np.float32], names: list[str], image: Any = None
    ) -> npt.NDArray[np.int64]:
        ids = np.full(len(conf), -1, dtype=np.int64)
        cls = np.array([self.classes.setdefault(n, len(self.classes)) for n in names], dtype=np.float32)
        out = self.tracker.update(
            _TrackerInput(boxes_px.astype(np.float32).reshape(-1, 4), conf.astype(np.float32), cls), image
        )
        for row in np.asarray(out).reshape(-1, 8):
            ids[int(row[7])] = int(row[4])
        return ids

    def live_ids(self) -> set[int]:
        """Tracker ids that may still be matched (tracked or lost); any other id is closed for good."""
        t = self.tracker
        return {int(s.track_id) for s in (*t.tracked_stracks, *t.lost_stracks)}
