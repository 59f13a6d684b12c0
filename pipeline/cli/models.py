"""``vidsearch models``: each model a config uses, whether it is trained or random, and where it resolves from,
offline: nothing is downloaded and no weights are loaded (catalog files are hash-checked)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.cli.common import add_common, load


@dataclass
class ModelUse:
    role: str
    model: str
    state: str  # trained | random | missing | no weights
    where: str = ""  # path | cache | bundled | hub cache | ...
    path: str = ""
    license: str = ""
    note: str = ""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the models a config uses and where each resolves (offline, no download)")
    add_common(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


@contextmanager
def _offline() -> Iterator[None]:
    keys = ("VIDSEARCH_OFFLINE", "HF_HUB_OFFLINE", "YOLO_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _catalog(role: str, name: str) -> ModelUse:
    from operators.base import MissingCheckpointError
    from operators.model_catalog import lookup, resolve

    model = lookup(name)
    lic = model.license if model else ""
    try:
        got = resolve(name, download=False)
    except MissingCheckpointError as exc:
        return ModelUse(role, name, "missing", license=lic, note=str(exc))
    return ModelUse(role, name, "trained", got.where, str(got.path), lic or (got.model.license if got.model else ""))


def _try(role: str, name: str, resolve: Callable[[], str | None]) -> ModelUse:
    from operators.base import MissingCheckpointError

    try:
        path = resolve()
    except MissingCheckpointError as exc:
        return ModelUse(role, name, "missing", note=str(exc))
    return ModelUse(role, name, "trained", "path" if path and os.path.exists(path) else "hub", path or "")


def _hub(role: str, repo: str, cache_dir: str | None = None) -> ModelUse:
    """A Hugging Face checkpoint: a local folder, or found in the hub cache (its config.json)."""
    if os.path.isdir(repo):
        return ModelUse(role, repo, "trained", "path", repo)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", cache_dir=cache_dir)
    if isinstance(found, str):
        return ModelUse(role, repo, "trained", "hub cache", os.path.dirname(found))
    return ModelUse(
        role, repo, "missing", note="not in the Hugging Face cache; fetched on first use where a network exists"
    )


def uses(cfg: Any) -> list[ModelUse]:
    """Every model ``cfg`` loads (index and search), resolved offline."""
    from operators.detect_track import resolve_yolo
    from operators.encoders import resolve_checkpoint

    out = []
    enc = cfg.encoder
    if enc.pretrained is None:
        out.append(ModelUse("image/text encoder", enc.model, "random", note="built from its architecture"))
    else:
        out.append(_try("image/text encoder", f"{enc.model}/{enc.pretrained}", lambda: resolve_checkpoint(enc)))
    if cfg.detect.enabled:
        name = cfg.detect.model
        if name.endswith((".yaml", ".yml")):
            out.append(ModelUse("detector", name, "random", note="built from its architecture"))
        else:
            out.append(
                _catalog("detector", name) if _in_catalog(name) else _try("detector", name, lambda: resolve_yolo(name))
            )
    shots = cfg.segments.shots.detector
    if shots == "transnetv2":
        out.append(_catalog("shot detector", "transnetv2"))
    elif shots != "none":
        out.append(ModelUse("shot detector", shots, "no weights", note="PySceneDetect"))
    if cfg.ocr.engine != "none":
        out.append(_catalog("on-screen text", "pp-ocrv4"))
    if cfg.captions.model != "none":
        cap = cfg.captions
        if cap.random_weights:
            out.append(ModelUse("captioner", cap.model, "random", note="built from captions.architecture"))
        else:
            from operators.weights import resolve_caption_checkpoint

            out.append(_try("captioner", cap.checkpoint or cap.model, lambda: resolve_caption_checkpoint(cap)))
    if cfg.speech.model != "none":
        from operators.speech import model_path

        name = cfg.speech.model
        out.append(_catalog("speech", name) if _in_catalog(name) else _try("speech", name, lambda: model_path(name)))
    if cfg.text_embed.enabled:
        from operators.text_embed import model_path as text_model_path

        te = cfg.text_embed
        use = _catalog("text embeddings", te.model) if _in_catalog(te.model) else None
        out.append(use or _try("text embeddings", te.model, lambda: text_model_path(te)))
    vqa = cfg.vqa
    if vqa.random_weights:
        out.append(ModelUse("question answering (ask)", vqa.model, "random", note="built from vqa.architecture"))
    else:
        from operators.vqa import build_vqa

        out.append(_hub("question answering (ask)", str(build_vqa(vqa).checkpoint)))
    return out


def _in_catalog(name: str) -> bool:
    from operators.model_catalog import lookup

    return lookup(name) is not None


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    with _offline():
        found = uses(cfg)
    if args.json:
        print(json.dumps([asdict(u) for u in found], indent=2))
        return 0
    width = max(len(u.role) for u in found)
    for u in found:
        where = f"{u.where}: {u.path}" if u.path else u.where
        extra = f"  [{u.license}]" if u.license else ""
        print(f"{u.role:<{width}}  {u.state:<10} {u.model}{extra}")
        if where or u.note:
            print(f"{'':<{width}}  {'':<10} {where or u.note}")
    return 0
