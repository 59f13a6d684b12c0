"""What the evaluations share around their manifests: where the test media live, which evaluation a manifest is
for, and query images cut from the clips at run time (so nothing binary is committed)."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from operators.base import StrictModel
from pipeline.evaluation.metrics import Box4


def default_media_root() -> Path:
    """``../shared/testdata`` beside the checkout (the manifests' media paths are relative to it)."""
    return Path(__file__).resolve().parents[3] / "shared" / "testdata"


def manifest_kind(path: str | Path) -> str:
    """The manifest's ``kind``: ``shots`` (shot boundaries), ``ocr`` (on-screen text), else ``retrieval``."""
    if str(path).endswith(".jsonl"):
        return "retrieval"
    data = yaml.safe_load(Path(path).read_text())
    return str(data.get("kind", "retrieval")) if isinstance(data, dict) else "retrieval"


class ImageSpec(StrictModel):
    """How to make a query image from the query's own clip."""

    t: float  # seconds; the frame nearest this time
    crop: Box4 | None = None  # normalised x1, y1, x2, y2 of the frame to keep
    jpeg_quality: int = 75
    scale: float = 1.0  # resize factor applied after cropping


# -- query images ---------------------------------------------------------------------------------------------
def query_image(video: str, spec: ImageSpec, cache: Path) -> bytes:
    """The JPEG query image for ``spec`` from ``video``, made once into ``cache``."""
    key = hashlib.sha256(json.dumps([str(video), spec.model_dump()], sort_keys=True).encode()).hexdigest()[:20]
    path = cache / f"{key}.jpg"
    if path.exists():
        return path.read_bytes()
    from PIL import Image

    from operators.decode import Decode, DecodeConfig

    # The index samples the 1 fps grid from the first frame; its nearest sample is the frame the index holds.
    best: tuple[float, Any] = (math.inf, None)
    for chunk in Decode(DecodeConfig(fps=1.0, max_side=4096)).iter_video("query", video):
        if chunk["error"][0]:
            raise ValueError(f"cannot make a query image from {video}: {chunk['error'][0]}")
        i = int(np.argmin(np.abs(chunk["t"] - spec.t)))
        if abs(chunk["t"][i] - spec.t) < best[0]:
            best = (abs(chunk["t"][i] - spec.t), chunk["frame"][i])
    frame = best[1]
    img = Image.fromarray(frame)
    if spec.crop is not None:
        x1, y1, x2, y2 = spec.crop
        img = img.crop((round(x1 * img.width), round(y1 * img.height), round(x2 * img.width), round(y2 * img.height)))
    if spec.scale != 1.0:
        img = img.resize((max(1, round(img.width * spec.scale)), max(1, round(img.height * spec.scale))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=spec.jpeg_quality)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()
