"""Command line: parse arguments, load the config, start Ray, call the runner or the searcher."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Any

from operators.contract import LEVELS, RERANK_NONE

VERBOSE_HELP = "also show Ray's, Ray Data's and LanceDB's logs on the terminal (they always go to the log file)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="default", help="YAML path, or a name in configs/ (default, tiny, ...)")
    p.add_argument("--db", help="database directory or object-store URI (overrides db.path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vidsearch", description="Index videos into LanceDB and search them.")
    ap.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index files, folders (recursive) or globs")
    p.add_argument("paths", nargs="+")
    _common(p)
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster address, e.g. auto or HOST:6379 (default: $RAY_ADDRESS, else ray.address, else a local Ray)",
    )
    p.add_argument("--retry-failed", action="store_true", help="retry quarantined videos")
    p.add_argument(
        "--incremental",
        action="store_true",
        help="scheduled-run mode: also prune videos whose files are gone from the given folders",
    )
    p.add_argument("--summary-json", help="also write the run summary as JSON to this file ('-': stdout)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("search", help="search by text or by example image")
    p.add_argument("text", nargs="?")
    p.add_argument("--image", help="query by example image file")
    _common(p)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--level", default="segments", choices=[*LEVELS, "texts"], help="texts: on-screen text")
    p.add_argument("--class", dest="classes", action="append", help="keep hits with this object class (repeatable)")
    p.add_argument("--video-id", dest="video_ids", action="append")
    p.add_argument("--path-glob")
    p.add_argument("--time-range", nargs=2, type=float, metavar=("START", "END"))
    p.add_argument("--min-track-duration", type=float)
    p.add_argument("--min-score", type=float)
    p.add_argument("--rerank", default="default", help="re-ranker name, or 'none'")
    p.add_argument(
        "--mode",
        default="vector",
        choices=["vector", "text", "hybrid"],
        help="vector: embeddings; text: full-text over segment captions and on-screen text; hybrid: both fused by "
        "reciprocal rank",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("prune", help="remove the rows of indexed videos whose files are gone")
    _common(p)
    p.add_argument("--under", action="append", help="only files inside this folder (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")

    p = sub.add_parser("maintain", help="build/refresh vector, scalar and full-text indexes; compact tables")
    _common(p)
    p.add_argument("--force", action="store_true", help="compact everything; vector indexes even on small tables")

    p = sub.add_parser("evaluate", help="retrieval quality (R@k, median rank, temporal/box IoU) on a labelled manifest")
    p.add_argument("--manifest", required=True, help="YAML or JSONL manifest (see eval/)")
    p.add_argument("--config", dest="configs", action="append", help="config to evaluate (repeat to compare)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument(
        "--media-root", help="folder the manifest's video paths are relative to (default ../shared/testdata)"
    )
    p.add_argument(
        "--work-dir", default=os.path.join(tempfile.gettempdir(), "vidsearch-eval"), help="databases, query images"
    )
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address (default: local Ray)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument(
        "--detector",
        dest="detectors",
        action="append",
        help="shots manifests: a shot detector to score, as YAML: a name or {detector: ..., stride: ...} (repeatable)",
    )
    p.add_argument(
        "--modes",
        default="vector",
        help="search modes to compare, comma-separated: vector, text, hybrid (text/hybrid search segment captions "
        "and on-screen text)",
    )
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="shots manifests: index the hard-cut composites with the pipeline (--config, --set) once per detector "
        "and report the tIoU of segment hits (fixed windows vs shot windows vs shot span)",
    )

    p = sub.add_parser("status", help="videos by state, rows, indexes, pipeline versions, runs, quarantined files")
    _common(p)
    p.add_argument("--runs", type=int, default=5, help="how many recent runs to show")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("serve", help="HTTP API and search page over an indexed database")
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--token",
        default=os.environ.get("VIDSEARCH_TOKEN"),
        help="bearer token required on every route (default: $VIDSEARCH_TOKEN, which keeps it out of `ps`)",
    )
    p.add_argument(
        "--media-root",
        dest="media_roots",
        action="append",
        help="stream only video files under this folder (repeatable)",
    )
    p.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        help="also answer requests for this Host name (repeatable; default: loopback names and --host; '*': any)",
    )
    p = sub.add_parser("ask", help="ask a question about a moment of an indexed video (visual question answering)")
    p.add_argument("question")
    p.add_argument("--video", help="video id (with --t)")
    p.add_argument("--t", type=float, help="seconds from the start of the video (with --hit: instead of its keyframe)")
    p.add_argument("--hit", help="a search hit's id (segment, frame or track): its video at its keyframe")
    _common(p)
    p.add_argument("--model", help="VQA model (overrides vqa.model): vilt or blip")
    p.add_argument("--frame-out", help="also write the frame the question was asked on to this JPEG file")
    p.add_argument("--json", action="store_true", help="print JSON (the decoded frame as base64 JPEG)")
    for p in sub.choices.values():  # -v after the command as well; SUPPRESS keeps a -v given before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return ap


def _config(args: argparse.Namespace) -> Any:
    from pipeline.config import load_config

    overrides = list(args.overrides)
    if args.db:
        overrides.append(f"db.path={args.db}")
    return load_config(args.config, overrides)


def start_ray(cfg: Any, address: str | None, verbose: bool = False) -> None:
    import ray

    from pipeline.logs import quiet_ray, ray_log_dir, start_local_ray
    from pipeline.store.fragments import job_runtime_env

    if ray.is_initialized():
        return
    quiet = quiet_ray(verbose)
    address = address or cfg.ray.address
    if address:
        ray.init(address=address, runtime_env=job_runtime_env(cfg.ray.runtime_env, cfg.db.path), **quiet)
    else:
        start_local_ray(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **quiet)
    logging.getLogger(__name__).info("Ray session logs (workers, raylet, Ray Data): %s", ray_log_dir())


def cmd_index(args: argparse.Namespace) -> int:
    from pipeline.store.lock import DatabaseLock

    cfg = _config(args)
    # The lock first, before the heavy imports: a scheduled run that finds another one going leaves at once.
    with DatabaseLock(cfg.db.path, "index", cfg.db.lock_dir):
        from pipeline.index.runner import preflight, run_index

        # The random-weights notice comes from run_index (a logged warning, shown on the terminal).
        preflight(cfg)  # a missing checkpoint stops the run here, before Ray starts or anything is written
        start_ray(cfg, args.address, args.verbose)
        summary = run_index(
            cfg,
            args.paths,
            progress=not args.no_progress,
            retry_failed=args.retry_failed,
            incremental=args.incremental,
        )
    print(summary.text())
    if args.summary_json == "-":
        print(json.dumps(summary.as_dict(), indent=2, default=str))
    elif args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary.as_dict(), f, indent=2, default=str)
    return 0


def _store(cfg: Any) -> Any:
    from operators.encoders import embedding_dim
    from pipeline.store.db import Store

    return Store(cfg.db.path, embedding_dim(cfg.encoder))


def cmd_prune(args: argparse.Namespace) -> int:
    from pipeline.store.lock import DatabaseLock
    from pipeline.store.maintenance import prune

    cfg = _config(args)
    with DatabaseLock(cfg.db.path, "prune", cfg.db.lock_dir):
        removed = prune(_store(cfg), roots=args.under, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} videos whose files are gone")
    for v in removed:
        print(f"  {v['path']}")
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    from pipeline.store.lock import DatabaseLock
    from pipeline.store.maintenance import maintain

    cfg = _config(args)
    with DatabaseLock(cfg.db.path, "maintain", cfg.db.lock_dir):
        report = maintain(_store(cfg), cfg.maintenance, force=args.force)
    for table, r in report["tables"].items():
        print(f"{table}: {r['rows']} rows; " + ("; ".join(r["actions"]) or "nothing to do"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.store.status import collect, format_status

    cfg = _config(args)
    st = collect(_store(cfg), cfg.pipeline_version(), last_runs=args.runs)
    print(json.dumps(st, indent=2, default=str) if args.json else format_status(st))
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any] | None:
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
        objects = r.class_name or ", ".join(sorted({b.class_name for b in r.boxes}))[:24]
        span = f"{r.start_s:7.2f}-{r.end_s:7.2f}s"
        lines.append(f"{r.rank:>4}  {r.score:7.4f}  {span:>17}  {objects:<24}  {r.path}")
        if getattr(r, "caption", None):  # a segment's caption, on its own line under the hit
            lines.append(f"{'':>4}  {r.caption}")
        if getattr(r, "screen_text", None):  # and the text on screen in it
            lines.append(f"{'':>4}  on screen: {' | '.join(r.screen_text.splitlines())[:100]}")
    return "\n".join(lines)


MAX_IMAGE_BYTES = 50 * 1024 * 1024


def _read_image_arg(path: str) -> bytes:
    """The bytes of ``--image``; a missing, unreadable or oversized file is a clear error, not a traceback."""
    from pipeline.search.searcher import SearchError

    if not os.path.isfile(path):
        raise SearchError(f"--image {path!r} is not a file")
    if os.path.getsize(path) > MAX_IMAGE_BYTES:
        raise SearchError(f"--image {path!r} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SearchError(f"--image {path!r} cannot be read: {exc.strerror or exc}") from None


def cmd_search(args: argparse.Namespace) -> int:
    from pipeline.index.runner import RANDOM_WEIGHTS_NOTICE
    from pipeline.search.searcher import Searcher

    cfg = _config(args)
    if cfg.random_weights:
        print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
    if args.level == "texts":  # on-screen text: full-text search over the text spans
        from pipeline.search.searcher import SearchError
        from pipeline.search.text import TextSearcher

        if args.mode != "vector":
            raise SearchError("--mode does not apply to level texts (on-screen text is always searched by its words)")
        hits = TextSearcher(cfg.db.path).search(args.text or "", k=args.k, filters=_filters(args))
        if args.json:
            print(json.dumps([h.as_dict() for h in hits], indent=2))
        else:
            print(
                "\n".join(f"{h.rank:>3} {h.start_s:8.2f}-{h.end_s:<8.2f} {h.text!r}  {h.path}" for h in hits)
                or "no results"
            )
        return 0
    image = _read_image_arg(args.image) if args.image else None
    rerank = None if args.rerank == RERANK_NONE else args.rerank
    results = Searcher(cfg.db.path, cfg).search(
        text=args.text, image=image, k=args.k, level=args.level, filters=_filters(args), rerank=rerank, mode=args.mode
    )
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(format_table(results) if results else "no results")
    return 0


def _shots_through_pipeline(args: argparse.Namespace) -> dict:
    from pipeline.evaluation.shots_pipeline import run_shots_pipeline

    if args.configs and len(args.configs) > 1:
        raise SystemExit("--pipeline compares shot detectors under one --config")
    start = lambda cfg: start_ray(cfg, args.address, args.verbose)  # noqa: E731
    config = (args.configs or ["default"])[0]
    return run_shots_pipeline(
        args.manifest, config, args.overrides, args.detectors, args.media_root, args.work_dir, start
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.manifests import manifest_kind
    from pipeline.evaluation.retrieval import comparison_table, run_configs
    from pipeline.evaluation.shots import run_shots

    kind = manifest_kind(args.manifest)
    if kind == "shots":  # shot boundaries: no index, no Ray
        if args.modes != "vector":
            from pipeline.config import ConfigError

            raise ConfigError("--modes applies to retrieval manifests, not to shot boundaries")
        if args.pipeline:  # segment hits' tIoU: the composites indexed on Ray
            results = _shots_through_pipeline(args)
        else:
            results = run_shots(args.manifest, args.detectors, args.media_root, args.work_dir)
        print(comparison_table(results))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2, default=str)
        return 0
    if kind == "ocr":  # on-screen text: its own evaluation, always searched by words
        from pipeline.config import ConfigError
        from pipeline.evaluation.ocr_pipeline import run_ocr_configs

        if args.modes != "vector":
            raise ConfigError("--modes applies to retrieval manifests; on-screen text is always searched by words")
        evaluate = run_ocr_configs
    else:
        evaluate = run_configs  # type: ignore[assignment]
    results, notices = evaluate(
        args.manifest,
        args.configs or ["default"],
        args.overrides,
        args.media_root,
        args.work_dir,
        k=args.k,
        start_ray=lambda cfg: start_ray(cfg, args.address, args.verbose),
        **({} if kind == "ocr" else {"modes": [m.strip() for m in args.modes.split(",") if m.strip()]}),
    )
    for n in notices:
        print(n)
    print(comparison_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.index.runner import RANDOM_WEIGHTS_NOTICE
    from pipeline.serve.app import serve

    cfg = _config(args)
    if cfg.random_weights:
        print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(
            f"WARNING: serving on {args.host} without a token: anyone who reaches it can search and stream",
            file=sys.stderr,
        )
    print(f"serving {cfg.db.path} on http://{args.host}:{args.port}/", file=sys.stderr)
    serve(
        cfg,
        host=args.host,
        port=args.port,
        token=args.token or None,
        media_roots=args.media_roots,
        allowed_hosts=args.allowed_hosts,
    )
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from operators.vqa import RANDOM_NOTICE
    from pipeline.search.ask import Asker

    if args.model:
        args.overrides.append(f"vqa.model={args.model}")
    cfg = _config(args)
    if cfg.vqa.random_weights:
        print(RANDOM_NOTICE, file=sys.stderr)
    result = Asker(cfg, _store(cfg)).ask(args.question, video_id=args.video, t=args.t, hit_id=args.hit)
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


COMMANDS = {
    "index": cmd_index,
    "evaluate": cmd_evaluate,
    "search": cmd_search,
    "prune": cmd_prune,
    "maintain": cmd_maintain,
    "status": cmd_status,
    "serve": cmd_serve,
    "ask": cmd_ask,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pipeline.logs import setup_logging
    from pipeline.store.lock import EXIT_LOCKED

    log_file = setup_logging(args.command, args.verbose)
    try:
        code = _run(args)
    except Exception:
        print(f"vidsearch: the log is in {log_file}", file=sys.stderr)
        raise
    if code not in (0, EXIT_LOCKED):
        print(f"vidsearch: the log is in {log_file}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from pipeline.store.lock import EXIT_LOCKED, LockBusy

    try:
        return COMMANDS[args.command](args)
    except LockBusy as exc:  # cron/CronJob: another run is still going; this one leaves without touching anything
        print(f"vidsearch: {exc}; exiting without doing anything (exit code {EXIT_LOCKED})", file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:
        logging.getLogger(__name__).info("%s failed", args.command, exc_info=True)  # the log file only
        # Imported only now: the searcher pulls in LanceDB (seconds), which a run refused by the lock never needs.
        from operators.base import MissingCheckpointError
        from pipeline.search.searcher import SearchError

        if isinstance(exc, MissingCheckpointError | ConfigError | SearchError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):  # storage: disk full, permissions, a vanished database folder
            print(f"error: storage failure at {getattr(args, 'db', None) or 'the database'}: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
