"""The index run: list and fingerprint videos, skip what is done, stream the Ray graph, assemble each
finished video on the driver and hand groups of finished videos to the single committer.

Frame rows of one video arrive in any order and possibly twice (a retried decode task re-yields its
chunks), so the driver buffers them by ``(video_id, sample_idx)``; a video is finished when all of its
``n_samples`` rows are in, or failed when an error row arrives.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from operators.assemble import Assembler
from operators.detect_track import resolve_yolo
from operators.encoders import embedding_dim, resolve_checkpoint
from pipeline import schema as S
from pipeline.catalog import VideoFile, list_videos
from pipeline.config import Config
from pipeline.graph import build_dataset, rows_of, select_driver_columns
from pipeline.store import Store, now

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTICE = (
    "NOTE: this config uses randomly initialised models; search results from random weights carry no meaning "
    "(only near-duplicate image queries are meaningful)."
)


@dataclass
class RunSummary:
    run_id: str
    pipeline_version: str
    videos_seen: int = 0
    indexed: int = 0
    new: int = 0
    changed: int = 0
    skipped: int = 0
    moved: int = 0
    quarantined: int = 0
    failed: int = 0
    recovered: int = 0
    frames: int = 0
    segments: int = 0
    tracks: int = 0
    wall_s: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [
            f"run {self.run_id}  pipeline {self.pipeline_version}",
            f"videos: {self.indexed} indexed ({self.new} new, {self.changed} changed), {self.skipped} skipped "
            f"({self.moved} moved), {self.failed} failed, {self.quarantined} quarantined",
            f"rows: {self.frames} frames, {self.segments} segments, {self.tracks} tracks; {self.wall_s:.1f} s",
        ]
        lines += [f"  failed: {f['path']}: {f['message']}" for f in self.failures]
        return "\n".join(lines)


def preflight(cfg: Config) -> str | None:
    """Resolve every checkpoint before any work; raises ``MissingCheckpointError`` with one sentence."""
    checkpoint = resolve_checkpoint(cfg.encoder)
    if cfg.detect.enabled:
        resolve_yolo(cfg.detect.model)
    return checkpoint


class _VideoBuffer:
    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.expected = -1


class Runner:
    """One index run over ``inputs`` into ``cfg.db.path``."""

    def __init__(self, cfg: Config, progress: bool = True, retry_failed: bool = False) -> None:
        self.cfg = cfg
        self.progress = progress
        self.retry_failed = retry_failed
        self.dim = embedding_dim(cfg.encoder)
        self.store = Store(cfg.db.path, self.dim)
        self.version = cfg.pipeline_version()

    def plan(self, files: list[VideoFile], summary: RunSummary) -> tuple[list[VideoFile], set[str]]:
        """Videos to index; updates ``summary`` with skips. Returns (todo, ids of changed videos)."""
        done = {
            r["video_id"]: r
            for r in self.store.complete_videos().select(["video_id", "path", "pipeline_version"]).to_pylist()
        }
        quarantined = set() if self.retry_failed else self.store.quarantined_paths()
        todo, changed, taken = [], set(), set()
        for f in files:
            prev = done.get(f.video_id)
            if f.video_id in taken:  # same content twice in this run: index once
                summary.skipped += 1
            elif prev and prev["pipeline_version"] == self.version:
                summary.skipped += 1
                if prev["path"] != f.path and not _exists(prev["path"]):
                    self.store.update_path(f.video_id, f.path)  # moved or renamed: same content, new path
                    summary.moved += 1
            elif f.path in quarantined:
                summary.quarantined += 1
            else:
                todo.append(f)
                taken.add(f.video_id)
                if prev:
                    changed.add(f.video_id)
        return todo, changed

    def run(self, inputs: list[str]) -> RunSummary:
        started = now()
        t0 = time.monotonic()
        summary = RunSummary(run_id=str(uuid.uuid4()), pipeline_version=self.version)
        if self.cfg.random_weights:
            log.warning(RANDOM_WEIGHTS_NOTICE)
        checkpoint = preflight(self.cfg)
        summary.recovered = len(self.store.recover())
        files, unreadable = list_videos(inputs)
        summary.videos_seen = len(files) + len(unreadable)
        for bad in unreadable:
            self._fail(summary, bad.path, "", "list", "UnreadableFile", bad.reason)
        todo, changed = self.plan(files, summary)
        if todo:
            self.store.begin([self._video_row(f) for f in todo])
            self._stream(todo, changed, checkpoint, summary)
        summary.wall_s = time.monotonic() - t0
        self.store.record_run(summary.run_id, started, self.version, summary.as_dict())
        return summary

    def _video_row(self, f: VideoFile, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        m = meta or {}
        return {
            "video_id": f.video_id,
            "fingerprint": f.fingerprint,
            "path": f.path,
            "size_bytes": f.size,
            "duration_s": float(m.get("duration_s", 0.0)),
            "fps": float(m.get("fps", 0.0)),
            "n_frames": int(m.get("n_frames", 0)),
            "width": int(m.get("width", 0)),
            "height": int(m.get("height", 0)),
            "rotation": int(m.get("rotation", 0)),
            "backend": str(m.get("backend", "")),
            "n_samples": int(m.get("n_samples", 0)),
            "status": S.STATUS_STARTED,
            "pipeline_version": self.version,
            "run_id": "",
            "indexed_at": None,
        }

    def _stream(self, todo: list[VideoFile], changed: set[str], checkpoint: str | None, summary: RunSummary) -> None:
        from tqdm import tqdm

        by_id = {f.video_id: f for f in todo}
        assembler = Assembler(
            self.cfg.segments, self.cfg.detect if self.cfg.detect.enabled else None, self.cfg.decode.fps, self.dim
        )
        # The fingerprint lets decode refuse a file whose content changed since it was listed.
        items = [{"video_id": f.video_id, "path": f.path, "fingerprint": f.fingerprint} for f in todo]
        ds = build_dataset(self.cfg, items, checkpoint)
        buffers: dict[str, _VideoBuffer] = {}
        finished: set[str] = set()
        pending: list[tuple[dict[str, Any], dict[str, pa.Table]]] = []
        last_commit = time.monotonic()
        bar = tqdm(total=len(todo), unit="video", disable=not self.progress, desc="indexing")
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for row in rows_of(select_driver_columns(batch)):
                vid = str(row["video_id"])
                if vid in finished:
                    continue  # a late duplicate of a finished or failed video
                f = by_id[vid]
                if row["error"]:
                    finished.add(vid)
                    buffers.pop(vid, None)
                    self._fail(summary, f.path, vid, "decode", "DecodeError", str(row["error"]))
                    self.store.delete_videos([vid]) if vid not in changed else None
                    bar.update(1)
                    continue
                buf = buffers.setdefault(vid, _VideoBuffer())
                buf.expected = int(row["n_samples"])
                buf.rows[int(row["sample_idx"])] = row
                if len(buf.rows) == buf.expected:
                    finished.add(vid)
                    pending.append(self._assemble(assembler, f, buffers.pop(vid), summary, vid in changed))
                    bar.update(1)
                    bar.set_postfix(frames=summary.frames)
            if pending and (
                len(pending) >= self.cfg.db.commit_every_videos
                or time.monotonic() - last_commit > self.cfg.db.commit_every_s
            ):
                self._commit(pending)
                pending, last_commit = [], time.monotonic()
        if pending:
            self._commit(pending)
        bar.close()
        for vid in set(by_id) - finished:  # the graph ended without all of a video's frames
            self._fail(
                summary,
                by_id[vid].path,
                vid,
                "pipeline",
                "Incomplete",
                "the pipeline ended before all sampled frames arrived",
            )
            if vid not in changed:
                self.store.delete_videos([vid])

    def _assemble(
        self, assembler: Assembler, f: VideoFile, buf: _VideoBuffer, summary: RunSummary, is_change: bool
    ) -> tuple[dict[str, Any], dict[str, pa.Table]]:
        rows = [buf.rows[i] for i in sorted(buf.rows)]
        cols = {
            k: np.array(
                [r[k] for r in rows]
                if k not in ("det_boxes", "det_conf", "det_masks", "region_emb", "thumb")
                else _objects([r[k] for r in rows])
            )
            for k in rows[0]
        }
        meta = {k: rows[0][k] for k in ("duration_s", "fps", "n_frames", "width", "height", "rotation", "backend")}
        meta["n_samples"] = len(rows)
        tables = assembler(f.video_id, cols, float(meta["duration_s"]))
        summary.indexed += 1
        summary.changed += int(is_change)
        summary.new += int(not is_change)
        summary.frames += tables[S.FRAMES].num_rows
        summary.segments += tables[S.SEGMENTS].num_rows
        summary.tracks += tables[S.TRACKS].num_rows
        video = self._video_row(f, meta)
        video["run_id"] = summary.run_id
        return video, tables

    def _commit(self, pending: list[tuple[dict[str, Any], dict[str, pa.Table]]]) -> None:
        tables: dict[str, list[pa.Table]] = {}
        for _, t in pending:
            for name, rows in t.items():
                tables.setdefault(name, []).append(rows)
        self.store.commit([v for v, _ in pending], tables)
        for v, _ in pending:
            self.store.clear_failure(v["path"])

    def _fail(self, summary: RunSummary, path: str, video_id: str, stage: str, error_type: str, message: str) -> None:
        summary.failed += 1
        summary.failures.append({"path": path, "stage": stage, "message": message})
        self.store.record_failure(path, video_id, stage, error_type, message, self.cfg.failures.quarantine_after)


def _objects(items: list[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


def run_index(cfg: Config, inputs: list[str], progress: bool = True, retry_failed: bool = False) -> RunSummary:
    return Runner(cfg, progress=progress, retry_failed=retry_failed).run(inputs)


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)
