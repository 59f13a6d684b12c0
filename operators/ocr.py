"""On-screen text: a trained text detector + recogniser run on sampled frames (1:1, adds ``ocr_*`` columns).

Engines are a registry (``OCR_ENGINES``): ``rapidocr`` runs the PP-OCRv4 detection and recognition models that
ship inside the ``rapidocr-onnxruntime`` wheel (no download) on onnxruntime, with the CUDA execution provider
where onnxruntime has one; ``none`` reads nothing (the stage is off).

Frame selection, measured in ``benchmarks/ocr.py`` (see BENCHMARKS.md, "On-screen text"):

- the recogniser only runs on the boxes the detector finds, so a frame without text costs one detector pass;
- the detector sees the frame at its working size (``det_max_side`` caps it): rapidocr's default scales the
  *short* side up to 736 px, which on a 640x360 frame costs ~5x the CPU and merged the words of a line
  ("GATE7CLOSED") on the probe clip;
- ``select: changed`` reuses the previous OCR'd frame's result for a frame of the same video whose downscaled
  grey image barely changed in any cell of a grid (text appearing changes its cells a lot), for at most
  ``max_reuse`` frames in a row.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from operators import contract as C
from operators.base import Batch, Operator, StrictModel
from operators.weights import Device

__all__ = ["OCR_ENGINES", "OcrConfig", "OcrEngine", "OcrFrames", "OcrResult", "build_ocr_engine"]


class OcrConfig(StrictModel):
    engine: Literal["rapidocr", "none"] = "rapidocr"
    device: Device = "auto"
    threads: int = 1  # onnxruntime intra-op threads per worker (its CPU share)
    det_max_side: int = 960  # the detector sees the frame at most this large; never scaled up
    min_conf: float = 0.5  # recognised lines below this confidence are dropped
    use_cls: bool = False  # 180-degree line classifier; on-screen text is upright, and it costs per line
    select: Literal["all", "changed"] = "changed"
    change_grid: tuple[int, int] = (16, 9)  # cells (x, y) of the change test
    change_threshold: float = 6.0  # mean |grey difference| (0-255) of the most-changed cell that forces a new OCR
    max_reuse: int = 4  # at most this many frames in a row reuse an earlier result


OcrResult = tuple[list[str], npt.NDArray[np.float32], npt.NDArray[np.float32]]  # texts, boxes [N, 4], conf [N]


def _empty() -> OcrResult:
    return [], np.zeros((0, 4), np.float32), np.zeros(0, np.float32)


class OcrEngine(Protocol):
    def setup(self) -> None: ...

    def read(self, rgb: npt.NDArray[np.uint8]) -> OcrResult:
        """Text lines of one upright RGB frame: texts, normalised ``x1, y1, x2, y2`` boxes, confidences."""
        ...


class NoOcr:
    """The stage switched off: every frame reads as text-free."""

    def __init__(self, cfg: OcrConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        pass

    def read(self, rgb: npt.NDArray[np.uint8]) -> OcrResult:
        return _empty()


class RapidOcrEngine:
    """PP-OCRv4 detection + recognition through rapidocr-onnxruntime's bundled ONNX models."""

    def __init__(self, cfg: OcrConfig) -> None:
        self.cfg = cfg
        self.engine: Any = None
        self.providers: list[str] = []

    def setup(self) -> None:
        try:
            import onnxruntime
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ImportError(
                "ocr.engine 'rapidocr' needs the rapidocr-onnxruntime package (pip install rapidocr-onnxruntime), "
                "or set ocr.engine: none"
            ) from exc
        has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if self.cfg.device == "cuda" and not has_cuda:
            raise RuntimeError("ocr.device is 'cuda' but onnxruntime has no CUDA execution provider here")
        cuda = has_cuda and self.cfg.device != "cpu"
        from operators.model_catalog import CATALOG, resolve

        models = resolve("pp-ocrv4").path  # the wheel's PP-OCRv4 files, hash-checked (or a cached copy)
        det, rec, cls = (str(models / f.path) for f in CATALOG["pp-ocrv4"].files)
        self.engine = RapidOCR(
            det_model_path=det,
            rec_model_path=rec,
            cls_model_path=cls,
            det_limit_type="max",  # never scale a frame up (see the module docstring)
            det_use_cuda=cuda,
            rec_use_cuda=cuda,
            cls_use_cuda=cuda,
            intra_op_num_threads=self.cfg.threads,
            inter_op_num_threads=1,
            text_score=self.cfg.min_conf,
        )
        self.providers = list(self.engine.text_det.infer.session.get_providers())

    def read(self, rgb: npt.NDArray[np.uint8]) -> OcrResult:
        h, w = rgb.shape[:2]
        img: npt.NDArray[Any] = rgb
        if max(h, w) > self.cfg.det_max_side:
            import cv2

            s = self.cfg.det_max_side / max(h, w)
            img = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        # rapidocr takes arrays as BGR (its models were trained on OpenCV-read images).
        res, _ = self.engine(np.ascontiguousarray(img[..., ::-1]), use_cls=self.cfg.use_cls)
        if not res:
            return _empty()
        ih, iw = img.shape[:2]
        quads = np.asarray([r[0] for r in res], np.float32).reshape(-1, 4, 2)
        boxes = np.stack(
            [
                quads[..., 0].min(1) / iw,
                quads[..., 1].min(1) / ih,
                quads[..., 0].max(1) / iw,
                quads[..., 1].max(1) / ih,
            ],
            axis=1,
        )
        return (
            [str(r[1]) for r in res],
            np.clip(boxes, 0.0, 1.0).astype(np.float32),
            np.asarray([r[2] for r in res], np.float32),
        )


#: ``ocr.engine`` name -> engine class.
OCR_ENGINES: dict[str, type[NoOcr] | type[RapidOcrEngine]] = {"rapidocr": RapidOcrEngine, "none": NoOcr}


def build_ocr_engine(cfg: OcrConfig) -> OcrEngine:
    if cfg.engine not in OCR_ENGINES:
        raise ValueError(f"unknown ocr.engine '{cfg.engine}'; choose one of {', '.join(OCR_ENGINES)}")
    return OCR_ENGINES[cfg.engine](cfg)


def _small_grey(rgb: npt.NDArray[np.uint8], grid: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Mean grey level per grid cell (x cells, y cells): the change test's picture of a frame."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    # 4x4 pixels per cell before averaging, so a cell's value follows the text strokes inside it.
    fine = cv2.resize(grey, (grid[0] * 4, grid[1] * 4), interpolation=cv2.INTER_AREA).astype(np.float32)
    return fine


def _changed(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], grid: tuple[int, int], thr: float) -> bool:
    diff = np.abs(a - b).reshape(grid[1], 4, grid[0], 4).mean(axis=(1, 3))
    return bool(diff.max() > thr)


class OcrFrames(Operator):
    """On-screen text of each frame (actor: holds the models). 1:1.

    Reads ``video_id``, ``t``, ``error`` and ``frame`` (uint8 HxWx3 RGB at working size; when a batch has no
    ``frame`` column the ``thumb`` JPEG is read instead). Writes per frame ``ocr_text`` (list of str, one per
    line), ``ocr_boxes`` (float32 [N, 4], normalised x1, y1, x2, y2), ``ocr_conf`` (float32 [N]) and
    ``ocr_reused`` (bool: the result was carried over from an earlier frame of the same video). Failure rows
    get no text.
    """

    # In the graph it runs before embed, which drops the frame: reading thumbnails is for callers without frames.
    reads = (C.VIDEO_ID, C.FRAME)
    writes = (*C.OCR_COLUMNS, C.OCR_REUSED)

    def __init__(self, cfg: OcrConfig, engine: OcrEngine | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self._last: dict[str, tuple[npt.NDArray[np.float32], OcrResult, int]] = {}
        self.frames_read = 0  # frames the engine ran on (the rest reused a result or were failures)

    def setup(self) -> None:
        if self.engine is None:
            self.engine = build_ocr_engine(self.cfg)
        self.engine.setup()

    def read(self, video_id: str, rgb: npt.NDArray[np.uint8]) -> tuple[OcrResult, bool]:
        """One frame's text, reusing the last result of ``video_id`` when the frame barely changed."""
        if self.engine is None:
            self.setup()
        assert self.engine is not None
        small = _small_grey(rgb, self.cfg.change_grid) if self.cfg.select == "changed" else None
        last = self._last.get(video_id)
        if small is not None and last is not None and last[2] < self.cfg.max_reuse:
            if not _changed(small, last[0], self.cfg.change_grid, self.cfg.change_threshold):
                self._last[video_id] = (last[0], last[1], last[2] + 1)
                return last[1], True
        result = self.engine.read(rgb)
        self.frames_read += 1
        if small is not None:
            self._last = {video_id: (small, result, 0)}  # one video at a time per worker: drop older state
        return result, False

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch[C.VIDEO_ID])
        errors = batch.get(C.ERROR, np.full(n, ""))
        frames = batch[C.FRAME] if C.FRAME in batch else [_jpeg_rgb(j) for j in batch[C.THUMB]]
        texts, boxes, confs = np.empty(n, dtype=object), np.empty(n, dtype=object), np.empty(n, dtype=object)
        reused = np.zeros(n, dtype=bool)
        for i in range(n):
            result = _empty()
            if not errors[i]:
                result, reused[i] = self.read(str(batch[C.VIDEO_ID][i]), frames[i])
            texts[i], boxes[i], confs[i] = result
        batch[C.OCR_TEXT], batch[C.OCR_BOXES], batch[C.OCR_CONF], batch[C.OCR_REUSED] = texts, boxes, confs, reused
        return batch


def _jpeg_rgb(jpeg: bytes) -> npt.NDArray[np.uint8]:
    import io

    from PIL import Image

    if not jpeg:
        return np.zeros((2, 2, 3), np.uint8)
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
