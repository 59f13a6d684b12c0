"""Hugging Face checkpoints for the transformers-based models (re-rankers, VQA, captioners), resolved one way.

A checkpoint is a local directory written by ``save_pretrained`` or a hub id. A hub id is looked up in the local
cache first, so a cached checkpoint never touches the network; only a cache miss with networking allowed (not
``local_files_only``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``) and a reachable hub tries a download.
Anything else is a ``MissingCheckpointError`` with one actionable sentence naming the config key to set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from operators.encoders import MissingCheckpointError, _reachable

T = TypeVar("T")
TRUTHY = {"1", "ON", "YES", "TRUE"}


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
    if reason is None and not _reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co")):
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
