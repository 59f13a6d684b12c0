"""``vidsearch ask``: a question about a moment of an indexed video (visual question answering)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli.common import add_common, load, open_store, require_database


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask a question about a moment of an indexed video (visual question answering)")
    p.add_argument("question")
    p.add_argument("--video", help="video id (with --t)")
    p.add_argument("--t", type=float, help="seconds from the start of the video (with --hit: instead of its keyframe)")
    p.add_argument("--hit", help="a search hit's id (segment, frame or track): its video at its keyframe")
    add_common(p)
    p.add_argument("--model", help="VQA model (overrides vqa.model): vilt or blip")
    p.add_argument("--frame-out", help="also write the frame the question was asked on to this JPEG file")
    p.add_argument("--json", action="store_true", help="print JSON (the decoded frame as base64 JPEG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from operators.vqa import RANDOM_NOTICE
    from pipeline.search.ask import Asker

    if args.model:
        args.overrides.append(f"vqa.model={args.model}")
    cfg = load(args)
    require_database(cfg)
    if cfg.vqa.random_weights:
        print(RANDOM_NOTICE, file=sys.stderr)
    result = Asker(cfg, open_store(cfg)).ask(args.question, video_id=args.video, t=args.t, hit_id=args.hit)
    if args.frame_out:
        with open(args.frame_out, "wb") as f:
            f.write(result.frame_jpeg)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    where = f"thumbnail {result.thumb_id}" if result.thumb_id else "decoded from the video"
    print(f"{result.answer}  ({result.score:.3f})")
    print(f"  asked {result.model} about {result.path} at {result.t:.2f} s ({where})")
    for a in result.answers[1:]:
        print(f"  also: {a['answer']}  ({a['score']:.3f})")
    return 0
