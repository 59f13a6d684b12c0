"""``vidsearch search``: by text or example image, at the segments, frames, tracks, on-screen text or speech level."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from operators.contract import LEVELS, RERANK_NONE
from pipeline.cli.common import add_common, load, require_database

MAX_IMAGE_BYTES = 50 * 1024 * 1024


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search by text or by example image")
    p.add_argument("text", nargs="?")
    p.add_argument("--image", help="query by example image file")
    add_common(p)
    p.add_argument("-k", type=int, default=10)
    p.add_argument(
        "--level",
        default="segments",
        choices=[*LEVELS, "texts", "speech"],
        help="texts: on-screen text; speech: what is said (utterances, by words; a phrase in order first)",
    )
    p.add_argument("--class", dest="classes", action="append", help="keep hits with this object class (repeatable)")
    p.add_argument("--video-id", dest="video_ids", action="append")
    p.add_argument("--path-glob")
    p.add_argument("--time-range", nargs=2, type=float, metavar=("START", "END"))
    p.add_argument("--min-track-duration", type=float)
    p.add_argument("--min-score", type=float)
    p.add_argument("--rerank", default="default", help="re-ranker name, or 'none'")
    p.add_argument(
        "--mode",
        default=None,
        choices=["vector", "text", "hybrid"],
        help="vector: embeddings (at levels texts and speech: sentence embeddings, by meaning); text: full-text "
        "(segments: over captions, on-screen text and speech); hybrid: both fused by reciprocal rank. Default: "
        "hybrid at levels texts and speech, vector elsewhere",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def filters(args: argparse.Namespace) -> dict[str, Any] | None:
    f = {
        "video_ids": args.video_ids,
        "path_glob": args.path_glob,
        "classes": args.classes,
        "time_range": tuple(args.time_range) if args.time_range else None,
        "min_track_duration": args.min_track_duration,
        "min_score": args.min_score,
    }
    f = {k: v for k, v in f.items() if v is not None}
    return f or None


def format_table(results: list[Any]) -> str:
    lines = [f"{'rank':>4}  {'score':>7}  {'span':>17}  {'objects':<24}  video"]
    for r in results:
        if r.level == "speech":  # an utterance: what was said, and when the matched words were
            said = ", ".join(f"{w['word']} {w['start_s']:.2f}s" for w in r.words or [])
            lines.append(f"{r.rank:>4}  {r.score:7.4f}  {r.start_s:7.2f}-{r.end_s:7.2f}s  {r.path}")
            lines.append(f"{'':>4}  {r.text!r}" + (f"  matched: {said}" if said else ""))
            continue
        objects = r.class_name or ", ".join(sorted({b.class_name for b in r.boxes}))[:24]
        span = f"{r.start_s:7.2f}-{r.end_s:7.2f}s"
        lines.append(f"{r.rank:>4}  {r.score:7.4f}  {span:>17}  {objects:<24}  {r.path}")
        if getattr(r, "caption", None):  # a segment's caption, on its own line under the hit
            lines.append(f"{'':>4}  {r.caption}")
        if getattr(r, "screen_text", None):  # and the text on screen in it
            lines.append(f"{'':>4}  on screen: {' | '.join(r.screen_text.splitlines())[:100]}")
        if getattr(r, "text", None):  # and the words spoken in it
            lines.append(f"{'':>4}  said: {r.text[:100]}")
    return "\n".join(lines)


def read_image(path: str) -> bytes:
    """The bytes of ``--image``; a missing, unreadable or oversized file is a clear error, not a traceback."""
    from pipeline.errors import SearchError

    if not os.path.isfile(path):
        raise SearchError(f"--image {path!r} is not a file")
    if os.path.getsize(path) > MAX_IMAGE_BYTES:
        raise SearchError(f"--image {path!r} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SearchError(f"--image {path!r} cannot be read: {exc.strerror or exc}") from None


def _require_table(db: str, level: str) -> None:
    """A database made before on-screen text (or speech) was indexed has no such table: say so, rather than
    answer "no results" as if its videos held no text."""
    from pipeline.errors import DatabaseUnusable
    from pipeline.store import schema as S
    from pipeline.store.db import Store

    table, what = (S.TEXTS, "on-screen text") if level == "texts" else (S.SPEECH, "speech")
    if not Store(db).exists(table):
        raise DatabaseUnusable(
            f"{db} predates {what} search (it has no {table} table): index its videos into a new database to "
            f"search their {what}"
        )


def run_texts(args: argparse.Namespace, cfg: Any) -> int:
    """On-screen text: the text spans searched by their words and meaning."""
    from pipeline.errors import SearchError
    from pipeline.search.searcher import Searcher, default_mode

    if args.image:
        raise SearchError("on-screen text is searched by words and meaning: give a text query, not --image")
    searcher = Searcher(cfg.db.path, cfg).texts_searcher()
    mode = args.mode or default_mode("texts")
    hits = searcher.search(args.text or "", k=args.k, filters=filters(args), mode=mode, rrf_k=cfg.search.rrf_k)
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], indent=2))
    else:
        print(
            "\n".join(f"{h.rank:>3} {h.start_s:8.2f}-{h.end_s:<8.2f} {h.text!r}  {h.path}" for h in hits)
            or "no results"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from pipeline.search.searcher import Searcher

    cfg = load(args)
    require_database(cfg)
    if args.level in ("texts", "speech"):
        _require_table(cfg.db.path, args.level)
    if notice := cfg.random_notice():
        print(notice, file=sys.stderr)
    if args.level == "texts":
        return run_texts(args, cfg)
    image = read_image(args.image) if args.image else None
    rerank = None if args.rerank == RERANK_NONE else args.rerank
    results = Searcher(cfg.db.path, cfg).search(
        text=args.text, image=image, k=args.k, level=args.level, filters=filters(args), rerank=rerank, mode=args.mode
    )
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(format_table(results) if results else "no results")
    return 0
