"""``vidsearch index PATHS``: index files, folders (recursive) or globs; reruns skip what is already indexed."""

from __future__ import annotations

import argparse
import json
import os
from contextlib import nullcontext

from pipeline.cli.common import add_common, load, require_writable, start_ray


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index files, folders (recursive) or globs")
    p.add_argument("paths", nargs="+")
    add_common(p)
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.logs import native_stderr_to_log
    from pipeline.store.lock import DatabaseLock

    cfg = load(args)
    require_writable(cfg.db.path)
    # The lock first, before the heavy imports: a scheduled run that finds another one going leaves at once.
    with DatabaseLock(cfg.db.path, "index", cfg.db.lock_dir):
        from pipeline.index.runner import preflight, run_index

        # The random-weights notice comes from run_index (a logged warning, shown on the terminal).
        preflight(cfg)  # a missing checkpoint stops the run here, before Ray starts or anything is written
        # Ray's C++ side writes to fd 2 (the driver's core worker, raylet start-up): into the log file, unless -v
        with nullcontext() if args.verbose else native_stderr_to_log():
            started = start_ray(cfg, args.address, args.verbose)
            try:
                summary = run_index(
                    cfg,
                    args.paths,
                    progress=not args.no_progress,
                    retry_failed=args.retry_failed,
                    incremental=args.incremental,
                )
            finally:
                if started:  # while fd 2 still goes to the log: shutting down Ray writes there too
                    import ray

                    ray.shutdown()
    print(summary.text())
    if args.summary_json == "-":
        print(json.dumps(summary.as_dict(), indent=2, default=str))
    elif args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary.as_dict(), f, indent=2, default=str)
    return summary.exit_code()
