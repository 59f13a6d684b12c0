"""The database's upkeep: ``prune`` (rows of videos whose files are gone), ``maintain`` (indexes, compaction)
and ``status`` (videos by state, rows, indexes, runs)."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.common import add_common, load, open_store, require_database, require_writable


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="remove the rows of indexed videos whose files are gone")
    add_common(p)
    p.add_argument("--under", action="append", help="only files inside this folder (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.set_defaults(func=run_prune)

    p = sub.add_parser("maintain", help="build/refresh vector, scalar and full-text indexes; compact tables")
    add_common(p)
    p.add_argument("--force", action="store_true", help="compact everything; vector indexes even on small tables")
    p.set_defaults(func=run_maintain)

    p = sub.add_parser("status", help="videos by state, rows, indexes, pipeline versions, runs, quarantined files")
    add_common(p)
    p.add_argument("--runs", type=int, default=5, help="how many recent runs to show")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_status)


def run_prune(args: argparse.Namespace) -> int:
    from pipeline.index.catalog import prune
    from pipeline.store.lock import DatabaseLock

    cfg = load(args)
    require_writable(cfg.db.path)
    require_database(cfg, tables=False)
    with DatabaseLock(cfg.db.path, "prune", cfg.db.lock_dir):
        require_database(cfg)
        removed = prune(open_store(cfg), roots=args.under, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} videos whose files are gone")
    for v in removed:
        print(f"  {v['path']}")
    return 0


def run_maintain(args: argparse.Namespace) -> int:
    from pipeline.store.lock import DatabaseLock
    from pipeline.store.maintenance import maintain

    cfg = load(args)
    require_writable(cfg.db.path)
    require_database(cfg, tables=False)
    with DatabaseLock(cfg.db.path, "maintain", cfg.db.lock_dir):
        require_database(cfg)
        report = maintain(open_store(cfg), cfg.maintenance, force=args.force)
    for table, r in report["tables"].items():
        print(f"{table}: {r['rows']} rows; " + ("; ".join(r["actions"]) or "nothing to do"))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from pipeline.store.status import collect, format_status

    cfg = load(args)
    require_database(cfg)
    st = collect(open_store(cfg), cfg.pipeline_version(), last_runs=args.runs)
    print(json.dumps(st, indent=2, default=str) if args.json else format_status(st))
    return 0
