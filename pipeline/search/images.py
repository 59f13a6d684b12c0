"""Decoding a query image (an upload, a file, an array) for search and questions: only image formats, never an
interpreter; bounded in pixels decoded, straight to the size the models need."""

from __future__ import annotations

import io
import math
import os
import sys
from typing import Any

import numpy as np

from pipeline.errors import SearchError

#: Formats an uploaded image may be in. Pillow would otherwise also try EPS/PDF-like formats, whose plugins hand
#: the bytes to Ghostscript when it is installed: an uploaded file must never reach an interpreter.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: The shortest side an image is decoded to: the encoders and re-rankers read at most 384 px (their own transforms
#: resize to that), so more pixels than this only cost memory.
DECODE_SIDE = 512
#: Images that can only be decoded at full size (PNG, GIF, WebP, TIFF, BMP, progressive JPEG) may have at most this
#: many pixels: 16 MP holds a 12 MP phone photo and a 5K screenshot and costs at most ~64 MiB to decode (4 bytes a
#: pixel), where a 40 MP PNG of a few KB cost ~200 MiB.
MAX_DECODED_PIXELS = 16_000_000
#: A baseline JPEG is decoded straight to 1/2 .. 1/8 of its size (DCT scaling, ``Image.draft``), so it may have more.
MAX_JPEG_PIXELS = 40_000_000


def load_image(image: Any, max_pixels: int = MAX_JPEG_PIXELS) -> np.ndarray:
    """An RGB uint8 array from a path, bytes or array; refuses decompression bombs and non-images. A decoded file
    comes back with its shortest side at most ``DECODE_SIDE`` (decoded at that scale where the format allows)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise SearchError("an image array must be H x W x 3")
        h, w = image.shape[:2]
        if not 0 < h * w <= max_pixels:  # checked on the shape: a broadcast view may claim terabytes
            raise SearchError(f"the image array is {w}x{h}; it must have 1 to {max_pixels} pixels")
        if image.dtype.kind not in "biuf" or (image.dtype.kind == "f" and not np.isfinite(image).all()):
            raise SearchError("an image array must hold finite numbers (uint8 0-255)")
        return image.astype(np.uint8)
    if not isinstance(image, bytes | bytearray | str | os.PathLike) and not hasattr(image, "read"):
        raise SearchError(f"an image must be bytes, a file path or an H x W x 3 array, not {type(image).__name__}")
    # ultralytics replaces PIL's Image.open with a wrapper that answers an unidentifiable file by trying to
    # pip-install a HEIF plugin; an uploaded non-image must never do that, so use PIL's own opener.
    patched = sys.modules.get("ultralytics.utils.patches")
    pil_open = getattr(patched, "_image_open", Image.open) if patched else Image.open
    try:
        src = io.BytesIO(image) if isinstance(image, bytes | bytearray) else image
        with pil_open(src, formats=IMAGE_FORMATS) as im:
            return np.asarray(_decode_small(im, max_pixels))
    except SearchError:
        raise
    except Image.DecompressionBombError:
        raise SearchError(f"the image is too large: its header declares far more than {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow's decoders report corrupt input with any of these
        raise SearchError(f"the upload is not a readable image ({type(exc).__name__})") from None


def _decode_small(im: Any, max_pixels: int) -> Any:
    """The opened image ``im`` decoded in RGB with its shortest side at most ``DECODE_SIDE``; the pixel limit is
    checked on the header, before anything is decoded."""
    from PIL import Image

    w, h = im.size
    scalable = im.format == "JPEG" and not im.info.get("progressive")  # progressive: coefficients at full size
    limit = min(max_pixels, MAX_JPEG_PIXELS if scalable else MAX_DECODED_PIXELS)
    if w * h > limit:
        raise SearchError(f"the image is too large ({w}x{h}); the limit is {limit} pixels for this kind of image")
    scale = DECODE_SIDE / min(w, h)
    if scale < 1:
        im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))  # JPEG: the smallest DCT scale at least this
    rgb = im.convert("RGB")
    scale = DECODE_SIDE / min(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return rgb
