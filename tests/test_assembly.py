"""The streaming assembly and the fragment write path, without Ray: rows in any order and repeated give the same
tables as rows in order; segments and tracks are emitted as soon as they close, not at the end of the video;
fragments are invisible until committed, and what a killed writer left is removed by recovery."""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from operators.assemble import SegmentConfig, VideoAssembler, assemble_video
from operators.contract import FRAMES, SEGMENTS, SPEECH, TEXTS, THUMBNAILS, TRACKS
from operators.detect_track import DetectConfig
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.fragments import FragmentBuffer, table_uri

DIM = 8
N = 24  # sampled frames at 1 fps


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def frames(video_id: str = "v") -> dict[str, np.ndarray]:
    """A person walking right for the first 6 s (then gone), a car parked the whole time."""
    rng = np.random.default_rng(0)
    boxes, conf, names, regions = [], [], [], []
    for i in range(N):
        b = [[0.6, 0.6, 0.9, 0.9]]
        n = ["car"]
        if i < 6:
            b.append([0.05 + 0.02 * i, 0.1, 0.25 + 0.02 * i, 0.5])
            n.append("person")
        boxes.append(np.asarray(b, np.float32))
        conf.append(np.full(len(b), 0.9, np.float32))
        names.append(json.dumps(n))
        regions.append(rng.normal(size=(len(b), DIM)).astype(np.float32))

    def objects(items: list) -> np.ndarray:
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out

    emb = rng.normal(size=(N, DIM)).astype(np.float32)
    return {
        "video_id": np.full(N, video_id),
        "t": np.arange(N, dtype=np.float64),
        "frame_idx": np.arange(N, dtype=np.int64) * 25,
        "sample_idx": np.arange(N, dtype=np.int64),
        "n_samples": np.full(N, N, dtype=np.int64),
        "thumb": objects([_jpeg()] * N),
        "error": np.full(N, ""),
        "duration_s": np.full(N, float(N)),
        "source_fps": np.full(N, 25.0),
        "n_frames": np.full(N, N * 25),
        "width": np.full(N, 64),
        "height": np.full(N, 48),
        "rotation": np.zeros(N, dtype=np.int32),
        "backend": np.full(N, "pyav"),
        "embedding": emb / np.linalg.norm(emb, axis=1, keepdims=True),
        "det_boxes": objects(boxes),
        "det_conf": objects(conf),
        "det_names": objects(names),
        "region_emb": objects(regions),
    }


DETECT = DetectConfig(track_buffer_s=2.0)


def canonical(tables: dict[str, list[dict]]) -> dict[str, list[str]]:
    def enc(v: object) -> object:
        return np.round(np.asarray(v, np.float64), 5).tolist() if isinstance(v, np.ndarray) else v

    return {
        name: sorted(json.dumps({k: enc(v) for k, v in r.items() if k != "jpeg"}, sort_keys=True) for r in rows)
        for name, rows in tables.items()
    }


def test_rows_in_any_order_and_repeated_give_the_same_tables() -> None:
    rows = frames()
    want = assemble_video("v", rows, SegmentConfig(), DETECT, 1.0)
    got: dict[str, list[dict]] = {FRAMES: [], SEGMENTS: [], TRACKS: [], THUMBNAILS: [], TEXTS: [], SPEECH: []}
    va = VideoAssembler("v", SegmentConfig(), DETECT, 1.0, lambda t, r: got[t].extend(r))
    order = np.random.default_rng(1).permutation(N)
    chunks = [order[i : i + 5] for i in range(0, N, 5)]
    chunks.insert(2, chunks[0])  # a retried upstream task sends a chunk again
    for idx in chunks:
        va.add({k: v[idx] for k, v in rows.items()})
    assert va.done and not va.pending
    assert canonical(got) == canonical(want)
    assert len(want[FRAMES]) == N and len(want[SEGMENTS]) == N // 4
    assert sorted(t["class_name"] for t in want[TRACKS]) == ["car", "person"]


def test_segments_and_tracks_leave_as_soon_as_they_close() -> None:
    rows = frames()
    log: list[tuple[str, int]] = []  # (table, frames emitted so far) at each emit
    count = {"frames": 0}

    def emit(table: str, out: list[dict]) -> None:
        if table == FRAMES:
            count["frames"] += len(out)
        log.append((table, count["frames"]))

    va = VideoAssembler("v", SegmentConfig(window_s=4.0), DETECT, 1.0, emit)
    for i in range(N):
        va.add({k: v[i : i + 1] for k, v in rows.items()})
        # Open state stays small: one window, the live tracks, nothing waiting in the reorder buffer.
        assert not va.pending and len(va.tubes) <= 2
    first_segment = next(n for t, n in log if t == SEGMENTS)
    assert first_segment == 5  # the 0-4 s window closed when the frame at t=4 arrived
    person_track = next(n for t, n in log if t == TRACKS)
    assert person_track < N  # the person's tube left when the tracker dropped it, long before the end
    assert [t for t, _ in log].count(TRACKS) == 2  # the car's at the end


def test_fragments_are_invisible_until_committed_and_recovery_removes_orphans(tmp_path) -> None:
    db = str(tmp_path / "db")
    store = Store(db, DIM)
    video = {
        "video_id": "v", "fingerprint": "f", "path": "/v.mp4", "size_bytes": 1, "duration_s": 24.0, "fps": 25.0,
        "n_frames": 600, "width": 64, "height": 48, "rotation": 0, "backend": "pyav", "n_samples": N,
        "status": S.STATUS_STARTED, "pipeline_version": "p", "run_id": "", "indexed_at": None,
    }  # fmt: skip
    store.begin([video])
    schemas = {name: S.table_schema(name, DIM) for name in S.CONTENT_TABLES}
    buf = FragmentBuffer(db, schemas, max_rows=10)
    VideoAssembler("v", SegmentConfig(), DETECT, 1.0, buf.add).add(frames())
    buf.flush()
    assert len(buf.fragments[FRAMES]) == 3  # flushed every 10 rows: the video never sat whole in the buffer
    assert store.count(FRAMES) == 0  # written, not committed: nobody sees them

    # A killed writer's fragments: files on disk, in no version; recovery removes them.
    orphan = FragmentBuffer(db, schemas, max_rows=100)
    VideoAssembler("v", SegmentConfig(), DETECT, 1.0, orphan.add).add(frames())
    orphan.flush()
    data = table_uri(db, FRAMES) + "/data"
    before = len(os.listdir(data))
    store.commit_fragments([video], buf.fragments)
    assert store.count(FRAMES) == N and store.count(THUMBNAILS) == N and store.complete_ids() == {"v"}
    store.recover()
    assert len(os.listdir(data)) == before - len(orphan.fragments[FRAMES])
    assert store.count(FRAMES) == N
    # A retried commit of the same group leaves every row once.
    store.commit_fragments([video], buf.fragments)
    ids = store.rows(FRAMES, columns=["frame_id"]).column("frame_id").to_pylist()
    assert len(ids) == len(set(ids)) == N


def test_cpu_requests_that_overfill_the_cluster_are_scaled_to_fit_it() -> None:
    from pipeline.config import load_config
    from pipeline.index.graph import cpu_plan, fit_to_cluster

    cfg = load_config("tiny", ["ocr.engine=rapidocr", "segments.shots.detector=content"])
    actors, task = cpu_plan(cfg)
    # preprocess asks what embed asks, so it is fused into the embed actor and holds nothing of its own
    assert "preprocess" not in actors and task == cfg.ray.decode.num_cpus
    assert {"shots", "detect", "ocr", "captions", "embed", "route", "assemble"} <= set(actors)
    need = sum(actors.values()) + task
    assert need > 2  # every stage on: more than a 2-CPU machine has

    fitted, factor = fit_to_cluster(cfg, [2.0])
    assert factor < 1
    actors2, task2 = cpu_plan(fitted)
    assert sum(actors2.values()) + task2 <= 2.0
    assert fitted.ray.preprocess.num_cpus == fitted.ray.embed.num_cpus  # still fused
    assert fitted.pipeline_version() == cfg.pipeline_version()  # the rows do not change
    same, one = fit_to_cluster(cfg, [4.0])
    assert one == 1.0 and same is cfg
    # a single actor bigger than any node is brought down to fit one
    big = load_config("tiny", ["ray.embed.num_cpus=3", "ray.preprocess.num_cpus=3"])
    fitted, factor = fit_to_cluster(big, [2.0, 2.0, 2.0])
    assert fitted.ray.embed.num_cpus <= 2.0 and factor < 1
