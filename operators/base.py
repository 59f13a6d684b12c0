"""The operator contract shared by every stage, and the resources a stage asks Ray for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

Batch = dict[str, Any]


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
    """A pipeline stage. ``setup`` runs once inside the worker; ``__call__`` maps a columnar batch."""

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load weights or open resources; called once per worker before the first batch."""

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by ``setup``."""
