"""open_clip towers exported for ONNX Runtime / OpenVINO, and the runtime that serves them to the encoder.

Two graphs, both with a dynamic batch axis:
  image  pixels [N, 3, S, S] -> pooled [N, D] (unnormalised, as ``model.visual`` returns it) and the patch
         tokens [N, T, width] (before the visual projection) that RoIAlign pools for region features
  text   ids [N, L] -> pooled [N, D] (open_clip's ``encode_text``, unnormalised) and every token state after
         the final norm and the projection [N, L, D] (what fusion re-ranking compares per token)
Normalisation and reshaping stay in numpy, as the torch path does them after the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.backends import (
    Backend,
    ExportCache,
    Precision,
    Runtime,
    export_onnx,
    onnx_runtime,
    onnx_to_openvino,
    openvino_runtime,
    settings_key,
    versions,
    weights_digest,
)

EXPORT_VERSION = 1  # bump when the exported graphs change shape or meaning


def _towers(model: Any) -> tuple[Any, Any]:
    import torch
    from open_clip.transformer import text_global_pool

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled, tokens = self.visual(pixels)
            return pooled, tokens

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m = self.m
            x = m.token_embedding(ids) + m.positional_embedding
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
            pooled = text_global_pool(x, ids, getattr(m, "text_pool_type", "argmax"), getattr(m, "text_eos_id", None))
            if isinstance(m.text_projection, torch.nn.Linear):
                return m.text_projection(pooled), m.text_projection(x)
            return pooled @ m.text_projection, x @ m.text_projection

    return ImageTower().eval(), TextTower().eval()


class ClipRuntime:
    """The exported image and text towers of one open_clip model, loaded in ``backend``'s runtime."""

    def __init__(
        self,
        model: Any,
        model_name: str,
        backend: Backend,
        cache: ExportCache,
        threads: int | None,
        precision: Precision = "fp32",
    ) -> None:
        if not model.visual.output_tokens:
            raise ValueError("the image tower must return its patch tokens (model.visual.output_tokens = True)")
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple) else size)
        self.context_length = int(model.context_length)
        self.backend = backend
        key = settings_key(
            export=EXPORT_VERSION,
            model=model_name,
            weights=weights_digest(model),
            image_size=self.image_size,
            context_length=self.context_length,
            versions=versions(),
        )
        self.key = f"open_clip-{backend}-{key}"
        self.threads, self.precision = threads, precision
        self.image, self.text = cache.get(self.key, lambda folder: self._build(model, folder), self._load)

    def _build(self, model: Any, folder: Path) -> None:
        import torch

        image, text = _towers(model)
        pixels = torch.zeros(2, 3, self.image_size, self.image_size)
        ids = torch.zeros(2, self.context_length, dtype=torch.long)
        onnx_dir = folder if self.backend == "onnx" else folder / "onnx"
        export_onnx(image, [pixels], onnx_dir / "image.onnx", ["pixels"], ["pooled", "tokens"], _batch("pixels"))
        export_onnx(text, [ids], onnx_dir / "text.onnx", ["ids"], ["pooled", "tokens"], _batch("ids"))
        if self.backend == "openvino":
            for name in ("image", "text"):
                onnx_to_openvino(onnx_dir / f"{name}.onnx", folder / f"{name}.xml")
            for f in onnx_dir.iterdir():
                f.unlink()
            onnx_dir.rmdir()

    def _load(self, folder: Path) -> tuple[Runtime, Runtime]:
        if self.backend == "onnx":
            return onnx_runtime(folder / "image.onnx", self.threads), onnx_runtime(folder / "text.onnx", self.threads)
        return (
            openvino_runtime(folder / "image.xml", self.threads, self.precision),
            openvino_runtime(folder / "text.xml", self.threads, self.precision),
        )

    def encode_pixels(self, pixels: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Pixels [N, 3, S, S] -> (pooled [N, D] unnormalised, patch tokens [N, T, width])."""
        pooled, tokens = self.image({"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return pooled.astype(np.float32), tokens.astype(np.float32)

    def encode_ids(self, ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Token ids [N, L] -> (pooled [N, D] unnormalised, projected token states [N, L, D])."""
        pooled, tokens = self.text({"ids": np.ascontiguousarray(ids, dtype=np.int64)})
        return pooled.astype(np.float32), tokens.astype(np.float32)


def _batch(name: str) -> dict[str, dict[int, str]]:
    return {name: {0: "n"}, "pooled": {0: "n"}, "tokens": {0: "n"}}


def l2_normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Like ``torch.nn.functional.normalize`` (eps 1e-12) along the last axis."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)
