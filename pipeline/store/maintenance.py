"""Index maintenance after ingest: vector indexes chosen by table size, scalar indexes on the filter columns,
full-text indexes on class names and paths, and compaction; and ``prune``, which removes the rows of videos
whose files are gone.

- **Vector indexes** (``embedding`` of segments, frames, tracks; and the sentence-embedding columns of speech,
  texts and segments, counting the rows that hold a vector): below ``vector_index_min_rows`` none (exact
  search is fast and exact there); above, ``index_type`` with the configured parameters, cosine distance (what
  search uses). ``build_vector_index`` is the one function that builds it, so benchmarks measure what
  production builds. Rebuilt when the configured type changes or the table grew ``retrain_growth`` times since
  the build; in between ``optimize()`` folds new rows into the existing index.
- **Scalar indexes** on the columns search filters and joins on (``SCALAR_INDEXES``) above
  ``scalar_index_min_rows``; **FTS** (LanceDB's native inverted index) on class names and paths whenever a
  table has rows, since a full-text query needs one.
- **Compaction**: ``table.optimize()`` merges small fragments (one per commit), updates every index with the
  rows added since it was built, and removes versions older than ``keep_versions_s``.

Readers keep working throughout: every step commits a new table version (Lance is multi-version), and a
reader keeps the version it opened until it re-checks, so it sees either the old or the new layout, never a
half-built one. Maintenance writes, so it runs under the database lock (the index run already holds it).
Builds are recorded as ``maintain`` runs in the ``runs`` table (rows at build time drive the retrain rule).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from typing import Any, Final

import pyarrow as pa

from pipeline.config import MaintenanceConfig
from pipeline.store import fts
from pipeline.store import schema as S
from pipeline.store.db import Store, now

log = logging.getLogger(__name__)

VECTOR_COLUMN = "embedding"
VECTOR_INDEX = "embedding_idx"
METRIC: Final = "cosine"  # must match the distance search uses

#: Per table: column -> scalar index type (BTREE for keys, ids and ranges; BITMAP for few distinct values;
#: LABEL_LIST for list columns filtered with array_has_any).
SCALAR_INDEXES: dict[str, dict[str, str]] = {
    S.VIDEOS: {"video_id": "BTREE", "status": "BITMAP", "pipeline_version": "BITMAP"},
    S.FRAMES: {"frame_id": "BTREE", "video_id": "BTREE", "t": "BTREE", "class_names": "LABEL_LIST"},
    S.SEGMENTS: {
        "segment_id": "BTREE",
        "video_id": "BTREE",
        "start_s": "BTREE",
        "end_s": "BTREE",
        "class_names": "LABEL_LIST",
    },
    S.TRACKS: {
        "track_id": "BTREE",
        "video_id": "BTREE",
        "class_name": "BITMAP",
        "t_first": "BTREE",
        "t_last": "BTREE",
        "duration_s": "BTREE",
    },
    S.THUMBNAILS: {"thumb_id": "BTREE", "video_id": "BTREE"},
}
SCALAR_INDEXES[S.TEXTS] = {"text_id": "BTREE", "video_id": "BTREE"}
SCALAR_INDEXES[S.SPEECH] = {"utterance_id": "BTREE", "video_id": "BTREE"}


def _index_config(cfg: MaintenanceConfig, n_rows: int, dim: int) -> Any:
    from lancedb.index import IvfFlat, IvfHnswPq, IvfHnswSq, IvfPq, IvfSq

    partitions = cfg.num_partitions or max(1, round(math.sqrt(n_rows)))
    partitions = max(1, min(partitions, n_rows))
    sub_vectors = cfg.num_sub_vectors or next(d for d in range(max(1, dim // 8), 0, -1) if dim % d == 0)
    m, ef = cfg.hnsw_m, cfg.hnsw_ef_construction
    return {
        "IVF_PQ": lambda: IvfPq(distance_type=METRIC, num_partitions=partitions, num_sub_vectors=sub_vectors),
        "IVF_HNSW_SQ": lambda: IvfHnswSq(distance_type=METRIC, num_partitions=partitions, m=m, ef_construction=ef),
        "IVF_HNSW_PQ": lambda: IvfHnswPq(
            distance_type=METRIC, num_partitions=partitions, m=m, ef_construction=ef, num_sub_vectors=sub_vectors
        ),
        "IVF_SQ": lambda: IvfSq(distance_type=METRIC, num_partitions=partitions),
        "IVF_FLAT": lambda: IvfFlat(distance_type=METRIC, num_partitions=partitions),
    }[cfg.index_type]()


def _scalar_config(kind: str) -> Any:
    from lancedb.index import Bitmap, BTree, LabelList

    return {"BTREE": BTree, "BITMAP": Bitmap, "LABEL_LIST": LabelList}[kind]()


def build_vector_index(
    table: Any, cfg: MaintenanceConfig, n_rows: int, force: bool = False, column: str = VECTOR_COLUMN
) -> dict[str, Any] | None:
    """Build (or replace) the vector index on ``table.<column>`` (``embedding``, or a text-vector column) for
    ``n_rows`` vectors.

    Below ``cfg.vector_index_min_rows`` nothing is built and ``None`` is returned (exact search), unless
    ``force``. Otherwise ``cfg.index_type`` with ``num_partitions`` (default about sqrt(n_rows)),
    ``num_sub_vectors`` (PQ; default dim/8), ``hnsw_m``/``hnsw_ef_construction`` (HNSW) and cosine distance.
    Returns what was built. Queries tune recall with ``cfg.nprobes`` and ``cfg.refine_factor``.
    """
    if n_rows < cfg.vector_index_min_rows and not force:
        return None
    kind = table.schema.field(column).type
    dim = (kind if pa.types.is_fixed_size_list(kind) else kind.value_type).list_size  # a vector, or a multivector
    index = _index_config(cfg, n_rows, dim)
    t0 = time.monotonic()
    table.create_index(column, config=index, replace=True, name=vector_index_name(column))
    built = {
        "index_type": cfg.index_type,
        "rows": n_rows,
        "num_partitions": index.num_partitions,
        "seconds": round(time.monotonic() - t0, 3),
    }
    log.info("built %s on %s rows of %s in %.1f s", cfg.index_type, n_rows, column, built["seconds"])
    return built


def vector_index_name(column: str) -> str:
    return VECTOR_INDEX if column == VECTOR_COLUMN else f"{column}_idx"


def text_vector_counts(table: Any, name: str) -> dict[str, int]:
    """Text-vector column of table ``name`` -> how many rows hold a vector there (nulls are not indexed)."""
    return {
        v.column: int(table.count_rows(f"{v.column} IS NOT NULL"))
        for v in S.text_vectors(name)
        if v.column in table.schema.names
    }


def _text_vector_indexes(
    table: Any, name: str, cfg: MaintenanceConfig, existing: dict[str, Any], builds: dict[str, Any], force: bool
) -> tuple[list[str], dict[str, Any]]:
    """The ANN indexes of ``name``'s sentence-embedding columns, by the rules of the ``embedding`` index (rows
    counted are those holding a vector); returns (the actions, the builds keyed ``table.column``)."""
    actions, built = [], {}
    for column, n in text_vector_counts(table, name).items():
        if not n:
            continue
        ix, last = existing.get(vector_index_name(column)), builds.get(f"{name}.{column}")
        if ix is None:
            rebuild = n >= cfg.vector_index_min_rows or force
        else:
            grown = last is not None and n >= cfg.retrain_growth * max(1, int(last["rows"]))
            rebuild = ix["type"] != cfg.index_type or grown
        if rebuild:
            done = build_vector_index(table, cfg, n, force=True, column=column)
            if done:
                built[f"{name}.{column}"] = done
                actions.append(f"vector index {cfg.index_type} on {n} vectors of {column}")
    return actions, built


def build_scalar_indexes(table: Any, name: str, existing: Any = ()) -> list[str]:
    """The scalar indexes of ``SCALAR_INDEXES[name]`` that ``table`` lacks (``existing``: its index names);
    returns what was built. Search's prefilters and the re-rank context lookup read through them."""
    built = []
    for column, kind in SCALAR_INDEXES.get(name, {}).items():
        ix_name = f"{column}_{kind.lower()}"
        if ix_name not in existing:
            table.create_index(column, config=_scalar_config(kind), replace=True, name=ix_name)
            built.append(f"{kind} index on {column}")
    return built


def _last_builds(store: Store) -> dict[str, dict[str, Any]]:
    """Table -> the most recent vector-index build recorded by a ``maintain`` run."""
    builds: dict[str, dict[str, Any]] = {}
    for run in store.runs():  # newest first
        for table, built in run["summary"].get("vector_index_builds", {}).items():
            builds.setdefault(table, built)
    return builds


def index_state(table: Any) -> list[dict[str, Any]]:
    """Every index of ``table``: name, type, columns, rows indexed and not yet indexed."""
    out = []
    for ix in table.list_indices():
        st = table.index_stats(ix.name)
        out.append(
            {
                "name": ix.name,
                "type": st.index_type if st else str(ix.index_type),
                "columns": list(ix.columns),
                "indexed_rows": st.num_indexed_rows if st else None,
                "unindexed_rows": st.num_unindexed_rows if st else None,
            }
        )
    return out


def _maintain_table(
    store: Store, name: str, cfg: MaintenanceConfig, builds: dict[str, Any], force: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    table = store.table(name)
    n = table.count_rows()
    report: dict[str, Any] = {"rows": n, "actions": []}
    existing = {ix["name"]: ix for ix in index_state(table)}
    built: dict[str, Any] = {}
    last_build = builds.get(name)
    if name in S.LEVELS and n:
        vec = existing.get(VECTOR_INDEX)
        if vec is None:
            rebuild = n >= cfg.vector_index_min_rows or force
        else:  # a changed index type, or a table that outgrew the partitions it was trained with
            grown = last_build is not None and n >= cfg.retrain_growth * max(1, int(last_build["rows"]))
            rebuild = vec["type"] != cfg.index_type or grown
        if rebuild:
            done = build_vector_index(table, cfg, n, force=True)
            if done:
                built[name] = done
            report["actions"].append(f"vector index {cfg.index_type} on {n} rows")
    if n:
        actions, text_built = _text_vector_indexes(table, name, cfg, existing, builds, force)
        report["actions"] += actions
        built |= text_built
    if n >= cfg.scalar_index_min_rows:
        report["actions"] += build_scalar_indexes(table, name, existing)
    if cfg.fts and n:
        for ix in fts.missing(table, name, existing):
            ix.build(table, replace=True)
            report["actions"].append(ix.label)
    small = int(table.stats()["fragment_stats"]["num_small_fragments"])
    unindexed = sum(int(ix["unindexed_rows"] or 0) for ix in existing.values())
    if force or small >= cfg.compact_min_fragments or unindexed:
        table.optimize(cleanup_older_than=dt.timedelta(seconds=cfg.keep_versions_s))
        report["actions"].append(f"optimize ({small} small fragments, {unindexed} unindexed rows)")
    report["indexes"] = index_state(table)
    return report, built


def needs_maintenance(store: Store, cfg: MaintenanceConfig) -> bool:
    """Cheap check: a table with enough rows but no vector index, missing scalar/FTS indexes, rows not yet in
    an index, or too many small fragments."""
    builds = _last_builds(store)
    for name in (*S.CONTENT_TABLES, S.VIDEOS):
        if not store.exists(name):
            continue
        table = store.table(name)
        n = table.count_rows()
        names = {ix.name for ix in table.list_indices()}
        if name in S.LEVELS and n >= cfg.vector_index_min_rows and VECTOR_INDEX not in names:
            return True
        if name in S.LEVELS and VECTOR_INDEX in names and name in builds:
            if n >= cfg.retrain_growth * max(1, int(builds[name]["rows"])):
                return True
        for column, vectors in text_vector_counts(table, name).items():
            if vectors >= cfg.vector_index_min_rows and vector_index_name(column) not in names:
                return True
        if n >= cfg.scalar_index_min_rows and any(
            f"{c}_{k.lower()}" not in names for c, k in SCALAR_INDEXES.get(name, {}).items()
        ):
            return True
        if cfg.fts and n and fts.missing(table, name, names):
            return True
        if any((table.index_stats(ix) or _Empty).num_unindexed_rows for ix in names):
            return True
        if int(table.stats()["fragment_stats"]["num_small_fragments"]) >= cfg.compact_min_fragments:
            return True
    return False


class _Empty:
    num_unindexed_rows = 0


def maintain(store: Store, cfg: MaintenanceConfig, force: bool = False) -> dict[str, Any]:
    """Bring every table's indexes and layout up to date; returns (and records in ``runs``) a report.

    ``force``: compact every table and build vector indexes even below ``vector_index_min_rows``.
    """
    started, t0 = now(), time.monotonic()
    builds = _last_builds(store)
    report: dict[str, Any] = {"kind": "maintain", "tables": {}, "vector_index_builds": {}}
    report["migrated"] = store.migrate()
    for name in (S.VIDEOS, *S.CONTENT_TABLES):
        if not store.exists(name):
            continue
        tr, built = _maintain_table(store, name, cfg, builds, force)
        report["tables"][name] = tr
        report["vector_index_builds"] |= built
    report["wall_s"] = round(time.monotonic() - t0, 3)
    store.record_run(f"maintain-{uuid.uuid4()}", started, "", report)
    return report
