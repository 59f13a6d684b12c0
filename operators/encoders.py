"""Image and text encoders behind a registry (name -> builder), built with open_clip's own factory.

``EncoderConfig.pretrained`` is an open_clip pretrained tag (fetched into the cache on first use where a
network exists), a local checkpoint path, or ``null`` for random weights (tests and offline smoke runs).
``resolve_checkpoint`` runs before any work and stops with one sentence when a checkpoint is missing.
On CPU, ``EncoderConfig.backend`` (onnx / openvino) serves the image and text towers from exports of the loaded
weights (operators/clip_export.py); the torch model stays for the visual projection RoIAlign regions use.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from operators.backends import Backend, ExportCache, Precision, check_precision
from operators.base import MissingCheckpointError, StrictModel
from operators.weights import Device, pick_device, reachable

if TYPE_CHECKING:
    from operators.clip_export import ClipRuntime

class EncoderConfig(StrictModel):
    name: str = "open_clip"
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    #: An open_clip model config (embed_dim, vision_cfg, text_cfg) registered under ``model`` before building;
    #: lets a config define a small architecture of the same family for tests.
    architecture: dict[str, Any] | None = None
    device: Device = "auto"
    batch_size: int = 32
    resize_mode: Literal["squash", "shortest", "longest"] = "squash"  # squash keeps the whole frame for regions
    cache_dir: str | None = None
    seed: int = 0  # random weights (pretrained: null) are drawn from this seed, identical in every process
    #: Inference runtime on CPU: the towers are exported from the loaded weights at setup() and cached (see
    #: operators/backends.py). fp32 everywhere; parity with torch is tested (tests/test_backends.py). On CUDA
    #: the torch model runs whatever is set here.
    backend: Backend = "torch"
    precision: Precision = "fp32"  # bf16: OpenVINO only, faster on CPUs with bf16, outputs differ (new version)
    export_cache: str | None = None  # folder of cached exports; default $VIDSEARCH_EXPORT_CACHE or ~/.cache/vidsearch


def register_model_config(name: str, model_config: dict[str, Any]) -> None:
    import open_clip

    folder = tempfile.mkdtemp(prefix="vidsearch-model-")
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(model_config, f)
    open_clip.add_model_config(folder)


def resolve_checkpoint(cfg: EncoderConfig) -> str | None:
    """Local path of the configured weights, downloading a pretrained tag into the cache if possible.

    Returns None for random weights. Raises ``MissingCheckpointError`` with one actionable sentence otherwise.
    """
    if cfg.pretrained is None:
        return None
    if os.path.sep in cfg.pretrained or cfg.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if os.path.isfile(cfg.pretrained):
            return cfg.pretrained
        raise MissingCheckpointError(
            f"Encoder checkpoint file '{cfg.pretrained}' does not exist: set encoder.pretrained to the path of a "
            f"saved {cfg.model} state dict or to an open_clip pretrained tag."
        )
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    pcfg = get_pretrained_cfg(cfg.model, cfg.pretrained)
    if not pcfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.model)) or "none"
        raise MissingCheckpointError(
            f"open_clip has no pretrained tag '{cfg.pretrained}' for model '{cfg.model}' (known tags: {tags})."
        )
    source = pcfg.get("hf_hub") or pcfg.get("url")
    cached = _cached_hf_file(pcfg.get("hf_hub", ""), cfg.cache_dir)
    if cached:
        return cached
    try:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not reachable(source or ""):
            raise ConnectionError("no network route to the model hub")
        path = download_pretrained(pcfg, cache_dir=cfg.cache_dir)
    except Exception as exc:  # no network, hub refused, partial download...
        raise MissingCheckpointError(
            f"Encoder checkpoint {cfg.model}/{cfg.pretrained} ({source}) is not on disk and could not be downloaded "
            f"({type(exc).__name__}): download it where a network exists and set encoder.pretrained to the local "
            f"file, or place it in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})."
        ) from None
    if not path or not os.path.isfile(path):
        raise MissingCheckpointError(
            f"Encoder checkpoint {cfg.model}/{cfg.pretrained} could not be resolved to a file."
        )
    return path


def _cached_hf_file(hf_hub: str, cache_dir: str | None) -> str | None:
    """The checkpoint's file if it is already in the Hugging Face cache (no network needed)."""
    if not hf_hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, filename = os.path.split(hf_hub.rstrip("/")) if not hf_hub.endswith("/") else (hf_hub.rstrip("/"), "")
    for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


class OpenClipEncoder:
    """CLIP-style dual encoder from open_clip: image and text into one L2-normalised space."""

    def __init__(self, cfg: EncoderConfig) -> None:
        self.cfg = cfg
        self.model: Any = None
        self.preprocess: Callable[[Any], Any] | None = None

    def setup(self, checkpoint: str | None = None) -> None:
        import open_clip
        import torch

        if self.cfg.architecture is not None:
            register_model_config(self.cfg.model, self.cfg.architecture)
        path = checkpoint if checkpoint is not None else resolve_checkpoint(self.cfg)
        self.device = pick_device(self.cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)  # index and search workers must agree on random weights
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.cfg.model,
                pretrained=path,
                device=self.device,
                image_resize_mode=self.cfg.resize_mode,
                cache_dir=self.cfg.cache_dir,
            )
        model.eval()
        model.visual.output_tokens = True  # forward returns (pooled, patch tokens) for region features
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(self.cfg.model)
        self.image_size = int(
            model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
        )
        self.dim = int(model.text_projection.shape[1] if model.text_projection is not None else model.visual.output_dim)
        for p in model.parameters():
            p.requires_grad_(False)  # inference only; also keeps outputs grad-free in any worker thread
        self.runtime: ClipRuntime | None = None
        if self.cfg.backend != "torch" and self.device == "cpu":
            from operators.clip_export import ClipRuntime

            check_precision(self.cfg.backend, self.cfg.precision)
            cache = ExportCache(self.cfg.export_cache)
            self.runtime = ClipRuntime(model, self.cfg.model, self.cfg.backend, cache, None, self.cfg.precision)
            # The runtime holds the towers now; keep only the visual projection (region features) in torch.
            self.visual_proj = model.visual.proj.detach().clone() if model.visual.proj is not None else None
            self.model = None

    def _autocast(self) -> Any:
        import torch

        if self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def preprocess_frames(self, frames: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """open_clip's eval transform on each frame -> float32 [N, 3, S, S] (CPU preparation)."""
        from PIL import Image

        assert self.preprocess is not None, "call setup() first"
        return np.stack([self.preprocess(Image.fromarray(np.asarray(f))).numpy() for f in frames])

    def encode_pixels(self, pixels: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Preprocessed pixels -> (normalised embeddings [N, D], patch-token grid [N, gh, gw, width])."""
        import torch

        from operators.clip_export import l2_normalize

        outs, grids = [], []
        for start in range(0, len(pixels), self.cfg.batch_size):
            chunk = np.ascontiguousarray(pixels[start : start + self.cfg.batch_size])
            if self.runtime is not None:
                pooled_np, tokens_np = self.runtime.encode_pixels(chunk)
                outs.append(l2_normalize(pooled_np))
            else:
                with self._autocast():
                    pooled, tokens = self.model.visual(torch.from_numpy(chunk).to(self.device))
                outs.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
                tokens_np = tokens.float().cpu().numpy()
            n, t, w = tokens_np.shape
            side = int(round(t**0.5))
            grids.append(tokens_np.reshape(n, side, side, w))
        return np.concatenate(outs).astype(np.float32), np.concatenate(grids).astype(np.float32)

    def project_tokens(self, tokens: Any) -> Any:
        """Project visual token features (torch, [..., width]) into the joint space (unnormalised)."""
        proj = self.visual_proj if self.runtime is not None else self.model.visual.proj
        return tokens @ proj.to(tokens.dtype) if proj is not None else tokens

    def encode_images(self, frames: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        return self.encode_pixels(self.preprocess_frames(frames))[0]

    def encode_text(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import torch

        if self.runtime is not None:
            from operators.clip_export import l2_normalize

            return l2_normalize(self.runtime.encode_ids(self.tokenizer(list(texts)).numpy())[0])
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            emb = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy().astype(np.float32)

    def encode_text_query(self, text: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One pass of the text tower for a query: (pooled embedding [D], per-token embeddings [n_tokens, D]),
        both L2-normalised in the joint space.

        The token states go through the same final norm and projection as the pooled output, so each token
        lives in the space the image side is compared in (used by fusion re-ranking); the pooled embedding is
        open_clip's own pooling of those states (equal to ``encode_text``, since the projection is linear).
        """
        import torch
        from open_clip.transformer import text_global_pool

        if self.runtime is not None:
            from operators.clip_export import l2_normalize

            ids_np = self.tokenizer([text]).numpy()
            pooled_np, tokens_np = self.runtime.encode_ids(ids_np)
            real = int((ids_np[0] != 0).sum())  # real tokens incl. start/end; padding is id 0
            return l2_normalize(pooled_np[0]), l2_normalize(tokens_np[0, :real])
        m = self.model
        ids = self.tokenizer([text]).to(self.device)
        with self._autocast():
            x = m.token_embedding(ids) + m.positional_embedding
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        pooled = text_global_pool(x, ids, getattr(m, "text_pool_type", "argmax"), getattr(m, "text_eos_id", None))
        n = int((ids[0] != 0).sum().item())  # real tokens incl. start/end; padding is id 0
        norm = torch.nn.functional.normalize
        return (
            norm(pooled[0].float(), dim=-1).cpu().numpy().astype(np.float32),
            norm(x[0, :n].float(), dim=-1).cpu().numpy().astype(np.float32),
        )

    def encode_text_tokens(self, text: str) -> npt.NDArray[np.float32]:
        """Per-token embeddings of one query in the joint space, L2-normalised: [n_tokens, D]."""
        return self.encode_text_query(text)[1]


ENCODERS: dict[str, Callable[[EncoderConfig], OpenClipEncoder]] = {"open_clip": OpenClipEncoder}


def build_encoder(cfg: EncoderConfig) -> OpenClipEncoder:
    try:
        return ENCODERS[cfg.name](cfg)
    except KeyError:
        raise ValueError(f"unknown encoder '{cfg.name}'; registered: {sorted(ENCODERS)}") from None


def embedding_dim(cfg: EncoderConfig) -> int:
    """Width of the joint embedding space of the configured model, read from its config (no weights)."""
    import open_clip

    if cfg.architecture is not None:
        return int(cfg.architecture["embed_dim"])
    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise ValueError(f"open_clip does not know model '{cfg.model}'")
    return int(model_cfg["embed_dim"])
