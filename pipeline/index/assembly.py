"""Assembly and writes on the workers: frame rows are routed by video to a pool of assembler actors, each of
which runs ``operators.assemble.VideoAssembler`` per video and writes the rows as Lance fragments as they
close. What reaches the driver is one small result row per finished (or failed) video: its metadata, row
counts and the JSON metadata of its fragments.

Routing: ``route`` is the graph's last stage (tasks, N:M). It splits a batch by video and hands each part to
the actor ``hash(video_id) % pool size``, so all rows of a video meet in one place whatever task or actor
produced them, and waits for the actor (backpressure: a slow assembler slows the graph, it never buffers the
archive). A retried upstream task re-sends rows; the assembler drops duplicates by ``sample_idx`` and answers
a finished video's rows with its stored result again, so a retried ``route`` task loses nothing.

An assembler actor that dies is restarted and serves the rest of the run, but its open videos are lost: they
are reported ``Incomplete`` at the end of the run (a failure record with a reason, retried by the next run) and
their written fragments, never committed, are removed by the next run's recovery.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from operators import contract as C
from operators.assemble import SegmentConfig, VideoAssembler, assemble_video
from operators.base import Batch, Columns
from operators.contract import ASSEMBLY_COLUMNS, CONTENT_TABLES
from operators.detect_track import DetectConfig
from operators.text_embed import TextEmbedConfig, TextEmbedder
from operators.text_spans import SpanConfig
from pipeline.store import schema as S
from pipeline.store.fragments import FragmentBuffer, to_arrow

#: Columns of the result rows the driver receives.
RESULT_COLUMNS = ("video_id", "error", "result")


class TextVectorFill:
    """Completes rows with their sentence embeddings before they are written (``FragmentBuffer.prepare``): for
    each of a table's ``TEXT_VECTORS``, the vector of the row's text (null where it is empty) and the model's id.
    The model loads on the first text there is to embed, so a run whose videos hold none never loads it."""

    def __init__(self, cfg: TextEmbedConfig, embedder: TextEmbedder | None = None) -> None:
        self.embedder = embedder or TextEmbedder(cfg)

    def __call__(self, table: str, rows: list[dict[str, Any]]) -> None:
        columns = S.text_vectors(table)
        if not columns or not rows:
            return
        for v in columns:
            for r, vec in zip(rows, self.embedder.passages([r.get(v.source) for r in rows]), strict=True):
                r[v.column] = vec
        label = self.embedder.model_id
        for r in rows:
            r[S.TEXT_MODEL] = label if any(r.get(v.column) is not None for v in columns) else None


class AssemblerActor:
    """Holds the streaming assembly of the videos routed to it (a Ray actor; see ``start_assemblers``)."""

    def __init__(
        self,
        db_uri: str,
        dim: int,
        segments: SegmentConfig,
        detect: DetectConfig | None,
        sample_fps: float,
        fragment_rows: int,
        spans: SpanConfig,
        text_embed: TextEmbedConfig | None = None,
        text_dim: int = S.TEXT_DIM,
    ) -> None:
        import ray

        self.db_uri = db_uri
        self.schemas = {name: S.table_schema(name, dim, text_dim) for name in CONTENT_TABLES}
        self.fill = TextVectorFill(text_embed) if text_embed is not None and text_embed.enabled else None
        self.segments = segments
        self.detect = detect
        self.sample_fps = sample_fps
        self.fragment_rows = fragment_rows
        self.spans = spans
        self.open: dict[str, tuple[VideoAssembler, FragmentBuffer]] = {}
        self.results: dict[str, str] = {}  # finished video -> its result (JSON), kept for retried route tasks
        self.node_id = ray.get_runtime_context().get_node_id()

    def push(self, video_id: str, rows: Batch) -> list[str]:
        """Add one video's rows; returns ``[result]`` when the video is finished (now or before), else ``[]``."""
        if video_id in self.results:
            return [self.results[video_id]]
        if video_id not in self.open:
            buf = FragmentBuffer(self.db_uri, self.schemas, self.fragment_rows, self.fill)
            va = VideoAssembler(video_id, self.segments, self.detect, self.sample_fps, buf.add, self.spans)
            self.open[video_id] = (va, buf)
        va, buf = self.open[video_id]
        va.add(rows)
        if not va.done:
            return []
        buf.flush()
        del self.open[video_id]
        meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in va.meta.items()}
        self.results[video_id] = json.dumps(
            {
                "meta": {**meta, "n_samples": va.n_samples},
                "counts": va.counts,
                "speech_error": va.speech_error,
                "shots_error": va.shots_error,
                "fragments": buf.fragments,
                "node_id": self.node_id,
            }
        )
        return [self.results[video_id]]

    def open_videos(self) -> list[str]:
        return sorted(self.open)


def assemble_tables(
    video_id: str,
    rows: Batch,
    segments: SegmentConfig,
    detect: DetectConfig | None,
    sample_fps: float,
    dim: int,
    fill: TextVectorFill | None = None,
    text_dim: int = S.TEXT_DIM,
) -> dict[str, pa.Table]:
    """One video's frame rows, all at once, as the Arrow rows of every content table (the sequential path and
    tests; the graph streams through ``AssemblerActor`` instead)."""
    out = assemble_video(video_id, rows, segments, detect, sample_fps)
    if fill is not None:
        for name in CONTENT_TABLES:
            fill(name, out[name])
    return {name: to_arrow(out[name], S.table_schema(name, dim, text_dim)) for name in CONTENT_TABLES}


def start_assemblers(
    n: int,
    num_cpus: float,
    db_uri: str,
    dim: int,
    segments: SegmentConfig,
    detect: DetectConfig | None,
    sample_fps: float,
    fragment_rows: int,
    spans: SpanConfig,
    text_embed: TextEmbedConfig | None = None,
    text_dim: int = S.TEXT_DIM,
) -> tuple[str, list[Any]]:
    """Start ``n`` named assembler actors for one run; returns (their name prefix, the handles)."""
    import ray

    prefix = f"vidsearch-assembler-{uuid.uuid4().hex[:8]}"
    remote = ray.remote(AssemblerActor)
    actors = [
        # SPREAD: on a cluster the writers (and their share of the data path) land on different nodes.
        # A restarted assembler has lost its open videos (they end ``Incomplete``) but serves the rest of the run.
        remote.options(
            name=f"{prefix}-{i}", num_cpus=num_cpus, scheduling_strategy="SPREAD", max_restarts=-1, max_task_retries=-1
        ).remote(db_uri, dim, segments, detect, sample_fps, fragment_rows, spans, text_embed, text_dim)
        for i in range(n)
    ]
    ray.get([a.open_videos.remote() for a in actors])  # type: ignore[attr-defined]  # started, so a failure to start surfaces here
    return prefix, actors


def owner(video_id: str, n: int) -> int:
    """Index of the assembler a video is routed to (video ids are UUIDs: their value is already uniform)."""
    return uuid.UUID(video_id).int % n


def empty_results() -> Batch:
    return {c: np.array([], dtype=object) for c in RESULT_COLUMNS}


class Route:
    """The routing stage (a Ray Data callable): frame rows in, result rows of finished or failed videos out.

    Error rows (a video decode refused) become failure results directly; they carry no frames to assemble.
    Declares its columns like an operator (``operators.base.Operator``): it reads what the assembler needs on
    every frame row (with detection on, the graph adds ``ASSEMBLY_TRACKED``), the rest of ``ASSEMBLY_COLUMNS``
    when present.
    """

    reads: ClassVar[Columns] = C.ASSEMBLY_REQUIRED
    writes: ClassVar[Columns] = RESULT_COLUMNS
    drops: ClassVar[Columns] = ()
    carries: ClassVar[Columns | None] = ()  # N frame rows : one result row per finished video

    def __init__(self, prefix: str, n: int) -> None:
        self.prefix = prefix
        self.n = n
        self.actors: dict[int, Any] = {}

    def _actor(self, i: int) -> Any:
        import ray

        if i not in self.actors:
            self.actors[i] = ray.get_actor(f"{self.prefix}-{i}")
        return self.actors[i]

    def __call__(self, batch: Batch) -> Batch:
        import ray

        vids = np.asarray(batch["video_id"]).astype(str)
        errors = np.asarray(batch["error"]).astype(str)
        out_vid, out_err, out_res = [], [], []
        calls = []
        for vid in dict.fromkeys(vids):
            idx = np.flatnonzero(vids == vid)
            bad = [e for e in errors[idx] if e]
            if bad:
                out_vid.append(vid)
                out_err.append(bad[0])
                out_res.append("")
                continue
            part = {k: np.asarray(v)[idx] for k, v in batch.items() if k in ASSEMBLY_COLUMNS}
            calls.append((vid, self._actor(owner(vid, self.n)).push.remote(vid, part)))
        for vid, ref in calls:
            for res in ray.get(ref):
                out_vid.append(vid)
                out_err.append("")
                out_res.append(res)
        return {
            "video_id": np.array(out_vid, dtype=object),
            "error": np.array(out_err, dtype=object),
            "result": np.array(out_res, dtype=object),
        }
