"""Region features on a real COCO image with its ground-truth boxes and masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from operators.encoders import build_encoder
from operators.regions import RegionConfig, crop_boxes, crop_embeddings, grid_boxes, roi_embeddings
from tests.helpers import clip, tiny_config


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    enc = build_encoder(tiny_config(tmp_path_factory.mktemp("db")).encoder)
    enc.setup()
    return enc


@pytest.fixture(scope="module")
def coco():
    """The two-cats COCO image, its boxes (normalised xyxy) and polygon masks, keyed by category."""
    image = np.asarray(Image.open(clip("coco_style/hf_transformers_coco/000000039769.png")).convert("RGB"))
    h, w = image.shape[:2]
    anns = json.loads(open(clip("coco_style/hf_transformers_coco/coco_annotations.txt")).read())
    boxes, masks, cats = [], [], []
    for a in anns:
        x, y, bw, bh = a["bbox"]
        boxes.append([x / w, y / h, (x + bw) / w, (y + bh) / h])
        m = Image.new("L", (w, h))
        for poly in a["segmentation"]:
            ImageDraw.Draw(m).polygon([tuple(p) for p in np.asarray(poly).reshape(-1, 2)], fill=1)
        masks.append(np.asarray(m))
        cats.append(a["category_id"])
    return image, np.asarray(boxes, np.float32), np.stack(masks).astype(np.uint8), cats


def frame_grid(encoder, image):
    pixels = encoder.preprocess_frames([image])
    return encoder.encode_pixels(pixels)[1][0]


def test_whole_frame_box_gives_the_pooled_frame_embedding(encoder, coco) -> None:
    image = coco[0]
    grid = frame_grid(encoder, image)
    region = roi_embeddings(encoder, grid, np.array([[0, 0, 1, 1]], np.float32), (image.shape[1], image.shape[0]))
    # The encoder's mean-pooled patch embedding, computed independently from the same forward pass.
    pooled = encoder.project_tokens(torch.from_numpy(grid.reshape(-1, grid.shape[-1]).mean(0)))
    pooled = (pooled / pooled.norm()).numpy()
    assert region.shape == (1, encoder.dim)
    assert float(region[0] @ pooled) > 0.99


def test_boxes_on_different_objects_give_different_embeddings(encoder, coco) -> None:
    image, boxes, _, cats = coco
    grid = frame_grid(encoder, image)
    size = (image.shape[1], image.shape[0])
    emb = roi_embeddings(encoder, grid, boxes, size)
    assert emb.shape == (len(boxes), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cat, remote = cats.index(17), cats.index(75)
    # A slightly shifted box on the same cat stays closer than a box on a remote control.
    shifted = boxes[cat] + np.array([0.02, 0.01, 0.02, 0.01], np.float32)
    again = roi_embeddings(encoder, grid, shifted[None], size)[0]
    assert float(emb[cat] @ again) > float(emb[cat] @ emb[remote])
    assert float(emb[cat] @ emb[remote]) < 0.999


def test_masks_change_roi_pooling_and_full_masks_do_not(encoder, coco) -> None:
    image, boxes, masks, _ = coco
    grid = frame_grid(encoder, image)
    size = (image.shape[1], image.shape[0])
    plain = roi_embeddings(encoder, grid, boxes, size)
    masked = roi_embeddings(encoder, grid, boxes, size, masks)
    full = roi_embeddings(encoder, grid, boxes, size, np.ones_like(masks))
    np.testing.assert_allclose(full, plain, atol=1e-5)
    assert masked.shape == plain.shape and np.all(np.isfinite(masked))
    assert np.abs(masked - plain).max() > 1e-3


def test_crop_mode_with_and_without_masks(encoder, coco) -> None:
    image, boxes, masks, _ = coco
    cfg = RegionConfig(mode="crop", crop_margin=0.1, crop_min_px=32)
    plain = crop_embeddings(encoder, image, boxes, cfg)
    masked = crop_embeddings(encoder, image, boxes, cfg, masks)
    assert plain.shape == masked.shape == (len(boxes), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5)
    assert np.abs(masked - plain).max() > 1e-3
    crops = crop_boxes(image, boxes, 0.1, 32)
    h, w = image.shape[:2]
    for crop, b in zip(crops, boxes, strict=True):
        bw, bh = (b[2] - b[0]) * w, (b[3] - b[1]) * h
        assert crop.shape[1] >= min(w, max(32, bw)) - 1 and crop.shape[0] >= min(h, max(32, bh)) - 1
    # Outside the mask is painted grey, inside is the image.
    painted = crop_boxes(image, boxes[:1], 0.0, 1, masks[:1])[0]
    assert (painted == 127).all(axis=2).any()


def test_box_to_grid_mapping_for_each_resize_mode() -> None:
    box = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)
    np.testing.assert_allclose(grid_boxes(box, 200, 100, 8, "squash"), [[2, 2, 6, 6]])
    # Letterboxed 2:1 frame: the frame occupies rows 2..6 of the 8-row grid.
    np.testing.assert_allclose(grid_boxes(box, 200, 100, 8, "longest"), [[2, 3, 6, 5]])
    # Centre crop of a 2:1 frame keeps the middle half of its width.
    np.testing.assert_allclose(grid_boxes(box, 200, 100, 8, "shortest"), [[0, 2, 8, 6]])
