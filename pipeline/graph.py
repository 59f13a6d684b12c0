"""The Ray Data streaming graph: videos -> decode (tasks, 1:N) -> detect (actors, 1:1) -> preprocess
(tasks, 1:1) -> embed + regions (actors, 1:1) -> the driver's per-video assembly and single committer.

``StageAdapter`` is the one place an operator meets Ray: it builds the operator inside the worker, calls
``setup()`` once, caps torch's threads at the worker's CPU share (so torch and Ray workers do not
oversubscribe the cores) and forwards batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from operators.base import Batch, Operator, StageResources
from operators.decode import Decode
from operators.detect_track import Detector
from operators.embed import Embed, Preprocess
from pipeline.config import Config

#: Columns the driver needs from each frame row; everything else is dropped before the driver.
DRIVER_COLUMNS = [
    "video_id",
    "path",
    "t",
    "frame_idx",
    "sample_idx",
    "n_samples",
    "thumb",
    "error",
    "embedding",
    "duration_s",
    "fps",
    "n_frames",
    "width",
    "height",
    "rotation",
    "backend",
    "codec",
    "det_boxes",
    "det_conf",
    "det_names",
    "det_masks",
    "region_emb",
]


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
            cols = [_as_objects(c) for c in cols]
        out[k] = np.concatenate(cols)[back]
    return out


def _as_objects(col: np.ndarray) -> np.ndarray:
    out = np.empty(len(col), dtype=object)
    out[:] = list(col)
    return out


def task_fn(factory: Callable[[], Operator], num_cpus: float) -> Callable[[Batch], Any]:
    """A Ray Data function for a stateless stage; the operator is built once per worker process."""
    cache: dict[str, Operator] = {}

    def run(batch: Batch) -> Any:
        if "op" not in cache:
            _limit_threads(num_cpus)
            op = factory()
            op.setup()
            cache["op"] = op
        return cache["op"](batch)

    return run


def _apply(ds: Any, factory: Callable[[], Operator], kind: str, res: StageResources, per_video: bool = False) -> Any:
    import ray.data

    common = {"batch_size": res.batch_size, "num_cpus": res.num_cpus, "num_gpus": res.num_gpus or None}
    if kind == "actor":
        # An actor lost with its worker is restarted by the pool and the batch re-submitted (Ray Data retries).
        return ds.map_batches(
            StageAdapter,
            fn_constructor_kwargs={"factory": factory, "num_cpus": res.num_cpus, "per_video": per_video},
            compute=ray.data.ActorPoolStrategy(size=res.concurrency),
            **common,
        )
    return ds.map_batches(
        task_fn(factory, res.num_cpus), compute=ray.data.TaskPoolStrategy(size=res.concurrency), **common
    )


def build_dataset(cfg: Config, videos: list[dict[str, str]], checkpoint: str | None) -> Any:
    """The streaming dataset of encoded frame rows for ``videos`` (dicts with ``video_id`` and ``path``)."""
    import ray

    r = cfg.ray
    ds = ray.data.from_items(videos, override_num_blocks=max(1, len(videos)))
    ds = _apply(ds, lambda: Decode(cfg.decode), "task", r.decode)  # 1 video : N frame chunks
    if cfg.detect.enabled:
        # 1:1, adds boxes; per video so that a frame's boxes never depend on its batch-mates (see by_video)
        ds = _apply(ds, lambda: Detector(cfg.detect), "actor", r.detect, per_video=True)
    ds = _apply(ds, lambda: Preprocess(cfg.encoder), "task", r.preprocess)  # 1:1, adds pixels
    ds = _apply(ds, lambda: Embed(cfg.encoder, cfg.regions, checkpoint), "actor", r.embed)  # 1:1
    return ds


def select_driver_columns(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k in DRIVER_COLUMNS}


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    """Split a columnar batch into per-row dicts (for per-video buffering on the driver)."""
    n = len(batch["video_id"])
    return [{k: (v[i] if isinstance(v, np.ndarray | list) else v) for k, v in batch.items()} for i in range(n)]
