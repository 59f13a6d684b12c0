"""The streaming half of an index run: start the assembler pool, run the Ray graph, and commit what it reports.

The driver never sees a frame: each result row names one finished video with its metadata, row counts and
fragment metadata (or one failed video with its reason). Finished videos are committed in groups
(``db.commit_every_videos`` or ``db.commit_every_s``); a failed video is recorded and its ``started`` row
removed. A video the graph never finished (an assembler lost with it) is recorded ``Incomplete``. A video whose
audio could not be transcribed is committed with its pictures and no speech, and its speech failure recorded
after the commit (which clears the video's earlier failures), under the stage ``speech``; likewise a video whose
shots could not be found is committed as one shot, with a failure record of stage ``shots``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from operators import contract as C
from pipeline.config import Config
from pipeline.index.assembly import start_assemblers
from pipeline.index.catalog import VideoFile
from pipeline.index.graph import build_dataset, fit_to_cluster
from pipeline.store.db import Store
from pipeline.store.lock import check_held

log = logging.getLogger(__name__)

#: (video row, {table: fragment JSON list}) of one finished video, waiting for its group's commit.
Finished = tuple[dict[str, Any], dict[str, list[str]]]


@contextmanager
def timed(stages: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        stages[name] = round(stages.get(name, 0.0) + time.monotonic() - t0, 3)


def storage_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` (disk full, permission, object-store I/O) behind ``exc``, however deep Ray wrapped it (a
    worker's exception arrives as a task error around a UDF error around the actor call's error)."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and ("RayTaskError" not in type(e).__name__ or e.errno):
            return e
        stack += [c for c in (getattr(e, "cause", None), e.__cause__, e.__context__) if isinstance(c, BaseException)]
    return None


class Ingest:
    """Streams ``todo`` through the graph and commits each finished video exactly once.

    ``video_row(file, meta)`` builds a video's ``videos`` row; ``on_done(file, counts)`` and
    ``on_fail(file, stage, error_type, message)`` report to the run summary; ``keep_rows(video_id)`` says
    whether a failed video keeps its complete rows (a re-indexed one does).
    """

    def __init__(
        self,
        cfg: Config,
        store: Store,
        dim: int,
        video_row: Callable[[VideoFile, dict[str, Any]], dict[str, Any]],
        on_done: Callable[[VideoFile, dict[str, int]], None],
        on_fail: Callable[[VideoFile, str, str, str], None],
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.dim = dim
        self.video_row = video_row
        self.on_done = on_done
        self.on_fail = on_fail
        self.progress = progress
        self.fragments_by_node: Counter[str] = Counter()

    def run(
        self,
        todo: list[VideoFile],
        checkpoint: str | None,
        stages: dict[str, float],
        reindexed: set[str],
        replaces: dict[str, list[str]],
    ) -> Any:
        """Index ``todo``; returns the dataset (for its stats)."""
        import ray
        from tqdm import tqdm

        by_id = {f.video_id: f for f in todo}
        cfg, factor = fit_to_cluster(self.cfg, [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]])
        if factor < 1.0:
            log.info(
                "the stages' CPU requests add up to more than this Ray cluster has: each scaled by %.2f so that "
                "every stage can run (ray.<stage>.num_cpus in the config sets them)",
                factor,
            )
        detect = cfg.detect if cfg.detect.enabled else None
        a = cfg.ray.assemble
        with timed(stages, "start"):
            prefix, actors = start_assemblers(
                a.concurrency,
                a.num_cpus,
                cfg.db.path,
                self.dim,
                cfg.segments,
                detect,
                cfg.decode.fps,
                cfg.db.fragment_rows,
                cfg.spans,
                cfg.text_embed,
                self.store.text_dim,
            )
        # The graph's source rows (C.VIDEO_ROW_COLUMNS); the fingerprint lets decode refuse a file whose content
        # changed since it was listed.
        items = [{C.VIDEO_ID: f.video_id, C.PATH: f.path, C.FINGERPRINT: f.fingerprint} for f in todo]
        ds = build_dataset(cfg, items, checkpoint, (prefix, len(actors)))
        seen: set[str] = set()
        pending: list[Finished] = []
        # video -> (stage, error type, why) of the parts it was indexed without (its speech, its shots), recorded
        # after its commit (which clears the video's earlier failures)
        lacks: dict[str, list[tuple[str, str, str]]] = {}
        last_commit = time.monotonic()
        bar = tqdm(total=len(todo), unit="video", disable=not self.progress, desc="indexing")

        def commit() -> None:
            nonlocal pending, last_commit
            if pending:
                check_held(cfg.db.path, cfg.db.lock_dir)  # a writer that lost its lock stops before committing
                with timed(stages, "commit"):
                    self.store.commit_fragments([v for v, _ in pending], self._tables(pending), reindexed, replaces)
                    self.store.clear_failures([v["path"] for v, _ in pending])
                for v, _ in pending:
                    for stage, error_type, message in lacks.get(v["video_id"], []):  # indexed, without this part
                        self.on_fail(by_id[v["video_id"]], stage, error_type, message)
            pending, last_commit = [], time.monotonic()

        try:
            batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
            while True:
                with timed(stages, "graph"):  # the driver waiting on the Ray graph
                    batch = next(batches, None)
                if batch is None:
                    break
                for vid, error, result in zip(batch["video_id"], batch["error"], batch["result"], strict=True):
                    vid = str(vid)
                    if vid in seen:
                        continue  # a retried route task reporting a video again
                    seen.add(vid)
                    bar.update(1)
                    f = by_id[vid]
                    if error:
                        self._failed(f, "decode", "DecodeError", str(error), vid in reindexed)
                        continue
                    res = json.loads(result)
                    self.fragments_by_node[res["node_id"]] += sum(len(v) for v in res["fragments"].values())
                    pending.append((self.video_row(f, res["meta"]), res["fragments"]))
                    if res.get("speech_error"):
                        lacks.setdefault(vid, []).append(("speech", "AudioDecodeError", res["speech_error"]))
                    if res.get("shots_error"):
                        lacks.setdefault(vid, []).append(("shots", "ShotDetectionError", res["shots_error"]))
                    self.on_done(f, res["counts"])
                    if len(pending) >= cfg.db.commit_every_videos:  # at most this many videos per commit
                        commit()
                if time.monotonic() - last_commit > cfg.db.commit_every_s:
                    commit()
            commit()
        except Exception as exc:
            cause = storage_error(exc)
            if cause is not None and cause is not exc:  # a worker's write failed: say what the store said
                raise cause from exc
            raise
        finally:
            bar.close()
            for actor in actors:
                ray.kill(actor)
        for vid in set(by_id) - seen:  # the graph ended without all of a video's frames
            self._failed(
                by_id[vid],
                "pipeline",
                "Incomplete",
                "the pipeline ended before all sampled frames were assembled",
                vid in reindexed,
            )
        return ds

    def _failed(self, f: VideoFile, stage: str, error_type: str, message: str, keep_rows: bool) -> None:
        self.on_fail(f, stage, error_type, message)
        if not keep_rows:  # a re-indexed video keeps its complete rows
            self.store.delete_videos([f.video_id])

    @staticmethod
    def _tables(pending: list[Finished]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for _, frags in pending:
            for name, items in frags.items():
                out.setdefault(name, []).extend(items)
        return out
