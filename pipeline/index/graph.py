"""The Ray Data streaming graph: videos -> shots and speech (actors, 1:1 on the video rows) -> decode (tasks,
1:N) -> detect (actors, 1:1) -> preprocess (tasks, 1:1) -> embed + regions (actors, 1:1) -> route (tasks, N:M)
to the assembler actors, which track, assemble and write each video's rows as Lance fragments
(``pipeline/index/assembly.py``) -> one small result row per finished or failed video, which is all the driver
receives.

``StageAdapter`` is the one place an operator meets Ray: it builds the operator inside the worker, calls
``setup()`` once, caps torch's threads at the worker's CPU share (so torch and Ray workers do not
oversubscribe the cores) and forwards batches. Each stage gets its own subclass (actors) or function (tasks)
named after it, so Ray Data's stats say ``MapBatches(decode)``, and ``graph_stage_times`` reads them by name.

``check_columns`` checks the graph a config enables against the columns each stage declares (``reads`` /
``writes`` of ``operators.base.Operator``, names from ``operators/contract.py``) when the graph is built, so a
misconfigured graph stops before Ray runs anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from operators import contract as C
from operators.base import Batch, Columns, Operator, StageResources, objects
from operators.captions import Captions
from operators.decode import Decode
from operators.detect_track import Detector
from operators.embed import Embed, Preprocess
from operators.ocr import OcrFrames
from operators.shots import ShotDetect
from operators.transcript import TranscribeVideos
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.index.assembly import Route


def _limit_threads(num_cpus: float) -> None:
    n = max(1, int(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass


class StageAdapter:
    """A Ray Data callable class around any operator factory (used for actor-pool stages).

    ``per_video``: call the operator on each video's rows of a batch separately (see ``by_video``).
    """

    def __init__(self, factory: Callable[[], Operator], num_cpus: float, per_video: bool = False) -> None:
        _limit_threads(num_cpus)
        self.op = factory()
        self.op.setup()
        self.per_video = per_video

    def __call__(self, batch: Batch) -> Any:
        return by_video(self.op, batch) if self.per_video else self.op(batch)


def by_video(op: Callable[[Batch], Batch], batch: Batch) -> Batch:
    """``op`` applied to each video's rows of ``batch`` on its own, rows back in their order (1:1 operators).

    Ray Data bundles blocks of different videos into one batch. ultralytics letterboxes a batch whose frames
    differ in size to a full square but a same-size batch to the smallest rectangle, so without this a
    frame's boxes would depend on which other video shared its batch, and reruns (or the sequential
    baseline, benchmarks/pipeline_vs_sequential.py) would not give the same rows.
    """
    vids = np.asarray(batch["video_id"])
    keys, first = np.unique(vids, return_index=True)
    if len(keys) <= 1:
        return op(batch)
    parts, order = [], []
    for vid in keys[np.argsort(first)]:
        idx = np.flatnonzero(vids == vid)
        parts.append(op({k: np.asarray(v)[idx] for k, v in batch.items()}))
        order.append(idx)
    back = np.argsort(np.concatenate(order), kind="stable")
    out: Batch = {}
    for k in dict.fromkeys(k for p in parts for k in p):
        cols = [p[k] if k in p else np.full(len(p["video_id"]), None, dtype=object) for p in parts]
        if any(c.dtype == object for c in cols) and not all(c.dtype == object for c in cols):
            cols = [objects(c) for c in cols]
        out[k] = np.concatenate(cols)[back]
    return out


def task_fn(factory: Callable[[], Operator], num_cpus: float, name: str = "run") -> Callable[[Batch], Any]:
    """A Ray Data function for a stateless stage, called ``name`` (Ray Data's stats name operators after their
    function); the operator is built once per worker process."""
    cache: dict[str, Operator] = {}

    def run(batch: Batch) -> Any:
        if "op" not in cache:
            _limit_threads(num_cpus)
            op = factory()
            op.setup()
            cache["op"] = op
        return cache["op"](batch)

    run.__name__ = run.__qualname__ = name
    return run


def named(cls: type, name: str) -> type:
    """A subclass of ``cls`` called ``name``, so Ray Data's stats show ``MapBatches(<name>)`` for an actor stage
    (NeMo Curator names its per-stage adapters the same way)."""
    return type(name, (cls,), {"__doc__": f"``{cls.__name__}`` of the '{name}' stage."})


def _apply(
    ds: Any, name: str, factory: Callable[[], Operator], kind: str, res: StageResources, per_video: bool = False
) -> Any:
    import ray.data

    common = {"batch_size": res.batch_size, "num_cpus": res.num_cpus, "num_gpus": res.num_gpus or None}
    if kind == "actor":
        # An actor lost with its worker is restarted by the pool and the batch re-submitted (Ray Data retries).
        return ds.map_batches(
            named(StageAdapter, name),
            fn_constructor_kwargs={"factory": factory, "num_cpus": res.num_cpus, "per_video": per_video},
            compute=ray.data.ActorPoolStrategy(size=res.concurrency),
            **common,
        )
    return ds.map_batches(
        task_fn(factory, res.num_cpus, name), compute=ray.data.TaskPoolStrategy(size=res.concurrency), **common
    )


@dataclass(frozen=True)
class Stage:
    """One stage of the graph, declared once: read by the graph builder, the stage timings and the config (its
    resources are ``cfg.ray.<name>``)."""

    name: str
    kind: Literal["task", "actor"]
    #: The class whose ``reads`` / ``writes`` / ``drops`` / ``carries`` declare the stage's columns.
    operator: type[Operator] | type[Route]
    factory: Callable[[Config, str | None], Operator] | None  # (config, checkpoint) -> operator; None: route
    fan: str  # rows in : rows out, for the reader
    per_video: bool = False  # call the operator on each video's rows of a batch separately (see by_video)
    enabled: Callable[[Config], bool] = lambda cfg: True
    #: Columns read only under some configs, on top of the operator's ``reads``.
    also_reads: Callable[[Config], Columns] = lambda cfg: ()

    def reads(self, cfg: Config) -> Columns:
        return (*self.operator.reads, *self.also_reads(cfg))


def _captions(cfg: Config) -> Captions:
    """Captions on the segments' keyframes; with decode.mode keyframes (no sampling grid) on every frame."""
    return Captions(cfg.captions, cfg.segments.window_s, cfg.decode.fps, cfg.decode.mode == "keyframes")


def _shots(cfg: Config) -> bool:
    return cfg.segments.shots.detector != "none"


def _speech(cfg: Config) -> bool:
    return cfg.speech.model != "none"


def _ocr(cfg: Config) -> bool:
    return cfg.ocr.engine != "none"


def _captioned(cfg: Config) -> bool:
    return cfg.captions.model != "none"


def _assembled(cfg: Config) -> Columns:
    """What the assembler reads under ``cfg`` beyond every frame row's columns: the detector's boxes (it tracks
    them) and the transcript decode hands on (it writes the speech rows)."""
    return (*(C.ASSEMBLY_TRACKED if cfg.detect.enabled else ()), *(C.TRANSCRIPT_COLUMNS if _speech(cfg) else ()))


STAGES = (
    # every frame at 48x27 -> the video's shot starts, before decode repeats them on its frame rows
    Stage("shots", "actor", ShotDetect, lambda cfg, ck: ShotDetect(cfg.segments.shots), "1:1", enabled=_shots),
    # the video's audio -> its transcript as one JSON value on the video row, which decode hands to one frame row
    Stage("speech", "actor", TranscribeVideos, lambda cfg, ck: TranscribeVideos(cfg.speech), "1:1", enabled=_speech),
    Stage("decode", "task", Decode, lambda cfg, ck: Decode(cfg.decode), "1 video : N frames"),
    # per video so that a frame's boxes never depend on its batch-mates (see by_video)
    Stage("detect", "actor", Detector, lambda cfg, ck: Detector(cfg.detect), "1:1", True, lambda c: c.detect.enabled),
    # before embed, which drops the decoded frame
    Stage("ocr", "actor", OcrFrames, lambda cfg, ck: OcrFrames(cfg.ocr), "1:1", enabled=_ocr),
    # before preprocess: it needs the frame (embed drops it) and must not split preprocess from embed (fused on CPU)
    Stage("captions", "actor", Captions, lambda cfg, ck: _captions(cfg), "1:1", enabled=_captioned),
    Stage("preprocess", "task", Preprocess, lambda cfg, ck: Preprocess(cfg.encoder), "1:1"),
    Stage("embed", "actor", Embed, lambda cfg, ck: Embed(cfg.encoder, cfg.regions, ck), "1:1"),
    # the assembler behind route also tracks the detector's boxes and writes the speech rows, when those are on
    Stage("route", "actor", Route, None, "N frames : one result per finished video", also_reads=_assembled),
)


class MissingColumnError(ConfigError):
    """A stage of the configured graph reads a column that nothing before it writes."""


def check_columns(cfg: Config, stages: tuple[Stage, ...] = STAGES, source: Columns = C.VIDEO_ROW_COLUMNS) -> None:
    """Raise ``MissingColumnError`` naming the stage and the column when an enabled stage reads a column that
    neither the video rows (``source``, what decode receives from the planner) nor an earlier enabled stage
    writes, or that an earlier stage dropped (the contract NeMo Curator's ``validate_input`` checks)."""
    have, before = set(source), ["the video rows"]
    for stage in stages:
        if not stage.enabled(cfg):
            continue
        op = stage.operator
        for column in stage.reads(cfg):
            if column not in have:
                raise MissingColumnError(
                    f"stage '{stage.name}' reads column '{column}', which is not on its input rows: it is written "
                    f"by none of [{', '.join(before)}], or one of them dropped it"
                )
        have = (have if op.carries is None else have & set(op.carries)) - set(op.drops) | set(op.writes)
        before.append(f"'{stage.name}'")


def cpu_plan(cfg: Config) -> tuple[dict[str, float], float]:
    """(CPUs each actor pool holds for the whole run, by stage; the largest single task request).

    Actors hold their CPUs while they live, so the task stages (decode) only run in what the actors leave:
    requests adding up to more than the cluster's CPUs leave a decode task waiting forever for a slot while
    the actors downstream wait for its frames. Preprocess asks what embed asks so that Ray Data fuses it into
    the embed actor on CPU (see ``RayConfig``); it then holds nothing of its own.
    """
    r = cfg.ray
    fused = (r.preprocess.num_cpus, r.preprocess.concurrency) == (r.embed.num_cpus, r.embed.concurrency)
    fused = fused and not r.embed.num_gpus
    actors = {
        s.name: getattr(r, s.name).num_cpus * getattr(r, s.name).concurrency
        for s in STAGES
        if s.kind == "actor" and s.enabled(cfg) and s.name != "route"
    }
    actors["route"] = r.route.num_cpus * r.route.concurrency
    actors["assemble"] = r.assemble.num_cpus * r.assemble.concurrency
    tasks = [r.decode.num_cpus] + ([] if fused else [r.preprocess.num_cpus])
    return actors, max(tasks)


def fit_to_cluster(cfg: Config, node_cpus: list[float]) -> tuple[Config, float]:
    """``cfg`` with every stage's CPU request scaled down, if need be, so that the actor pools plus one task fit
    the cluster's CPUs (``node_cpus``: each alive node's) and the largest actor fits a node; returns the factor
    (1.0: unchanged). CPU requests are scheduling shares: a worker's threads depend on whole CPUs asked
    (at least one), so shrinking them changes only what may run at once. On several small nodes the requests
    can still fragment (free CPU split between nodes); set ``ray.<stage>.num_cpus`` there by hand."""
    actors, task = cpu_plan(cfg)
    total, biggest_node = sum(node_cpus), max(node_cpus, default=0.0)
    need = sum(actors.values()) + task
    biggest = max(
        [getattr(cfg.ray, s).num_cpus for s in actors if s in type(cfg.ray).model_fields] + [task], default=0.0
    )
    factor = 1.0
    if total > 0 and need > total:
        factor = total / need
    if biggest_node > 0 and biggest * factor > biggest_node:
        factor = biggest_node / biggest
    if factor >= 1.0:
        return cfg, 1.0
    factor *= 0.98  # float sums of fractional requests must not land a hair over the capacity
    names = [f for f, v in cfg.ray if isinstance(v, StageResources)]
    ray_cfg = cfg.ray.model_copy(
        update={
            n: getattr(cfg.ray, n).model_copy(update={"num_cpus": getattr(cfg.ray, n).num_cpus * factor}) for n in names
        }
    )
    return cfg.model_copy(update={"ray": ray_cfg}), factor


def frame_dataset(cfg: Config, videos: list[dict[str, str]], checkpoint: str | None) -> Any:
    """The streaming dataset of encoded frame rows for ``videos`` (dicts with ``video_id`` and ``path``)."""
    check_columns(cfg)  # a graph whose stages do not fit together stops here, before Ray runs anything
    import ray

    ds = ray.data.from_items(videos, override_num_blocks=max(1, len(videos)))
    for stage in STAGES:
        if stage.factory is not None and stage.enabled(cfg):
            factory = partial(stage.factory, cfg, checkpoint)
            ds = _apply(ds, stage.name, factory, stage.kind, getattr(cfg.ray, stage.name), stage.per_video)
    return ds


def build_dataset(
    cfg: Config, videos: list[dict[str, str]], checkpoint: str | None, assemblers: tuple[str, int]
) -> Any:
    """The streaming dataset of per-video results for ``videos``: ``frame_dataset`` routed to the running
    assembler pool (``assemblers``: its name prefix and size, see ``assembly.start_assemblers``)."""
    import ray

    ds = frame_dataset(cfg, videos, checkpoint)
    prefix, n = assemblers
    # N frame rows : one result row per video finished in this batch (most batches give none)
    return ds.map_batches(
        named(Route, "route"),
        fn_constructor_kwargs={"prefix": prefix, "n": n},
        compute=ray.data.ActorPoolStrategy(size=cfg.ray.route.concurrency),
        batch_size=None,
        num_cpus=cfg.ray.route.num_cpus,
    )


def graph_stage_times(ds: Any, cfg: Config) -> dict[str, dict[str, float]]:
    """Ray Data's per-operator totals (task wall seconds summed over workers, CPU seconds, tasks) by stage name,
    read from the operator names (``MapBatches(decode)``; fused operators, ``MapBatches(preprocess)->
    MapBatches(embed)``, get joined names). Empty when Ray offers no stats."""
    stages = {stage.name for stage in STAGES if stage.enabled(cfg)}
    try:
        ops = [op for s in _lineage(ds._get_stats_summary()) for op in s.operators_stats]  # ds.stats() is text
    except Exception:  # noqa: BLE001 - stats are a report, never a reason to fail a run
        return {}
    out: dict[str, dict[str, float]] = {}
    for op in ops:
        names = [n for n in _MAP_BATCHES.findall(op.operator_name) if n in stages]
        if not names:
            continue
        wall, cpu = op.wall_time or {}, op.cpu_time or {}
        out["+".join(names)] = {
            "wall_s": round(float(_stat(wall, "sum")), 3),
            "cpu_s": round(float(_stat(cpu, "sum")), 3),
            "tasks": int(_stat(wall, "count")),
        }
    return out


_MAP_BATCHES = re.compile(r"MapBatches\(([^()]+)\)")


def _lineage(summary: Any) -> list[Any]:
    """A stats summary and its parents, upstream first (each executed part of the graph is one summary)."""
    out = []
    for parent in summary.parents or []:
        out += _lineage(parent)
    return [*out, summary]


def _stat(summary: Any, key: str) -> float:
    if isinstance(summary, dict):
        return float(summary.get(key, 0) or 0)
    return float(getattr(summary, key, 0) or 0)
