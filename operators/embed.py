"""Frame embedding stages: CPU preparation (open_clip transforms) and model inference (frames + regions).

Split as two operators so that, on GPU, the inference actors receive ready tensors and never wait on image
resizing; on CPU Ray may fuse them.
"""

from __future__ import annotations

import numpy as np

from operators import contract as C
from operators.base import Batch, Operator, objects
from operators.encoders import EncoderConfig, OpenClipEncoder, build_encoder
from operators.regions import RegionConfig, crop_embeddings, roi_embeddings


class Preprocess(Operator):
    """Reads ``frame``, ``error``; writes ``pixels`` (float32 [3, S, S], the encoder's eval transform). 1:1."""

    reads = (C.FRAME, C.ERROR)
    writes = (C.PIXELS,)

    def __init__(self, cfg: EncoderConfig, checkpoint: str | None = None) -> None:
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.encoder: OpenClipEncoder | None = None

    def setup(self) -> None:
        import open_clip

        # Only the transform is needed here: open_clip's eval transform for the model's image size.
        if self.cfg.architecture is not None:
            from operators.encoders import register_model_config

            register_model_config(self.cfg.model, self.cfg.architecture)
        model_cfg = open_clip.get_model_config(self.cfg.model)
        size = model_cfg["vision_cfg"]["image_size"] if model_cfg else 224
        self.size = int(size if isinstance(size, int) else size[0])
        self.transform = open_clip.image_transform(
            size, is_train=False, resize_mode=self.cfg.resize_mode, interpolation="bicubic"
        )

    def __call__(self, batch: Batch) -> Batch:
        from PIL import Image

        ok = batch[C.ERROR] == ""
        pixels = [
            self.transform(Image.fromarray(f)).numpy() if good else None
            for f, good in zip(batch[C.FRAME], ok, strict=True)
        ]
        empty = np.zeros((3, self.size, self.size), np.float32)  # failure rows carry no picture
        batch[C.PIXELS] = np.stack([p if p is not None else empty for p in pixels]).astype(np.float32)
        return batch


class Embed(Operator):
    """The image encoder as a batch stage (actor: holds the model).

    Reads ``pixels``, ``frame``, ``error`` and, when the detector ran, ``det_boxes`` / ``det_masks``.
    Writes ``embedding`` (float32 [D], L2-normalised) and ``region_emb`` (float32 [K, D] per frame, one row per
    box, only when the detector ran and regions are on); drops ``pixels`` and ``frame`` so pixels never travel
    past this stage. 1:1.
    """

    reads = (C.PIXELS, C.FRAME, C.ERROR)
    writes = (C.EMBEDDING,)
    drops = (C.PIXELS, C.FRAME)

    def __init__(self, cfg: EncoderConfig, regions: RegionConfig, checkpoint: str | None = None) -> None:
        self.cfg = cfg
        self.regions = regions
        self.checkpoint = checkpoint
        self.encoder: OpenClipEncoder | None = None

    def setup(self) -> None:
        self.encoder = build_encoder(self.cfg)
        self.encoder.setup(checkpoint=self.checkpoint)

    def __call__(self, batch: Batch) -> Batch:
        enc = self.encoder
        assert enc is not None, "call setup() first"
        ok = batch[C.ERROR] == ""
        emb = np.zeros((len(ok), enc.dim), np.float32)
        grids: list[np.ndarray | None] = [None] * len(ok)
        if ok.any():
            good_emb, good_grids = enc.encode_pixels(batch[C.PIXELS][ok])
            emb[ok] = good_emb
            for j, g in zip(np.flatnonzero(ok), good_grids, strict=True):
                grids[j] = g
        if C.DET_BOXES in batch and self.regions.mode != "none":
            regions = []
            for i, boxes in enumerate(batch[C.DET_BOXES]):
                boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
                masks = batch[C.DET_MASKS][i] if C.DET_MASKS in batch else None
                masks = (
                    masks if masks is not None and len(masks) == len(boxes) and np.asarray(masks).ndim == 3 else None
                )
                frame = batch[C.FRAME][i]
                if not ok[i] or len(boxes) == 0:
                    regions.append(np.zeros((0, enc.dim), np.float32))
                elif self.regions.mode == "roi":
                    size = (frame.shape[1], frame.shape[0])
                    grid = grids[i]
                    assert grid is not None  # set for every frame that encoded (ok)
                    regions.append(roi_embeddings(enc, grid, boxes, size, masks, self.regions.roi_output))
                else:
                    regions.append(crop_embeddings(enc, frame, boxes, self.regions, masks))
            batch[C.REGION_EMB] = objects(regions)
        batch[C.EMBEDDING] = emb
        for column in self.drops:
            del batch[column]
        return batch
