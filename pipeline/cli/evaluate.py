"""``vidsearch evaluate --manifest M``: the dispatcher of the evaluations, by the manifest's ``kind``
(retrieval, shots, ocr, detection, speech, semantic); each evaluation is imported only when its manifest asks for it."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

from pipeline.cli.common import require_writable, start_ray


def add(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


def _shots(args: argparse.Namespace) -> dict[str, Any]:
    """Shot boundaries: scored on the clips (no index, no Ray), or through the pipeline with ``--pipeline``."""
    if not args.pipeline:
        from pipeline.evaluation.shots import run_shots

        return run_shots(args.manifest, args.detectors, args.media_root, args.work_dir)
    from pipeline.evaluation.shots_pipeline import run_shots_pipeline

    if args.configs and len(args.configs) > 1:
        raise SystemExit("--pipeline compares shot detectors under one --config")
    config = (args.configs or ["default"])[0]
    return run_shots_pipeline(
        args.manifest, config, args.overrides, args.detectors, args.media_root, args.work_dir, _ray(args)
    )


def _detection(args: argparse.Namespace, configs: list[str]) -> dict[str, Any]:
    """The detector of each config against ground-truth boxes (no index, no Ray)."""
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.evaluation.detection import evaluate_detection, load_detection_manifest
    from pipeline.evaluation.manifests import default_media_root

    manifest = load_detection_manifest(args.manifest)
    root = Path(args.media_root) if args.media_root else default_media_root()
    results: dict[str, Any] = {}
    for name in configs:
        cfg = load_config(name, args.overrides)
        results |= {f"{Path(name).stem}: {k}": v for k, v in evaluate_detection(manifest, cfg.detect, root).items()}
    return results


def _ray(args: argparse.Namespace) -> Any:
    return lambda cfg: start_ray(cfg, args.address, args.verbose)


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.evaluation.manifests import manifest_kind
    from pipeline.evaluation.retrieval import comparison_table

    if not os.path.isfile(args.manifest):
        raise ConfigError(f"--manifest {args.manifest!r} is not a file (see eval/ for the shipped manifests)")
    kind = manifest_kind(args.manifest)
    require_writable(args.work_dir)  # its databases and query images are written there
    configs = args.configs or ["default"]
    notices: list[str] = []
    if kind != "retrieval" and args.modes != "vector":
        where = {"shots": "shot boundaries", "ocr": "on-screen text, which is always searched by words"}
        raise ConfigError(f"--modes applies to retrieval manifests, not to {where.get(kind, kind)}")
    if kind == "shots":
        results = _shots(args)
    elif kind == "detection":
        results = _detection(args, configs)
    elif kind == "speech":
        from pipeline.evaluation.speech import run_speech_configs

        results, notices = run_speech_configs(
            args.manifest, configs, args.overrides, args.media_root, args.work_dir, k=args.k, start_ray=_ray(args)
        )
    elif kind == "semantic":
        from pipeline.evaluation.semantic import run_semantic_configs

        results, notices = run_semantic_configs(
            args.manifest, configs, args.overrides, args.media_root, args.work_dir, k=args.k, start_ray=_ray(args)
        )
    elif kind == "ocr":
        from pipeline.evaluation.ocr_pipeline import run_ocr_configs

        results, notices = run_ocr_configs(
            args.manifest, configs, args.overrides, args.media_root, args.work_dir, k=args.k, start_ray=_ray(args)
        )
    else:
        from pipeline.evaluation.retrieval import run_configs

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        results, notices = run_configs(
            args.manifest, configs, args.overrides, args.media_root, args.work_dir, args.k, _ray(args), modes
        )
    for n in notices:
        print(n)
    print(comparison_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0
