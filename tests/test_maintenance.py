"""Index maintenance and status on synthetic rows of the real schemas (no Ray, no models): vector index chosen
by table size and config, scalar and full-text indexes, compaction while readers keep reading, the retrain
rule, and ``status``."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from pipeline.config import MaintenanceConfig
from pipeline.store import fts
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.maintenance import (
    SCALAR_INDEXES,
    VECTOR_INDEX,
    build_vector_index,
    maintain,
    needs_maintenance,
)
from pipeline.store.status import collect, format_status
from tests.helpers import SYNTHETIC_DIM as DIM
from tests.helpers import content, tables_of, video_row

SMALL = {"scalar_index_min_rows": 0, "compact_min_fragments": 4, "index_type": "IVF_PQ", "num_partitions": 4}


def fill(store: Store, videos: int, rows_each: int, start: int = 0) -> None:
    """``videos`` commits (one fragment per table each) of ``rows_each`` rows."""
    for i in range(start, start + videos):
        vid = f"v{i}"
        row = video_row(vid, f"/archive/clip {i}.mp4")
        store.begin([row])
        classes = ("dog",) if i % 2 else ("person", "car")
        store.commit([row], tables_of(content(vid, [float(t) for t in range(rows_each)], seed=i, classes=classes)))


def names(table) -> dict[str, str]:
    return {ix.name: str(ix.index_type) for ix in table.list_indices()}


def test_build_vector_index_follows_table_size_and_config(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    fill(store, 2, 300)
    table = store.table(S.SEGMENTS)
    assert build_vector_index(table, MaintenanceConfig(vector_index_min_rows=1000), 600) is None
    assert VECTOR_INDEX not in names(table)  # below the threshold: exact search

    pq = MaintenanceConfig(vector_index_min_rows=500, index_type="IVF_PQ", num_partitions=4, num_sub_vectors=2)
    built = build_vector_index(table, pq, 600)
    assert built is not None and built["num_partitions"] == 4 and built["index_type"] == "IVF_PQ"
    stats = table.index_stats(VECTOR_INDEX)
    assert stats.index_type == "IVF_PQ" and stats.distance_type == "cosine" and stats.num_indexed_rows == 600

    hnsw = MaintenanceConfig(vector_index_min_rows=500)  # default type, partitions about sqrt(rows)
    built = build_vector_index(table, hnsw, 600)
    assert built is not None and built["num_partitions"] == 24
    assert table.index_stats(VECTOR_INDEX).index_type == "IVF_HNSW_SQ"

    probe = store.rows(S.SEGMENTS, "video_id = 'v1' AND start_s = 7.0", ["segment_id", "embedding"]).to_pylist()[0]
    hit = table.search(probe["embedding"], vector_column_name="embedding").distance_type("cosine").nprobes(24)
    assert hit.limit(1).to_list()[0]["segment_id"] == probe["segment_id"]


def test_maintain_builds_filter_and_text_indexes_and_compacts_while_readers_keep_reading(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    fill(store, 12, 50)
    assert store.table(S.SEGMENTS).stats()["fragment_stats"]["num_fragments"] == 12
    cfg = MaintenanceConfig(vector_index_min_rows=500, num_sub_vectors=2, **SMALL)
    assert needs_maintenance(store, cfg)

    reader = Store(str(tmp_path / "db"), DIM)  # another connection, as the search server would hold
    query = np.ones(DIM, np.float32).tolist()
    errors: list[BaseException] = []
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                segs = reader.table(S.SEGMENTS)
                hits = segs.search(query, vector_column_name="embedding").distance_type("cosine").limit(5).to_arrow()
                seen.append((segs.count_rows(), hits.num_rows))
            except BaseException as exc:  # noqa: BLE001 - the test reports every reader failure
                errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        report = maintain(store, cfg)
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    assert seen and all(s == (600, 5) for s in seen), seen[:5]

    for name in (S.VIDEOS, *S.CONTENT_TABLES):
        if not store.count(name):
            continue  # no on-screen text in these videos
        table = store.table(name)
        have = names(table)
        for column, kind in SCALAR_INDEXES[name].items():
            assert f"{column}_{kind.lower()}" in have, (name, column)
        for ix in fts.INDEXES:
            if ix.table == name and ix.wanted(table):
                assert ix.name in have, (name, ix.column)
        assert table.stats()["fragment_stats"]["num_fragments"] == 1, name
    assert names(store.table(S.SEGMENTS))[VECTOR_INDEX] and report["vector_index_builds"][S.SEGMENTS]["rows"] == 600
    assert VECTOR_INDEX not in names(store.table(S.THUMBNAILS))

    tracks = store.table(S.TRACKS)
    dogs = tracks.search("dog", query_type="fts", fts_columns="class_name").limit(1000).to_arrow()
    assert dogs.num_rows == 6 * 50 and set(dogs.column("class_name").to_pylist()) == {"dog"}
    paths = store.table(S.VIDEOS).search("clip", query_type="fts", fts_columns="path").limit(100).to_arrow()
    assert paths.num_rows == 12
    assert store.count(S.SEGMENTS, "array_has_any(class_names, make_array('car'))") == 6 * 25

    assert [r["summary"]["kind"] for r in store.runs()] == ["maintain"]
    assert not needs_maintenance(store, cfg)

    fill(store, 1, 30, start=12)  # new rows: indexes are refreshed, the vector index is not retrained
    assert needs_maintenance(store, cfg)
    report = maintain(store, cfg)
    assert not report["vector_index_builds"]
    assert all(not ix["unindexed_rows"] for t in report["tables"].values() for ix in t["indexes"])

    fill(store, 12, 50, start=13)  # the table more than doubled since the build: retrain
    assert needs_maintenance(store, cfg)
    report = maintain(store, cfg)
    assert report["vector_index_builds"][S.SEGMENTS]["rows"] == 1230


def test_status_reports_states_rows_indexes_versions_runs_and_quarantine(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    fill(store, 2, 10)
    old = video_row("old", "/archive/old.mp4", version="v0")
    store.begin([old])
    store.commit([old], tables_of(content("old", [0.0])))
    store.begin([video_row("busy", "/archive/busy.mp4")])  # a run in progress (or one that died)
    for _ in range(2):
        store.record_failure("/archive/broken.mp4", "b", "decode", "DecodeError", "cannot decode video", 2)
    store.record_failure("/archive/flaky.mp4", "f", "decode", "DecodeError", "cannot decode video", 2)
    maintain(store, MaintenanceConfig(**SMALL))

    st = collect(store, current_version="v1")
    assert st["videos"] == {"complete": 3, "started": 1, "failed": 1, "quarantined": 1}
    assert st["rows"][S.FRAMES] == 21 and st["rows"][S.VIDEOS] == 4
    assert st["pipeline_versions"] == {"v1": 2, "v0": 1} and st["stale_videos"] == 1
    assert {ix["name"] for ix in st["indexes"][S.TRACKS]} >= {"video_id_btree", "class_name_fts"}
    assert st["runs"][0]["kind"] == "maintain" and st["runs"][0]["finished_at"]
    assert [q["path"] for q in st["quarantined"]] == ["/archive/broken.mp4"]

    text = format_status(st)
    for needle in (
        "videos: 3 complete, 1 failed, 1 quarantined, 1 started",
        "v1 (2 videos, current)",
        "1 videos were indexed under another pipeline version",
        "video_id_btree (BTREE on video_id)",
        "/archive/broken.mp4 (decode, 2 attempts)",
    ):
        assert needle in text, text


@pytest.mark.parametrize("index_type", ["IVF_HNSW_PQ", "IVF_SQ"])
def test_other_index_types_build(tmp_path, index_type: str) -> None:
    store = Store(str(tmp_path / "db"), DIM)
    fill(store, 1, 300)
    cfg = MaintenanceConfig(vector_index_min_rows=1, index_type=index_type, num_partitions=2, num_sub_vectors=2)
    assert build_vector_index(store.table(S.SEGMENTS), cfg, 300) is not None
    assert store.table(S.SEGMENTS).index_stats(VECTOR_INDEX).index_type == index_type


def test_cli_status_maintain_and_prune(tmp_path, capsys) -> None:
    from run_pipeline import main

    store = Store(str(tmp_path / "db"), DIM)
    fill(store, 2, 5)  # their files (/archive/clip N.mp4) do not exist
    db = ["--config", "tiny", "--db", str(tmp_path / "db")]

    assert main(["status", *db, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["videos"]["complete"] == 2 and st["rows"][S.SEGMENTS] == 10 and st["indexes"][S.SEGMENTS] == []

    assert main(["maintain", *db, "--set", "maintenance.scalar_index_min_rows=0"]) == 0
    out = capsys.readouterr().out
    assert "segments: 10 rows; " in out and "BTREE index on video_id" in out
    assert {ix.name for ix in store.table(S.SEGMENTS).list_indices()} >= {"video_id_btree", "class_names_fts"}

    assert main(["prune", *db, "--dry-run"]) == 0
    assert "would remove 2 videos" in capsys.readouterr().out and store.count(S.VIDEOS) == 2
    assert main(["prune", *db]) == 0
    assert "removed 2 videos" in capsys.readouterr().out
    assert store.count(S.VIDEOS) == 0 and store.count(S.FRAMES) == 0

    assert main(["status", *db]) == 0
    text = capsys.readouterr().out
    assert "last runs:" in text and "maintain" in text and "rows: videos 0" in text
