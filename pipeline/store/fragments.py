"""Rows -> Lance fragments on the worker that made them; fragments -> one atomic commit per table on the driver.

A fragment written with ``lance.fragment.write_fragments`` is a set of data files in the table's folder that
no version of the table references until a commit names it, so a worker or driver killed before the commit
leaves files nobody reads; ``Store.recover`` removes them (``cleanup_old_versions(delete_unverified=True)``,
safe under the database lock). Only the fragments' metadata (a few hundred bytes of JSON each) travels to the
driver.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.store.schema import is_added

Row = dict[str, Any]


def table_uri(db_uri: str, name: str) -> str:
    """Where LanceDB keeps table ``name`` of the database at ``db_uri`` (a folder or an object-store URI)."""
    return f"{db_uri.rstrip('/')}/{name}.lance"


def storage_options(db_uri: str) -> dict[str, str] | None:
    """Object-store settings from the standard environment variables (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
    ``AWS_ALLOW_HTTP``); None for a local database."""
    if "://" not in db_uri or db_uri.startswith("file://"):
        return None
    env = os.environ
    names = {
        "aws_endpoint": env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT"),
        "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": env.get("AWS_SESSION_TOKEN"),
        "aws_region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        "allow_http": env.get("AWS_ALLOW_HTTP"),
    }
    return {k: v for k, v in names.items() if v} or None


#: The environment variables that configure object-store access (``storage_options``).
OBJECT_STORE_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ALLOW_HTTP",
)


def job_runtime_env(runtime_env: dict[str, Any] | None, db_uri: str) -> dict[str, Any] | None:
    """``runtime_env`` plus the driver's object-store variables for an object-store database, so the workers
    that write fragments (on any node of a cluster the driver joins) reach the same store."""
    if storage_options(db_uri) is None:
        return runtime_env
    env = {k: os.environ[k] for k in OBJECT_STORE_ENV if k in os.environ}
    out = dict(runtime_env or {})
    out["env_vars"] = {**env, **(out.get("env_vars") or {})}
    return out


def to_arrow(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """Rows (dicts, embeddings as numpy arrays) as a table of ``schema``; fixed-size vectors are stacked into
    one buffer instead of going through Python lists. A column added to the schema after a table's first release
    (``schema.is_added``) may be missing from the rows: it is null there."""
    cols = []
    for f in schema:
        values = [r.get(f.name) for r in rows] if is_added(f) else [r[f.name] for r in rows]
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_float32(f.type.value_type):
            cols.append(_vectors(values, f.type.list_size))
        elif pa.types.is_list(f.type) and pa.types.is_fixed_size_list(f.type.value_type):
            cols.append(_multivectors(values, f.type.value_type.list_size))
        else:
            cols.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _vectors(values: list[Any], dim: int) -> pa.FixedSizeListArray:
    """Fixed-size float vectors as one buffer; a None value (a row without one, e.g. empty text) is null."""
    nulls = [v is None for v in values]
    if not any(nulls):
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    stacked = np.zeros((len(values), dim), np.float32)
    for i, v in enumerate(values):
        if v is not None:
            stacked[i] = np.asarray(v, dtype=np.float32).reshape(dim)
    flat_array = pa.array(stacked.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat_array, dim, mask=pa.array(nulls, pa.bool_()))


def _multivectors(values: list[Any], dim: int) -> pa.ListArray:
    """Per row a (k, dim) array of vectors (a multivector) or None (null), as one list array over one buffer."""
    counts = [0 if v is None else len(v) for v in values]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    parts = [np.asarray(v, np.float32).reshape(-1, dim) for v in values if v is not None]
    flat = np.concatenate(parts).reshape(-1) if parts else np.zeros(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    mask = pa.array([v is None for v in values], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), inner, mask=mask)


def write_fragments(uri: str, table: pa.Table, options: dict[str, str] | None) -> list[str]:
    """Write ``table`` as uncommitted fragment(s) of the dataset at ``uri``; returns their metadata as JSON."""
    import lance

    frags = lance.fragment.write_fragments(table, uri, schema=table.schema, storage_options=options)
    return [json.dumps(f.to_json()) for f in frags]


class FragmentBuffer:
    """Rows of one video for each table, flushed to fragments once ``max_rows`` are buffered (and at the end),
    so a long video never sits whole in memory. ``fragments[table]`` collects the written metadata. ``prepare``
    sees each flush's rows first (the text vectors are computed there, one batch per flush)."""

    def __init__(
        self,
        db_uri: str,
        schemas: dict[str, pa.Schema],
        max_rows: int,
        prepare: Callable[[str, list[Row]], None] | None = None,
    ) -> None:
        self.db_uri = db_uri
        self.schemas = schemas
        self.max_rows = max_rows
        self.prepare = prepare  # (table, rows) -> None, completes the rows in place before they are written
        self.options = storage_options(db_uri)
        self.rows: dict[str, list[Row]] = {name: [] for name in schemas}
        self.fragments: dict[str, list[str]] = {name: [] for name in schemas}

    def add(self, table: str, rows: list[Row]) -> None:
        self.rows[table].extend(rows)
        if len(self.rows[table]) >= self.max_rows:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        for name in [table] if table else list(self.rows):
            rows, self.rows[name] = self.rows[name], []
            if rows:
                if self.prepare is not None:
                    self.prepare(name, rows)
                arrow = to_arrow(rows, self.schemas[name])
                self.fragments[name] += write_fragments(table_uri(self.db_uri, name), arrow, self.options)


def commit_table(db_uri: str, name: str, fragments: Iterable[str], delete_where: str | None = None) -> int | None:
    """Append ``fragments`` (JSON metadata) to table ``name`` in one commit; with ``delete_where``, the rows of
    the table's current fragments matching it are deleted in the same commit (a re-indexed video's old rows
    give way to its new ones atomically: a reader sees one or the other, never neither). Returns the new
    version, or None when there was nothing to do."""
    import lance
    from lance.fragment import FragmentMetadata

    new = [FragmentMetadata.from_json(f) for f in fragments]
    options = storage_options(db_uri)
    ds = lance.dataset(table_uri(db_uri, name), storage_options=options)
    updated, removed = [], []
    if delete_where:
        for frag in ds.get_fragments():
            meta = frag.delete(delete_where)
            if meta is None:
                removed.append(frag.fragment_id)
            elif meta.num_deletions != frag.metadata.num_deletions:
                updated.append(meta)
    if not (new or updated or removed):
        return None
    if updated or removed:
        op: Any = lance.LanceOperation.Update(
            removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new
        )
    else:
        op = lance.LanceOperation.Append(new)
    return int(lance.LanceDataset.commit(ds, op, read_version=ds.version, storage_options=options).version)


def cleanup_uncommitted(db_uri: str, name: str) -> None:
    """Remove data files no version references (fragments of a killed writer). Only safe while no other
    writer is running: the caller holds the database lock."""
    import datetime as dt

    import lance

    ds = lance.dataset(table_uri(db_uri, name), storage_options=storage_options(db_uri))
    # Keep every version a reader may still be on; only unreferenced files go.
    ds.cleanup_old_versions(older_than=dt.timedelta(days=3650), delete_unverified=True)
