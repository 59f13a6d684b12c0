"""The index run: take the database lock, recover a crashed run, list and fingerprint videos, plan (skip,
move, re-index, replace), ingest (``pipeline/index/ingest.py``: the Ray graph assembles and writes on the workers,
the driver commits), then prune (``incremental``) and maintain indexes when needed.

Planning, per listed file (video id = uuid5 of the content fingerprint, see ``catalog``):
- complete under this pipeline version -> skipped; if its recorded path is gone (or now holds other content)
  the path is updated: a moved or renamed file is recognised, not re-encoded;
- complete under another pipeline version -> re-indexed ("changed"); its rows are replaced in the commit;
- a path whose recorded content is no longer listed anywhere -> the file changed: the new content is indexed
  ("changed") and the old video's rows are removed once the new ones are complete;
- quarantined (failed ``failures.quarantine_after`` times with this content) -> skipped until ``retry_failed``;
- otherwise new.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from operators.captions import RANDOM_CAPTIONS_NOTICE
from operators.detect_track import resolve_yolo
from operators.encoders import embedding_dim, resolve_checkpoint
from operators.speech import model_path
from operators.text_embed import model_path as text_model_path
from operators.text_embed import text_dim
from operators.weights import resolve_caption_checkpoint
from pipeline.config import Config
from pipeline.index.catalog import VideoFile, list_videos, prune
from pipeline.index.graph import graph_stage_times
from pipeline.index.ingest import Ingest, timed
from pipeline.store import schema as S
from pipeline.store.db import Store, now
from pipeline.store.lock import DatabaseLock, check_held
from pipeline.store.maintenance import maintain, needs_maintenance

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one index run did; written as JSON to the ``runs`` table (and ``--summary-json``)."""

    run_id: str
    pipeline_version: str
    db: str = ""
    incremental: bool = False
    ray_job_id: str = ""  # the Ray job that ran the graph (look its tasks up with Ray's state API)
    ray_nodes: int = 0  # alive nodes in the cluster when the graph started
    videos_seen: int = 0
    indexed: int = 0  # new + changed
    new: int = 0
    changed: int = 0  # re-indexed: a new pipeline version, or a file whose content changed
    skipped: int = 0  # already complete with this content and pipeline version (moved ones included)
    moved: int = 0
    quarantined: int = 0
    failed: int = 0
    recovered: int = 0  # videos a crashed run had left half-written, removed before this run
    pruned: int = 0
    frames: int = 0  # rows written per table
    segments: int = 0
    tracks: int = 0
    thumbnails: int = 0
    texts: int = 0  # on-screen text spans
    speech: int = 0  # utterances
    speech_failed: int = 0  # indexed videos whose audio could not be transcribed (each has a failure record)
    shots_failed: int = 0  # indexed videos whose shots could not be found: one shot each (a failure record each)
    wall_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # driver seconds per step
    fragments_by_node: dict[str, int] = field(default_factory=dict)  # Ray node id -> fragments its workers wrote
    graph_stages: dict[str, dict[str, float]] = field(default_factory=dict)  # Ray Data time per operator
    maintenance: dict[str, list[str]] | None = None  # what end-of-run maintenance did, per table
    failures: list[dict[str, str]] = field(default_factory=list)
    pruned_paths: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "index", **asdict(self)}

    def exit_code(self) -> int:
        """``EXIT_OK``; ``EXIT_SOME_FAILED`` when videos failed (listing or in the graph, ``Incomplete`` ones
        included) beside some that indexed or were already indexed; ``EXIT_NOTHING_INDEXED`` when every video
        tried failed. A video indexed without its speech (or shots) is indexed: its failure record says what it
        lacks, the exit code does not change."""
        from pipeline.errors import EXIT_NOTHING_INDEXED, EXIT_OK, EXIT_SOME_FAILED

        if not self.failed:
            return EXIT_OK
        return EXIT_SOME_FAILED if self.indexed else EXIT_NOTHING_INDEXED

    def text(self) -> str:
        lines = [
            f"run {self.run_id}  pipeline {self.pipeline_version}",
            f"videos: {self.indexed} indexed ({self.new} new, {self.changed} changed), {self.skipped} skipped "
            f"({self.moved} moved), {self.failed} failed, {self.quarantined} quarantined, {self.pruned} pruned"
            + (f", {self.recovered} recovered from a crashed run" if self.recovered else ""),
            f"rows: {self.frames} frames, {self.segments} segments, {self.tracks} tracks, {self.thumbnails} "
            f"thumbnails, {self.texts} text spans, {self.speech} utterances; {self.wall_s:.1f} s"
            + (f"; {self.speech_failed} videos indexed without their speech" if self.speech_failed else "")
            + (f"; {self.shots_failed} videos indexed as one shot (no shots found)" if self.shots_failed else ""),
            "stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items()),
        ]
        lines += [f"  failed: {f['path']}: {f['message']}" for f in self.failures]
        return "\n".join(lines)


@dataclass
class Plan:
    todo: list[VideoFile]
    reindexed: set[str] = field(default_factory=set)  # complete under another pipeline version
    replaces: dict[str, list[str]] = field(default_factory=dict)  # new id -> ids whose file it replaced

    def is_change(self, video_id: str) -> bool:
        return video_id in self.reindexed or video_id in self.replaces


def preflight(cfg: Config) -> str | None:
    """Resolve every checkpoint before any work; raises ``MissingCheckpointError`` with one sentence."""
    checkpoint = resolve_checkpoint(cfg.encoder)
    if cfg.detect.enabled:
        resolve_yolo(cfg.detect.model)
    if cfg.captions.model != "none":
        resolve_caption_checkpoint(cfg.captions)  # a random captioner is built and saved here, once
    if cfg.speech.model != "none":
        model_path(cfg.speech.model)  # hash-checked, or a sentence saying how to get it
    if cfg.text_embed.enabled:
        text_model_path(cfg.text_embed)
    return checkpoint


class Runner:
    """One index run over ``inputs`` into ``cfg.db.path``.

    ``incremental``: the scheduled-run mode; also prunes videos whose files are gone from the input folders.
    """

    def __init__(
        self, cfg: Config, progress: bool = True, retry_failed: bool = False, incremental: bool = False
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.retry_failed = retry_failed
        self.incremental = incremental
        self.dim = embedding_dim(cfg.encoder)
        self.text_dim = text_dim(cfg.text_embed)
        self.store = Store(cfg.db.path, self.dim, text_dim=self.text_dim)
        self.version = cfg.pipeline_version()

    def plan(self, files: list[VideoFile], summary: RunSummary, quarantined: dict[str, set[str]] | None = None) -> Plan:
        """What to index (see the module docstring); updates ``summary`` with skips, moves, quarantines."""
        complete = self.store.complete_videos()
        seen = ["video_id", "path", "pipeline_version", *(["mtime_ns"] if "mtime_ns" in complete.schema.names else [])]
        rows = complete.select(seen).to_pylist()
        done = {r["video_id"]: r for r in rows}
        at_path: dict[str, list[str]] = {}
        for r in rows:
            at_path.setdefault(r["path"], []).append(r["video_id"])
        listed = {f.path: f.video_id for f in files}
        listed_ids = set(listed.values())
        quarantined = quarantined if quarantined is not None else self._quarantined()
        plan, taken = Plan([]), set()
        for f in files:
            prev = done.get(f.video_id)
            replaced = [v for v in at_path.get(f.path, []) if v != f.video_id and v not in listed_ids]
            if f.video_id in taken:  # same content twice in this run: index once
                summary.skipped += 1
            elif prev and prev["pipeline_version"] == self.version:
                summary.skipped += 1
                taken.add(f.video_id)
                if prev["path"] != f.path and not _holds(prev["path"], f.video_id, listed):
                    self.store.update_path(f.video_id, f.path, f.mtime_ns)  # moved or renamed: same content, new path
                    summary.moved += 1
                elif prev["path"] == f.path and prev.get("mtime_ns") not in (None, f.mtime_ns):
                    # touched since indexing and the fingerprint still matches: this run accepts it as the same
                    # content, so the server may stream it again
                    self.store.update_path(f.video_id, f.path, f.mtime_ns)
                if replaced:  # a replacement that committed but died before removing the old video
                    self.store.delete_videos(replaced)
            elif f.video_id in quarantined.get(f.path, ()):
                summary.quarantined += 1
            else:
                plan.todo.append(f)
                taken.add(f.video_id)
                if prev:
                    plan.reindexed.add(f.video_id)
                if replaced:
                    plan.replaces[f.video_id] = replaced
        return plan

    def _quarantined(self) -> dict[str, set[str]]:
        return {} if self.retry_failed else self.store.quarantined()

    def run(self, inputs: list[str]) -> RunSummary:
        """Index ``inputs`` under the database lock (``LockBusy`` if another run holds it)."""
        with DatabaseLock(self.cfg.db.path, "index", self.cfg.db.lock_dir):
            return self._run(inputs)

    def _run(self, inputs: list[str]) -> RunSummary:
        started = now()
        t0 = time.monotonic()
        summary = RunSummary(
            run_id=str(uuid.uuid4()), pipeline_version=self.version, db=self.cfg.db.path, incremental=self.incremental
        )
        st = summary.stages
        notices = [n] if (n := self.cfg.random_notice()) else []
        if self.cfg.captions.random_weights:  # one notice line: the captions' sentence joins the models' one
            notices.append(RANDOM_CAPTIONS_NOTICE if notices else f"NOTE: {RANDOM_CAPTIONS_NOTICE}")
        if notices:
            log.warning(" ".join(notices))
        _warn_ephemeral(self.cfg.db.path)
        with timed(st, "preflight"):
            checkpoint = preflight(self.cfg)
        self.store.record_run(summary.run_id, started, self.version, summary.as_dict(), finished=False)
        with timed(st, "recover"):
            summary.recovered = len(self.store.recover())
            migrated = self.store.migrate()
        if migrated:
            log.info("added new columns to existing tables: %s", migrated)
        with timed(st, "list"):
            files, unreadable = list_videos(inputs)
        summary.videos_seen = len(files) + len(unreadable)
        quarantined = self._quarantined()
        for bad in unreadable:
            if bad.path in quarantined:
                summary.quarantined += 1
            else:
                self._fail(summary, bad.path, "", "list", "UnreadableFile", bad.reason)
        with timed(st, "plan"):
            plan = self.plan(files, summary, quarantined)
        if self.incremental:
            with timed(st, "prune"):
                pruned = prune(self.store, roots=[i for i in inputs if os.path.isdir(i)])
            summary.pruned, summary.pruned_paths = len(pruned), [p["path"] for p in pruned]
        if plan.todo:
            self.store.begin([self._video_row(f) for f in plan.todo])
            self._ingest(plan, checkpoint, summary)
        if self.cfg.maintenance.after_index and (summary.indexed or summary.pruned or summary.moved):
            check_held(self.cfg.db.path, self.cfg.db.lock_dir)
            with timed(st, "maintain"):
                if needs_maintenance(self.store, self.cfg.maintenance):
                    report = maintain(self.store, self.cfg.maintenance)  # the full report is its own runs row
                    summary.maintenance = {t: r["actions"] for t, r in report["tables"].items() if r["actions"]}
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
            "fps": float(m.get("source_fps", 0.0)),
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
            "mtime_ns": f.mtime_ns,
        }

    def _ingest(self, plan: Plan, checkpoint: str | None, summary: RunSummary) -> None:
        def video_row(f: VideoFile, meta: dict[str, Any]) -> dict[str, Any]:
            return {**self._video_row(f, meta), "run_id": summary.run_id}

        def done(f: VideoFile, counts: dict[str, int]) -> None:
            change = plan.is_change(f.video_id)
            summary.indexed += 1
            summary.changed += int(change)
            summary.new += int(not change)
            summary.frames += counts[S.FRAMES]
            summary.segments += counts[S.SEGMENTS]
            summary.tracks += counts[S.TRACKS]
            summary.thumbnails += counts[S.THUMBNAILS]
            summary.texts += counts[S.TEXTS]
            summary.speech += counts.get(S.SPEECH, 0)

        def fail(f: VideoFile, stage: str, error_type: str, message: str) -> None:
            if stage in ("speech", "shots"):  # the video is indexed; only its speech (or its shots) failed
                summary.speech_failed += stage == "speech"
                summary.shots_failed += stage == "shots"
                summary.failures.append({"path": f.path, "stage": stage, "message": message})
                # never quarantined: the file is indexed, and a quarantine would stop its later re-indexing
                self.store.record_failure(f.path, f.video_id, stage, error_type, message, sys.maxsize)
                return
            self._fail(summary, f.path, f.video_id, stage, error_type, message)

        ingest = Ingest(self.cfg, self.store, self.dim, video_row, done, fail, self.progress)
        summary.ray_job_id, summary.ray_nodes = _ray_context()
        ds = ingest.run(plan.todo, checkpoint, summary.stages, plan.reindexed, plan.replaces)
        summary.fragments_by_node = dict(ingest.fragments_by_node)
        summary.graph_stages = graph_stage_times(ds, self.cfg)

    def _fail(self, summary: RunSummary, path: str, video_id: str, stage: str, error_type: str, message: str) -> None:
        summary.failed += 1
        summary.failures.append({"path": path, "stage": stage, "message": message})
        self.store.record_failure(path, video_id, stage, error_type, message, self.cfg.failures.quarantine_after)


def _holds(path: str, video_id: str, listed: dict[str, str]) -> bool:
    """Whether ``path`` still holds the content ``video_id`` (a copy, not a move): by this run's listing when the
    path was listed, else by its existence (an unlisted file is not fingerprinted)."""
    return listed[path] == video_id if path in listed else os.path.exists(path)


def _ray_context() -> tuple[str, int]:
    import ray

    if not ray.is_initialized():
        return "", 0
    return ray.get_runtime_context().get_job_id(), sum(1 for n in ray.nodes() if n.get("Alive"))


def _warn_ephemeral(db: str) -> None:
    if os.environ.get("RAY_JOB_SUBMISSION_ID") and "://" not in db and not os.path.isabs(db):
        log.warning(
            "database path %r is relative inside a submitted Ray job: it lands in the job's temporary working "
            "directory; give an absolute shared path or an object-store URI",
            db,
        )


def run_index(
    cfg: Config, inputs: list[str], progress: bool = True, retry_failed: bool = False, incremental: bool = False
) -> RunSummary:
    return Runner(cfg, progress=progress, retry_failed=retry_failed, incremental=incremental).run(inputs)
