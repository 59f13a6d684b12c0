"""``status --db``: what the database holds, read-only (no lock taken, safe while a run is writing).

Videos by state, rows per table, the indexes of each table, pipeline versions present, the last runs (index and
maintain; a run with no finish time is in progress or died) and quarantined files.
"""

from __future__ import annotations

from typing import Any

from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.maintenance import index_state

TABLES = (S.VIDEOS, *S.CONTENT_TABLES, S.FAILURES, S.RUNS)


def collect(store: Store, current_version: str | None = None, last_runs: int = 5) -> dict[str, Any]:
    """The status of ``store`` as plain data (what ``status --json`` prints)."""
    videos = store.rows(S.VIDEOS, columns=["status", "pipeline_version"]).to_pylist()
    by_state: dict[str, int] = {}
    versions: dict[str, int] = {}
    for v in videos:
        by_state[v["status"]] = by_state.get(v["status"], 0) + 1
        if v["status"] == S.STATUS_COMPLETE:
            versions[v["pipeline_version"]] = versions.get(v["pipeline_version"], 0) + 1
    failures = store.rows(S.FAILURES).to_pylist()
    by_state["failed"] = len({f["path"] for f in failures if not f["quarantined"]})
    by_state["quarantined"] = len({f["path"] for f in failures if f["quarantined"]})
    runs = []
    for r in store.runs(last_runs):
        s = r["summary"]
        keep = ("new", "changed", "skipped", "moved", "failed", "quarantined", "pruned", "recovered", "frames")
        runs.append(
            {
                "run_id": r["run_id"],
                "kind": s.get("kind", "index"),
                "started_at": str(r["started_at"]),
                "finished_at": str(r["finished_at"]) if r["finished_at"] else None,
                "pipeline_version": r["pipeline_version"],
                "wall_s": s.get("wall_s"),
                **{k: s[k] for k in keep if k in s},
            }
        )
    return {
        "db": store.uri,
        "videos": by_state,
        "rows": {name: store.count(name) for name in TABLES},
        "indexes": {name: index_state(store.table(name)) for name in TABLES if store.exists(name)},
        "pipeline_versions": versions,
        "current_pipeline_version": current_version,
        "stale_videos": sum(n for v, n in versions.items() if current_version and v != current_version),
        "runs": runs,
        "quarantined": [
            {k: f[k] for k in ("path", "stage", "error_type", "attempts", "message")}
            for f in failures
            if f["quarantined"]
        ],
    }


def format_status(st: dict[str, Any]) -> str:
    """The human-readable form of ``collect``'s result."""
    lines = [f"database {st['db']}"]
    lines.append("videos: " + ", ".join(f"{n} {state}" for state, n in sorted(st["videos"].items())))
    lines.append("rows: " + ", ".join(f"{name} {n}" for name, n in st["rows"].items()))
    lines.append("indexes:")
    for table, indexes in st["indexes"].items():
        desc = [
            f"{ix['name']} ({ix['type']} on {', '.join(ix['columns'])}"
            + (f", {ix['unindexed_rows']} rows not yet indexed" if ix["unindexed_rows"] else "")
            + ")"
            for ix in indexes
        ]
        lines.append(f"  {table}: " + ("; ".join(desc) if desc else "none (exact search / full scans)"))
    cur = st["current_pipeline_version"]
    lines.append(
        "pipeline versions: "
        + (
            ", ".join(f"{v} ({n} videos{', current' if v == cur else ''})" for v, n in st["pipeline_versions"].items())
            or "none"
        )
    )
    if st["stale_videos"]:
        lines.append(f"  {st['stale_videos']} videos were indexed under another pipeline version: `index` re-indexes")
    lines.append("last runs:")
    for r in st["runs"]:
        state = f"finished {r['finished_at']}" if r["finished_at"] else "UNFINISHED (running, or died)"
        counts = ", ".join(f"{k} {r[k]}" for k in ("new", "changed", "skipped", "failed", "pruned") if k in r)
        lines.append(f"  {r['started_at']}  {r['kind']:<8} {state}  {counts}")
    if not st["runs"]:
        lines.append("  none")
    lines.append(f"quarantined files: {len(st['quarantined'])}")
    lines += [f"  {q['path']} ({q['stage']}, {q['attempts']} attempts): {q['message']}" for q in st["quarantined"]]
    return "\n".join(lines)
