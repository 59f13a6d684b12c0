"""``vidsearch serve``: the HTTP API and search page over an indexed database."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.cli.common import add_common, load, require_database


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API and search page over an indexed database")
    add_common(p)
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
    p.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        metavar="IP",
        help="a reverse proxy in front of the server: believe its X-Forwarded-For and X-Forwarded-Proto (repeatable; "
        "default: none, so the client is the connection's peer and the sign-in limit counts it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.serve.app import serve

    cfg = load(args)
    require_database(cfg)
    if notice := cfg.random_notice():
        print(notice, file=sys.stderr)
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
        trusted_proxies=args.trusted_proxies,
    )
    return 0
