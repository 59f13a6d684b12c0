"""Captioner checkpoints: resolving a hub id or a ``save_pretrained`` directory before any work (one actionable
sentence when it is missing), and the randomly initialised BLIP of ``captions.architecture`` (tests, offline smoke
runs), written once with ``save_pretrained`` and loaded back through the same path as a real checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from operators.weights import load_checkpoint

if TYPE_CHECKING:
    from operators.captions import CaptionConfig

#: Words of the random tiny BLIP's tokenizer (its captions are drawn from them at random).
WORDS = "a the man woman person people dog cat car bus truck bike street road room table on in at with of and".split()
SPECIALS = {"pad": "[PAD]", "bos": "[DEC]", "sep": "[SEP]", "unk": "[UNK]", "cls": "[CLS]", "mask": "[MASK]"}


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


def random_checkpoint(cfg: CaptionConfig) -> str:
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


def resolve_caption_checkpoint(cfg: CaptionConfig) -> str:
    """A local directory holding the captioner (the hub id's snapshot, downloaded into the cache if it is not
    there and a network exists, ``operators/weights.py``); raises ``MissingCheckpointError`` with one actionable
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
