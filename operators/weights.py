"""Weights, resolved one way for every model operator: device choice, Hugging Face checkpoints (re-rankers, VQA,
captioners) and the randomly initialised BLIP of ``captions.architecture``.

A Hugging Face checkpoint is a local directory written by ``save_pretrained`` or a hub id. A hub id is looked up
in the local cache first, so a cached checkpoint never touches the network; only a cache miss with networking
allowed (not ``local_files_only``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``) and a reachable hub tries a
download. Anything else is a ``MissingCheckpointError`` with one actionable sentence naming the config key to set.

The random BLIP (tests, offline smoke runs) is written once with ``save_pretrained`` and loaded back through the
same path as a real checkpoint. This module imports no model operator: they all import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

from operators.base import MissingCheckpointError

T = TypeVar("T")
TRUTHY = {"1", "ON", "YES", "TRUE"}

Device = Literal["auto", "cpu", "cuda"]

#: Words of the random tiny BLIP's tokenizer (its captions are drawn from them at random).
WORDS = "a the man woman person people dog cat car bus truck bike street road room table on in at with of and".split()
SPECIALS = {"pad": "[PAD]", "bos": "[DEC]", "sep": "[SEP]", "unk": "[UNK]", "cls": "[CLS]", "mask": "[MASK]"}


def pick_device(device: Device) -> str:
    """The torch device a config's ``device`` names: ``auto`` is CUDA when present, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def reachable(source: str, timeout_s: float = 3.0) -> bool:
    """Whether the host serving ``source`` answers a TCP connect (fail fast offline instead of retrying)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(source if "://" in source else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)  # HF_ENDPOINT=http://127.0.0.1:8080: that port
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def offline(local_files_only: bool) -> bool:
    """Whether the network must not be touched: the config says so, or the Hugging Face offline variables do."""
    env = any(os.environ.get(v, "").upper() in TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return local_files_only or env


def load_checkpoint(
    what: str,
    key: str,
    ckpt: str,
    load: Callable[[str, bool], T],
    *,
    holds: str,
    local_files_only: bool = False,
    cache_dir: str | None = None,
    otherwise: str = "",
) -> T:
    """``load(path, local_only)`` on checkpoint ``ckpt``: the directory, the cached hub id, or a download.

    ``what`` names the model in messages ("VQA model 'vilt'"), ``key`` the config key that sets the checkpoint,
    ``holds`` what a checkpoint directory must hold ("a saved X with its processor"), ``otherwise`` an extra
    way out appended to the last message (", or set captions.model: none"). ``load`` raises ``OSError`` for a
    checkpoint it cannot find.
    """
    local = os.path.isdir(os.path.expanduser(ckpt))
    if not local and (os.path.isabs(ckpt) or ckpt.startswith((".", "~")) or ckpt.count("/") > 1):
        raise MissingCheckpointError(
            f"{what} checkpoint directory '{ckpt}' does not exist: set {key} to a directory written by "
            f"save_pretrained or to a Hugging Face hub id."
        )
    path = os.path.expanduser(ckpt) if local else ckpt
    try:
        return load(path, True)
    except OSError as exc:
        if local:
            raise MissingCheckpointError(
                f"{what} checkpoint directory '{ckpt}' does not hold {holds} ({type(exc).__name__}): write it there "
                f"with save_pretrained."
            ) from None
    reason = "offline mode is on" if offline(local_files_only) else None
    if reason is None and not reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co")):
        reason = "no network route to the model hub"  # fail fast instead of waiting on retries
    if reason is None:
        try:
            return load(path, False)
        except Exception as exc:  # unknown repo, refused, partial download...
            reason = type(exc).__name__
    raise MissingCheckpointError(
        f"{what} checkpoint '{ckpt}' is not in the Hugging Face cache and could not be downloaded ({reason}): "
        f"download it where a network exists and set {key} to the local directory, or place it in the cache "
        f"({cache_dir or os.environ.get('HF_HOME', '~/.cache/huggingface')}){otherwise}."
    )


# -- captioners ---------------------------------------------------------------------------------------------------


class CaptionWeights(Protocol):
    """What resolving a captioner needs of its config (``operators.captions.CaptionConfig``)."""

    @property
    def checkpoint(self) -> str | None: ...
    @property
    def architecture(self) -> dict[str, Any] | None: ...
    @property
    def seed(self) -> int: ...
    @property
    def local_files_only(self) -> bool: ...
    @property
    def cache_dir(self) -> str | None: ...
    @property
    def random_weights(self) -> bool: ...


def save_random_blip(folder: str, architecture: dict[str, Any], seed: int = 0) -> str:
    """A randomly initialised ``BlipForConditionalGeneration`` of ``architecture`` (BlipConfig keyword arguments;
    {} is BLIP-base) with a BERT tokenizer and BLIP image processor, written to ``folder`` with save_pretrained."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    config: Any = BlipConfig(**architecture)
    text = config.text_config
    vocab = [f"w{i}" for i in range(text.vocab_size)]
    vocab[: len(WORDS)] = WORDS
    ids = {"pad": text.pad_token_id, "bos": text.bos_token_id, "sep": text.sep_token_id}
    free = iter(i for i in range(len(WORDS), text.vocab_size) if i not in ids.values())
    for name, token in SPECIALS.items():
        vocab[ids[name] if name in ids else next(free)] = token
    os.makedirs(folder, exist_ok=True)
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file, bos_token="[DEC]", do_lower_case=True)  # BLIP's own tokenizer setup
    size = config.vision_config.image_size
    processor = BlipProcessor(BlipImageProcessor(size={"height": size, "width": size}), tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def random_checkpoint(cfg: CaptionWeights) -> str:
    """The directory of the random BLIP ``cfg`` describes, written once (atomically) and reused by every worker."""
    assert cfg.architecture is not None
    key = hashlib.sha256(json.dumps([cfg.architecture, cfg.seed], sort_keys=True).encode()).hexdigest()[:16]
    folder = os.path.join(cfg.cache_dir or tempfile.gettempdir(), "vidsearch-captioners", f"blip-random-{key}")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(folder))
    try:
        save_random_blip(tmp, cfg.architecture, cfg.seed)
        os.replace(tmp, folder)  # another worker may have won the race: its copy is the same weights
    except OSError:
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_caption_checkpoint(cfg: CaptionWeights) -> str:
    """A local directory holding the captioner (the hub id's snapshot, downloaded into the cache if it is not
    there and a network exists, see ``load_checkpoint``); raises ``MissingCheckpointError`` with one actionable
    sentence otherwise."""
    if cfg.random_weights:
        return random_checkpoint(cfg)

    def load(path: str, local_only: bool) -> str:
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise FileNotFoundError(f"no config.json in {path}")
            return path
        from huggingface_hub import snapshot_download

        try:
            return str(snapshot_download(path, cache_dir=cfg.cache_dir, local_files_only=local_only))
        except Exception as exc:
            if local_only:  # not cached (or only in part)
                raise OSError(str(exc)) from exc
            raise

    return load_checkpoint(
        "Captioner",
        "captions.checkpoint",
        cfg.checkpoint or "",
        load,
        holds="a saved model and its processor",
        local_files_only=cfg.local_files_only,
        cache_dir=cfg.cache_dir,
        otherwise=", or set captions.model: none",
    )
