"""The command line: one module per command, each adding its own subparser and its ``run(args)``; this module
builds the parser, routes the logs and maps user-facing errors to exit codes (``pipeline/errors.py``)."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cli import ask, evaluate, index, maintain, models, search, serve
from pipeline.cli.common import VERBOSE_HELP

COMMANDS = (index, search, maintain, models, evaluate, serve, ask)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vidsearch", description="Index videos into LanceDB and search them.")
    ap.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    for p in sub.choices.values():  # -v after the command as well; SUPPRESS keeps a -v given before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return ap


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import EXIT_LOCKED, EXIT_OK
    from pipeline.logs import setup_logging

    args = parser().parse_args(argv)
    log_file = setup_logging(args.command, args.verbose)
    try:
        code = run(args)
    except Exception:
        print(f"vidsearch: the log is in {log_file}", file=sys.stderr)
        raise
    if code not in (EXIT_OK, EXIT_LOCKED):
        print(f"vidsearch: the log is in {log_file}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; a user-facing error becomes one line on stderr and its exit code."""
    from pipeline.errors import EXIT_LOCKED, EXIT_STORAGE, LockBusy, exit_code

    try:
        return int(args.func(args))
    except LockBusy as exc:  # cron/CronJob: another run is still going; this one leaves without touching anything
        print(f"vidsearch: {exc}; exiting without doing anything (exit code {EXIT_LOCKED})", file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:
        logging.getLogger(__name__).info("%s failed", args.command, exc_info=True)  # the log file only
        code = exit_code(exc)
        if code is None:
            raise
        if code == EXIT_STORAGE:  # disk full, permissions, a vanished database folder
            print(f"error: storage failure at {getattr(args, 'db', None) or 'the database'}: {exc}", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return code
