"""A segment's keyframe, decided from one frame row alone: the caption stage marks the frames it captions and the
assembler picks each segment's thumbnail with the same functions, so both agree without the caption stage ever
seeing a whole segment window (its batches cut windows anywhere, and an actor pool spreads them).

Frames are sampled at the grid points ``k * step`` (operators/decode.py ``sample_indices``: the frame nearest
each point ``k / fps``, times from the video's first frame, no point past the last frame), so
``step = max(1 / fps, 1 / source_fps)``: a source with fewer frames per second than the sampling rate has every
frame taken. A window's keyframe is the sample of the sampled grid point nearest the window's middle (inside the
window; the middle itself for a window with no such point). Each sample lies within half a source frame of its
grid point, so on a regular source exactly one sample of a window is within ``step / 2`` of that point:
``is_keyframe`` is true for it alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from operators.shots import shot_windows

#: Absorbs float noise in grid arithmetic (times are float64 seconds; 1 µs is far below a frame interval).
EPS = 1e-6


@dataclass(frozen=True)
class SampleGrid:
    """The sampling grid of one video: points ``k * step`` up to ``last`` (decode samples no point past the
    video's last frame). ``step`` 0: no grid (decode.mode keyframes)."""

    step: float
    last: float = math.inf

    @classmethod
    def of(cls, fps: float, source_fps: float, duration_s: float = 0.0) -> SampleGrid:
        """The grid of ``decode.fps`` sampling a source with ``source_fps`` and ``duration_s`` (its last frame
        ends it: ``duration_s`` is the last frame's time plus one frame, see operators/decode.py)."""
        step = 1.0 / fps if fps > 0 else 0.0
        if source_fps > 0:
            step = max(step, 1.0 / source_fps)
        frame = 1.0 / source_fps if source_fps > 0 else 0.0
        last = duration_s - 0.75 * frame if duration_s > 0 else math.inf  # a quarter frame of slack for rounding
        return cls(step, last)


def window_bounds(
    t: float, window_s: float, duration_s: float, windows: npt.NDArray[np.float64] | None = None
) -> tuple[float, float]:
    """(start, end) of the segment window holding time ``t``: fixed ``window_s`` windows, or the shot-aligned
    ``windows`` rows (start, end, ...) sorted by start; the end never passes the video's end. The assembler
    (operators/assemble.py) cuts its segments the same way."""
    if windows is None:
        k = math.floor(t / window_s)
        start, end = k * window_s, (k + 1) * window_s
    else:
        k = max(int(np.searchsorted(windows[:, 0], t, side="right")) - 1, 0)
        start, end = float(windows[k, 0]), float(windows[k, 1])
    return float(start), float(min(end, duration_s) if duration_s > 0 else end)


def keyframe_time(start: float, end: float, grid: SampleGrid) -> float:
    """The grid point nearest the middle of [start, end) (ties to the earlier), or the middle if no sampled grid
    point lies inside the window."""
    middle = (start + end) / 2
    step = grid.step
    if step <= 0:
        return middle
    first = math.ceil(start / step - EPS)
    last = math.ceil(end / step - EPS) - 1
    if math.isfinite(grid.last):
        last = min(last, math.floor(grid.last / step + EPS))
    if first > last:
        return middle
    k = math.ceil(middle / step - 0.5 - EPS)  # round half down: ties go to the earlier point, as argmin does
    return min(max(k, first), last) * step


def is_keyframe(t: float, start: float, end: float, grid: SampleGrid) -> bool:
    """Whether the sample at ``t`` (inside [start, end)) is its window's keyframe."""
    if grid.step <= 0:
        return True  # no sampling grid: every sample is a candidate
    d = t - keyframe_time(start, end, grid)
    return -grid.step / 2 - EPS <= d < grid.step / 2 - EPS


def keyframe_index(t: npt.ArrayLike, start: float, end: float, grid: SampleGrid) -> int:
    """Index into ``t`` (the times of all samples of one window) of the window's keyframe: the sample
    ``is_keyframe`` marks (nearest the middle if it marks several); on irregular sampling, where it marks none,
    the sample nearest the middle."""
    times = np.asarray(t, np.float64)
    middle = (start + end) / 2
    marked = [i for i, x in enumerate(times) if is_keyframe(float(x), start, end, grid)]
    pool = marked or list(range(len(times)))
    return pool[int(np.argmin(np.abs(times[pool] - middle)))]


def shot_segment_windows(shot_bounds: npt.ArrayLike, duration_s: float, window_s: float) -> npt.NDArray[np.float64]:
    """The shot-aligned segment windows (start, end, shot) of a video from its frame rows' ``shot_bounds``, as
    the assembler builds them (operators/shots.py ``shot_windows`` up to the video's end)."""
    starts = np.asarray(shot_bounds, np.float64)
    end = duration_s if duration_s > 0 else float(starts[-1]) + window_s
    win = np.asarray(shot_windows(starts, end, window_s), np.float64).reshape(-1, 3)
    return win[:, [1, 2, 0]]
