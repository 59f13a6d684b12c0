"""The operator contract shared by every stage, and the resources a stage asks Ray for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

Batch = dict[str, Any]
Columns = tuple[str, ...]


class MissingCheckpointError(RuntimeError):
    """A configured checkpoint is neither on disk nor downloadable; the message says how to supply it."""


def objects(items: Iterable[Any]) -> np.ndarray:
    """A 1-D object column (ragged per-row values: boxes, embeddings per box, JPEG bytes); ``np.array`` would
    try to stack equal-shaped items into one n-D array."""
    items = list(items)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class StrictModel(BaseModel):
    """Config base: unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageResources(StrictModel):
    """What one worker of a stage asks the scheduler for; overridable per stage from YAML."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int = 1
    batch_size: int = 16


class Operator:
    """A pipeline stage. ``setup`` runs once inside the worker; ``__call__`` maps a columnar batch.

    Its columns are declared with the names of ``operators/contract.py`` and checked against every configured
    graph before it runs (``pipeline/index/graph.check_columns``). Columns a stage reads or writes only when
    present (or only for some models) are not declared; its docstring names them.
    """

    #: Columns the stage needs on every input row.
    reads: ClassVar[Columns] = ()
    #: Columns it sets on every output row.
    writes: ClassVar[Columns] = ()
    #: Input columns it removes.
    drops: ClassVar[Columns] = ()
    #: Input columns its output rows keep (when present). None: all of them, the 1:1 stages that add columns; a
    #: stage that builds new rows (decode: 1 video : N frames) names the few it repeats.
    carries: ClassVar[Columns | None] = None

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load weights or open resources; called once per worker before the first batch."""

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by ``setup``."""
