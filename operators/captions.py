"""Segment captions: an image-captioning model behind a registry (name -> builder), run on each segment's keyframe.

``blip`` - BLIP image captioning (``BlipForConditionalGeneration``: a ViT whose features the text decoder
cross-attends to; ``Salesforce/blip-image-captioning-base`` in the production config).

``hf`` - any Hugging Face image-to-text checkpoint (vision-encoder-decoder, BLIP, GIT, ...) through
transformers' ``AutoModelForImageTextToText`` and ``AutoProcessor`` (or its image processor and tokenizer).

``none`` - no captions (the stage is left out of the graph).

``captions.checkpoint`` is a hub id (read from the local cache, downloaded where a network exists) or a local
directory written by ``save_pretrained``; ``operators.weights.resolve_caption_checkpoint`` resolves it before any
work and stops with one sentence when it is missing. ``captions.architecture`` (``blip`` only, checkpoint unset)
builds a randomly initialised BLIP of that size, saves it with ``save_pretrained`` and loads it back through the
same path (tests, offline smoke runs): **its captions are meaningless text**.

The ``Captions`` stage captions only the keyframe of each segment window (``operators/keyframes.py``), the frame
the assembler makes the segment's thumbnail, which puts that frame's caption on the segment row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import field_validator, model_validator

from operators import contract as C
from operators.base import Batch, MissingCheckpointError, Operator, StrictModel, objects
from operators.keyframes import SampleGrid, is_keyframe, shot_segment_windows, window_bounds
from operators.weights import Device, pick_device, resolve_caption_checkpoint

log = logging.getLogger(__name__)

#: Said with the random-weights notice (one line) where a run starts, and by the captioner when it loads.
RANDOM_CAPTIONS_NOTICE = "Captions from a randomly initialised captioner (captions.architecture) are meaningless text."


class CaptionConfig(StrictModel):
    """``captions:``: which captioner describes each segment's keyframe, and how it generates."""

    model: str = "none"  # a CAPTIONERS name, or "none" (no caption stage)
    #: A Hugging Face hub id or a local directory written by ``save_pretrained`` (model and processor).
    checkpoint: str | None = None
    #: ``blip`` with no checkpoint (a checkpoint wins): a random BlipConfig of these sizes ({} = BLIP-base), saved with
    #: ``save_pretrained`` under ``cache_dir`` and loaded back. Random weights caption meaningless text.
    architecture: dict[str, Any] | None = None
    seed: int = 0  # random weights are drawn from this seed, identical in every worker
    device: Device = "auto"
    batch_size: int = 8  # keyframes per generate() call
    max_new_tokens: int = 20
    num_beams: int = 1  # 1: greedy decoding (deterministic)
    prompt: str | None = None  # text the caption continues ("a picture of"), for models that take one
    local_files_only: bool = False  # never touch the network (also HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1)
    cache_dir: str | None = None  # Hugging Face cache; random checkpoints go to <cache_dir or tmp>/vidsearch-captioners

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        if v != "none" and v not in CAPTIONERS:
            raise ValueError(f"unknown captioner '{v}'; registered: {', '.join(sorted(CAPTIONERS))} or none")
        return v

    @model_validator(mode="after")
    def _source(self) -> CaptionConfig:
        if self.model != "none" and self.checkpoint is None and (self.architecture is None or self.model != "blip"):
            raise ValueError(
                f"captioner '{self.model}' needs a checkpoint (a hub id or a save_pretrained directory; random "
                f"weights from an architecture are for 'blip' only)"
            )
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("batch_size, max_new_tokens and num_beams must be at least 1")
        return self

    @property
    def random_weights(self) -> bool:
        return self.model == "blip" and self.checkpoint is None and self.architecture is not None


# -- captioners -------------------------------------------------------------------------------------------------


class HFCaptioner:
    """Any image-to-text model through transformers' Auto classes; greedy (or beam) ``generate``, batched."""

    name: ClassVar[str] = "hf"

    def __init__(self, cfg: CaptionConfig, checkpoint: str | None = None) -> None:
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.model: Any = None

    def load(self, path: str) -> tuple[Any, Any, Any]:
        """(model, image processor or processor, tokenizer or processor) from a local directory."""
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            if hasattr(processor, "image_processor") and hasattr(processor, "batch_decode"):
                return model, processor, processor
        except (OSError, ValueError, TypeError):
            pass  # vision-encoder-decoder checkpoints often save the image processor and tokenizer apart
        return model, AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    def setup(self) -> None:

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard loading bars would fill the worker logs
        path = self.checkpoint or resolve_caption_checkpoint(self.cfg)
        if self.cfg.random_weights:
            log.warning("NOTE: %s", RANDOM_CAPTIONS_NOTICE)
        try:
            model, self.processor, self.tokenizer = self.load(path)
        except OSError as exc:
            raise MissingCheckpointError(
                f"Captioner checkpoint '{path}' cannot be loaded as a {self.name} model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}): write the model and its processor there with save_pretrained."
            ) from None
        self.device = pick_device(self.cfg.device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def inputs(self, images: list[Any]) -> dict[str, Any]:
        if self.cfg.prompt is not None and self.processor is self.tokenizer:
            enc = self.processor(images=images, text=[self.cfg.prompt] * len(images), return_tensors="pt")
        else:
            enc = self.processor(images=images, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def caption(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[str]:
        """One caption per RGB uint8 frame, ``batch_size`` frames per ``generate`` call."""
        import torch
        from PIL import Image

        assert self.model is not None, "call setup() first"
        out: list[str] = []
        for start in range(0, len(frames), self.cfg.batch_size):
            images = [
                Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames[start : start + self.cfg.batch_size]
            ]
            inputs = self.inputs(images)
            with torch.inference_mode(), self.autocast():
                ids = self.model.generate(
                    **inputs, max_new_tokens=self.cfg.max_new_tokens, num_beams=self.cfg.num_beams, do_sample=False
                )
            texts = self.tokenizer.batch_decode(self.generated(ids, inputs), skip_special_tokens=True)
            out += [" ".join(t.split()) for t in texts]
        return out

    def autocast(self) -> Any:
        import torch

        if self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def generated(self, ids: Any, inputs: dict[str, Any]) -> Any:
        """The generated tokens of ``generate``'s output: decoder-only models echo their prompt first."""
        if "input_ids" in inputs and not getattr(self.model.config, "is_encoder_decoder", False):
            return ids[:, inputs["input_ids"].shape[1] :]
        return ids

    def teardown(self) -> None:
        self.model = None


class BlipCaptioner(HFCaptioner):
    """BLIP image captioning: ``BlipForConditionalGeneration`` with its ``BlipProcessor``."""

    name: ClassVar[str] = "blip"

    def load(self, path: str) -> tuple[Any, Any, Any]:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)
        processor = BlipProcessor.from_pretrained(path, local_files_only=True)
        return model, processor, processor

    def generated(self, ids: Any, inputs: dict[str, Any]) -> Any:
        return ids  # BLIP's caption continues its prompt ("a picture of ..."), as the model card shows it


CAPTIONERS: dict[str, Callable[[CaptionConfig, str | None], HFCaptioner]] = {
    "blip": BlipCaptioner,
    "hf": HFCaptioner,
}


def build_captioner(cfg: CaptionConfig, checkpoint: str | None = None) -> HFCaptioner:
    if cfg.model not in CAPTIONERS:
        raise ValueError(f"unknown captioner '{cfg.model}'; registered: {sorted(CAPTIONERS)}")
    return CAPTIONERS[cfg.model](cfg, checkpoint)


# -- the graph stage --------------------------------------------------------------------------------------------


class Captions(Operator):
    """Captions each segment's keyframe (an actor: holds the model). 1:1.

    Reads ``video_id``, ``frame``, ``t``, ``error``, ``duration_s``, ``source_fps`` and, with shot detection,
    ``shot_bounds``.
    Writes ``caption``: the keyframe's caption (str) on the frames that are their segment window's keyframe
    (``operators/keyframes.py``), null on every other row. ``every_frame`` (decode.mode: keyframes, where samples
    follow the GOPs and no grid exists) captions every frame and leaves the choice to the assembler.
    """

    reads = (C.VIDEO_ID, C.FRAME, C.T, C.ERROR, C.DURATION_S, C.SOURCE_FPS)
    writes = C.CAPTION_COLUMNS

    def __init__(
        self,
        cfg: CaptionConfig,
        window_s: float,
        sample_fps: float,
        every_frame: bool = False,
        captioner: HFCaptioner | None = None,
    ) -> None:
        self.cfg = cfg
        self.window_s = window_s
        self.sample_fps = sample_fps
        self.every_frame = every_frame
        self.captioner = captioner

    def setup(self) -> None:
        if self.captioner is None:
            self.captioner = build_captioner(self.cfg)
        self.captioner.setup()

    def keyframes(self, batch: Batch) -> npt.NDArray[np.bool_]:
        """Which rows of ``batch`` are their segment window's keyframe (failure rows never are)."""
        ok = np.asarray(batch[C.ERROR]) == ""
        if self.every_frame:
            return ok
        shots = batch.get(C.SHOT_BOUNDS)
        marks = np.zeros(len(ok), dtype=bool)
        windows_of: dict[str, Any] = {}  # per video: its shot-aligned windows
        for i in np.flatnonzero(ok):
            duration = float(batch[C.DURATION_S][i])
            vid = str(batch[C.VIDEO_ID][i])
            if shots is not None and vid not in windows_of:
                windows_of[vid] = shot_segment_windows(shots[i], duration, self.window_s)
            windows = windows_of.get(vid)
            t = float(batch[C.T][i])
            start, end = window_bounds(t, self.window_s, duration, windows)
            grid = SampleGrid.of(self.sample_fps, float(batch[C.SOURCE_FPS][i]), duration)
            marks[i] = is_keyframe(t, start, end, grid)
        return marks

    def __call__(self, batch: Batch) -> Batch:
        assert self.captioner is not None, "call setup() first"
        marks = self.keyframes(batch)
        captions: list[str | None] = [None] * len(marks)
        idx = np.flatnonzero(marks)
        if len(idx):
            for i, text in zip(idx, self.captioner.caption([batch[C.FRAME][i] for i in idx]), strict=True):
                captions[i] = text
        batch[C.CAPTION] = objects(captions)
        return batch

    def teardown(self) -> None:
        if self.captioner is not None:
            self.captioner.teardown()
