"""Concurrent search load on the HTTP server: ``run_pipeline.py serve`` on 127.0.0.1 (a free port, a random
token) over a benchmark database, driven by 1, 4 and 16 concurrent clients, each a keep-alive connection
sending text queries (``GET /api/search``, k=10, the config's re-ranker) back to back.

Per client count: queries/s, p50/p95/max latency, the server's CPU seconds (user+system, from /proc via
psutil) and CPU ms per query, and this process's CPU seconds (the clients share the machine). Every level
is bounded by ``--requests`` and ``--seconds``; only the loopback interface is used.

``--compare-serial`` also runs every level against a server that serialises searches
(``VIDSEARCH_SERIAL_SEARCH=1``, as the server did before concurrent searches), in the same run.

    python benchmarks/vector_search.py && python benchmarks/query_latency.py   # the 1M database, once
    python benchmarks/query_load.py --torch-threads 1                          # on it
    python benchmarks/query_load.py --quick --compare-serial                   # a 20k-segment database built here
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from _common import ROOT, header, pct, table
from query_latency import add_context_tables, queries
from vector_search import DEFAULT_DB, ensure_data, write_table

from pipeline.store import schema as S


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_small(db_dir: Path, n: int) -> None:
    """A database of ``n`` segments (plus frames, tracks, videos) as the 1M one is built, without an ANN index."""
    import lancedb

    db_dir.mkdir(parents=True, exist_ok=True)
    data = ensure_data(db_dir, n, reuse=True)
    db = lancedb.connect(str(db_dir))
    if S.SEGMENTS not in db.list_tables(limit=1000).tables or db.open_table(S.SEGMENTS).count_rows() != n:
        write_table(db, S.SEGMENTS, data)
    add_context_tables(db_dir, n)


class Server:
    """``run_pipeline.py serve`` in a child process; stopped on exit."""

    def __init__(self, db: Path, config: str, overrides: list[str], env: dict[str, str], log: Path) -> None:
        self.port, self.token = free_port(), secrets.token_urlsafe(24)
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "serve", "--config", config, "--db", str(db)]
        cmd += [a for o in overrides for a in ("--set", o)] + ["--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env, "VIDSEARCH_TOKEN": self.token},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def get(self, conn: http.client.HTTPConnection, target: str) -> tuple[int, bytes]:
        conn.request("GET", target, headers={"Authorization": f"Bearer {self.token}"})
        res = conn.getresponse()
        return res.status, res.read()

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if self.get(conn, "/api/info")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"the server did not answer within {timeout_s:.0f} s")

    def cpu_s(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def drive(server: Server, texts: list[str], clients: int, requests: int, seconds: float, k: int) -> dict[str, Any]:
    """``clients`` threads, each on its own connection, until ``requests`` queries are done or ``seconds`` pass."""
    lock, start = threading.Lock(), threading.Barrier(clients + 1)
    state = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        start.wait()
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= requests or time.monotonic() > deadline:
                break
            target = "/api/search?" + urllib.parse.urlencode({"text": texts[i % len(texts)], "k": k})
            t0 = time.perf_counter()
            try:
                status, body = server.get(conn, target)
            except OSError as exc:
                errors.append(repr(exc))
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
                continue
            took = time.perf_counter() - t0
            if status != 200 or json.loads(body)["count"] != k:
                errors.append(f"{status} {body[:200]!r}")
                continue
            with lock:
                latencies.append(took)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    cpu0, own0 = server.cpu_s(), time.process_time()
    deadline = time.monotonic() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu, own = server.cpu_s() - cpu0, time.process_time() - own0
    n = len(latencies)
    return {
        "clients": clients,
        "queries": n,
        "errors": len(errors),
        "wall_s": round(wall, 1),
        "qps": round(n / wall, 2),
        "p50_ms": round(1e3 * pct(latencies, 50), 1) if n else None,
        "p95_ms": round(1e3 * pct(latencies, 95), 1) if n else None,
        "max_ms": round(1e3 * max(latencies), 1) if n else None,
        "server_cpu_s": round(cpu, 1),
        "server_cpu_ms_per_q": round(1e3 * cpu / n, 1) if n else None,
        "client_cpu_s": round(own, 1),
        "first_error": errors[0] if errors else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small database built here (--rows), fewer queries")
    ap.add_argument("--db", help="database (default: the 1M database of query_latency.py; --quick: its own)")
    ap.add_argument("--rows", type=int, help="segments of a database this script builds (default 20,000 --quick)")
    ap.add_argument("--config", default="default", help="config for serve (default: default)")
    ap.add_argument(
        "--set", dest="overrides", action="append", help="config override (default encoder.pretrained=null)"
    )
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    ap.add_argument("--requests", type=int, help="queries per client count (default 240; --quick 60)")
    ap.add_argument("--seconds", type=float, help="time bound per client count (default 120; --quick 45)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--torch-threads", type=int, help="torch threads in the server (OMP_NUM_THREADS)")
    ap.add_argument("--compare-serial", action="store_true", help="also measure a server that serialises searches")
    args = ap.parse_args()

    rows = args.rows or (20_000 if args.quick else None)
    if rows:
        db_dir = Path(args.db or DEFAULT_DB.format(rows=f"load_{rows}"))
        build_small(db_dir, rows)
    else:
        rows = 1_000_000
        db_dir = Path(args.db or DEFAULT_DB.format(rows=rows))
        if not (db_dir / f"vectors_{rows}.npy").exists():
            raise SystemExit(f"{db_dir} has no benchmark vectors: run benchmarks/vector_search.py first")
        add_context_tables(db_dir, rows)  # what query_latency.py adds; nothing when already there
    requests = args.requests or (60 if args.quick else 240)
    seconds = args.seconds or (45.0 if args.quick else 120.0)
    header(f"query load: concurrent HTTP searches over {rows:,} segments ({db_dir})")
    env = {"OMP_NUM_THREADS": str(args.torch_threads)} if args.torch_threads else {}
    texts = queries()
    variants: list[tuple[str, dict[str, str]]] = [("concurrent", {})] + (
        [("serialised", {"VIDSEARCH_SERIAL_SEARCH": "1"})] if args.compare_serial else []
    )
    results = []
    for name, extra in variants:
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"query_load_server_{os.getpid()}.log"
        server = Server(db_dir, args.config, args.overrides or ["encoder.pretrained=null"], {**env, **extra}, log)
        try:
            server.wait_ready()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
            for t in texts[:3]:  # loads the models and warms the caches
                server.get(conn, "/api/search?" + urllib.parse.urlencode({"text": t, "k": args.k}))
            for clients in (int(c) for c in args.clients.split(",")):
                row = {"server": name, **drive(server, texts, clients, requests, seconds, args.k)}
                print(json.dumps(row), flush=True)
                results.append(row)
        finally:
            server.stop()
    print(table([{k: v for k, v in r.items() if k != "first_error"} for r in results]))
    if args.compare_serial:
        for clients in sorted({r["clients"] for r in results}):
            qps = {r["server"]: r["qps"] for r in results if r["clients"] == clients}
            if qps.get("serialised"):
                print(f"{clients} clients: concurrent/serialised QPS = {qps['concurrent'] / qps['serialised']:.2f}")
    if any(r["errors"] for r in results):
        raise SystemExit("some queries failed: " + next(r["first_error"] for r in results if r["errors"]))


if __name__ == "__main__":
    main()
