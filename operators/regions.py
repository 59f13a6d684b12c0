"""Region features for detected boxes, two modes chosen in config.

``roi``  - RoIAlign (torchvision ``roi_align``) over the image encoder's patch-token grid, then the encoder's
           own visual projection: the frame's single forward pass gives every region's embedding (the
           detection-based region-feature approach). With masks, the pooled bins are weighted by the mask.
``crop`` - crop each box (margin, minimum size) from the working frame, paint outside the mask grey when a
           mask exists, and encode the crops with the image encoder in batches.

Boxes are normalised ``[x1, y1, x2, y2]`` on the upright working frame.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from operators.base import StrictModel
from operators.encoders import OpenClipEncoder


class RegionConfig(StrictModel):
    mode: Literal["roi", "crop", "none"] = "roi"
    roi_output: int = 3  # RoIAlign bins per side
    crop_margin: float = 0.1  # fraction of the box size added on each side
    crop_min_px: int = 32
    max_regions: int = 64  # per frame, highest confidence first


def grid_boxes(
    boxes: npt.NDArray[np.float32], frame_w: int, frame_h: int, grid: int, resize_mode: str
) -> npt.NDArray[np.float32]:
    """Map normalised frame boxes to patch-grid coordinates for the encoder's resize mode."""
    b = boxes.astype(np.float32).copy()
    if resize_mode == "squash":
        return b * grid
    aspect = frame_w / frame_h
    if resize_mode == "shortest":  # resize shortest side, centre-crop the longest: the crop sees part of the frame
        if aspect >= 1:
            b[:, [0, 2]] = (b[:, [0, 2]] - 0.5) * aspect + 0.5
        else:
            b[:, [1, 3]] = (b[:, [1, 3]] - 0.5) / aspect + 0.5
    else:  # "longest": the whole frame, letterboxed into the square
        if aspect >= 1:
            b[:, [1, 3]] = (b[:, [1, 3]] - 0.5) / aspect + 0.5
        else:
            b[:, [0, 2]] = (b[:, [0, 2]] - 0.5) * aspect + 0.5
    return np.clip(b, 0.0, 1.0) * grid


def roi_embeddings(
    encoder: OpenClipEncoder,
    grid: npt.NDArray[np.float32],
    boxes: npt.NDArray[np.float32],
    frame_size: tuple[int, int],
    masks: npt.NDArray[np.uint8] | None = None,
    out: int = 3,
) -> npt.NDArray[np.float32]:
    """Region embeddings of one frame from its patch-token grid ``[gh, gw, width]`` -> ``[K, D]`` normalised."""
    import torch
    from torchvision.ops import roi_align

    if len(boxes) == 0:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    g = torch.from_numpy(np.ascontiguousarray(grid)).permute(2, 0, 1)[None]  # [1, width, gh, gw]
    gb = grid_boxes(boxes, frame_size[0], frame_size[1], grid.shape[0], encoder.cfg.resize_mode)
    rois = torch.cat([torch.zeros(len(gb), 1), torch.from_numpy(gb)], dim=1)
    bins = roi_align(g, rois, output_size=(out, out), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    if masks is not None and len(masks) == len(boxes):
        # Mask weights per bin: RoIAlign each object's own mask over the same box, on the mask's resolution.
        m = torch.from_numpy(masks.astype(np.float32))[:, None]  # [K, 1, mh, mw]
        mrois = torch.cat(
            [
                torch.arange(len(boxes))[:, None].float(),
                torch.from_numpy(boxes * np.array([m.shape[3], m.shape[2]] * 2, dtype=np.float32)),
            ],
            1,
        )
        w = roi_align(m, mrois, output_size=(out, out), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        w = torch.where(w.sum(dim=(2, 3), keepdim=True) > 1e-6, w, torch.ones_like(w))
        pooled = (bins * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
    else:
        pooled = bins.mean(dim=(2, 3))
    emb = encoder.project_tokens(pooled)
    return torch.nn.functional.normalize(emb.float(), dim=-1).numpy().astype(np.float32)


def crop_boxes(
    frame: npt.NDArray[np.uint8],
    boxes: npt.NDArray[np.float32],
    margin: float,
    min_px: int,
    masks: npt.NDArray[np.uint8] | None = None,
) -> list[npt.NDArray[np.uint8]]:
    """Crops of ``frame`` around each box, grown by ``margin`` and to at least ``min_px`` per side."""
    h, w = frame.shape[:2]
    crops = []
    for i, (x1, y1, x2, y2) in enumerate(boxes * np.array([w, h, w, h], dtype=np.float32)):
        bw, bh = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half_w = max(bw * (1 + 2 * margin), min_px) / 2
        half_h = max(bh * (1 + 2 * margin), min_px) / 2
        a, b = int(max(0, np.floor(cx - half_w))), int(max(0, np.floor(cy - half_h)))
        c, d = int(min(w, np.ceil(cx + half_w))), int(min(h, np.ceil(cy + half_h)))
        crop = frame[b : max(d, b + 1), a : max(c, a + 1)].copy()
        if masks is not None and len(masks) == len(boxes):
            mh, mw = masks[i].shape
            ys = np.clip((np.arange(b, b + crop.shape[0]) * mh / h).astype(int), 0, mh - 1)
            xs = np.clip((np.arange(a, a + crop.shape[1]) * mw / w).astype(int), 0, mw - 1)
            inside = masks[i][ys][:, xs] > 0
            if inside.any():
                crop[~inside] = 127
        crops.append(crop)
    return crops


def crop_embeddings(
    encoder: OpenClipEncoder,
    frame: npt.NDArray[np.uint8],
    boxes: npt.NDArray[np.float32],
    cfg: RegionConfig,
    masks: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.float32]:
    if len(boxes) == 0:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return encoder.encode_images(crop_boxes(frame, boxes, cfg.crop_margin, cfg.crop_min_px, masks))
