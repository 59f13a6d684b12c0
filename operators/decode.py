"""Decode and sample: one video in, its sampled frames out in time-ordered chunks (1:N fan-out).

decord is the primary reader (it seeks by index, resizes inside the decoder and applies the rotation
side-data itself); PyAV is the fallback for what decord cannot open (WebM with H.264, GIF, files with no
usable index). Sampling is by *timestamp*: for each point ``k / fps`` of the sampling grid the frame whose
presentation time is nearest is taken, which stays right for variable-frame-rate files.

A video that neither reader can decode becomes one failure row (``error`` set, no frames); it never stops
the job.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from operators.base import Batch, Operator, StrictModel


class DecodeConfig(StrictModel):
    fps: float = 1.0  # sampled frames per second of video
    max_side: int = 640  # frames are resized in the decoder so their longest side is at most this
    chunk_frames: int = 16  # frames per output batch; bounds the memory of one decode task
    backend: Literal["auto", "decord", "pyav"] = "auto"
    thumb_side: int = 320
    thumb_quality: int = 80
    # Resource limits, checked from the header before any frame is decoded.
    max_source_pixels: int = 7680 * 4320  # 8K; above this the file is refused
    max_duration_s: float = 6 * 3600.0
    max_samples: int = 100_000
    timeout_s: float = 1800.0  # wall-clock limit for decoding one video


class DecodeError(Exception):
    """A video that cannot be decoded; the message is the reason recorded in ``failures``."""


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    n_frames: int
    width: int  # displayed (upright) width
    height: int
    rotation: int  # degrees counter-clockwise applied to stored frames to make them upright
    backend: str
    codec: str


def sample_indices(timestamps: npt.NDArray[np.float64], fps: float) -> npt.NDArray[np.int64]:
    """Indices of the frames nearest to the grid ``0, 1/fps, 2/fps, ...`` (unique, time-ordered)."""
    if len(timestamps) == 0:
        return np.zeros(0, dtype=np.int64)
    t0, t_end = float(timestamps[0]), float(timestamps[-1])
    grid = t0 + np.arange(0.0, t_end - t0 + 1e-9, 1.0 / fps)
    pos = np.clip(np.searchsorted(timestamps, grid), 1, len(timestamps) - 1) if len(timestamps) > 1 else None
    if pos is None:
        return np.zeros(1, dtype=np.int64)
    left, right = timestamps[pos - 1], timestamps[pos]
    # Ties (a grid point halfway between two frames) go to the earlier frame; 1e-6 absorbs float32 timestamps.
    nearest = np.where(np.abs(grid - left) <= np.abs(right - grid) + 1e-6, pos - 1, pos)
    return np.unique(nearest).astype(np.int64)


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Working size: longest side at most ``max_side``, aspect kept, even dimensions, never upscaled."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _usable(ts: npt.NDArray[np.float64]) -> bool:
    return bool(np.all(np.isfinite(ts)) and np.all(ts >= 0) and np.all(ts < 1e7) and np.all(np.diff(ts) > 0))


class _DecordReader:
    def __init__(self, path: str, max_side: int) -> None:
        import decord

        probe = decord.VideoReader(path, num_threads=1)
        h, w = probe[0].shape[:2] if len(probe) else (0, 0)  # decord returns upright frames
        self.fps = float(probe.get_avg_fps() or 0.0)
        ts = probe.get_frame_timestamp(range(len(probe)))[:, 0].astype(np.float64) if len(probe) else np.zeros(0)
        if not _usable(ts):
            # Seen on MPEG-4 ASP AVIs with packed B-frames: decord's index is then off by a frame as well, so
            # hand the file to PyAV, which decodes in presentation order.
            raise DecodeError("frame timestamps are unusable")
        self.timestamps = ts
        self.width, self.height = int(w), int(h)
        self.out_w, self.out_h = target_size(self.width, self.height, max_side)
        del probe
        self.reader = decord.VideoReader(path, num_threads=1, width=self.out_w, height=self.out_h)
        self.rotation = 0  # decord applies rotation itself; the stored rotation is read by the PyAV probe

    def frames(self, indices: npt.NDArray[np.int64], chunk: int) -> Iterator[npt.NDArray[np.uint8]]:
        for start in range(0, len(indices), chunk):
            yield self.reader.get_batch(indices[start : start + chunk].tolist()).asnumpy()


class _PyAVReader:
    def __init__(self, path: str, max_side: int) -> None:
        import av

        self.path = path
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError("no video stream (audio-only or not a video)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            tb = float(stream.time_base) if stream.time_base else 1.0 / max(self.fps, 1.0)
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
        times = np.unique(np.asarray(pts, dtype=np.float64)) * tb
        self.t0 = float(times[0]) if len(times) else 0.0
        self.timestamps = times - self.t0
        self.rotation = 0
        self.width = self.height = 0
        with av.open(path) as container:
            for frame in container.decode(video=0):
                self.rotation = int(getattr(frame, "rotation", 0) or 0)
                w, h = frame.width, frame.height
                self.width, self.height = (h, w) if self.rotation % 180 else (w, h)
                break
        self.out_w, self.out_h = target_size(self.width, self.height, max_side) if self.width else (0, 0)

    def frames(self, indices: npt.NDArray[np.int64], chunk: int) -> Iterator[npt.NDArray[np.uint8]]:
        """Decoded frames whose presentation time is one of the sampled ones (matched by time, not by decode
        position: packed B-frames and skipped-frame packets make positions unreliable)."""
        import av

        k = (self.rotation // 90) % 4  # np.rot90 turns counter-clockwise, like the display matrix angle
        stored_w, stored_h = (self.out_h, self.out_w) if k % 2 else (self.out_w, self.out_h)
        wanted = self.timestamps[indices] + self.t0
        taken = np.zeros(len(wanted), dtype=bool)
        out: list[npt.NDArray[np.uint8]] = []
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            tb = float(stream.time_base) if stream.time_base else 0.0
            for frame in container.decode(video=0):
                t = frame.pts * tb if frame.pts is not None and tb else float(frame.time or 0.0)
                j = int(np.argmin(np.abs(wanted - t)))
                if taken[j] or abs(wanted[j] - t) > 1e-6:
                    continue
                taken[j] = True
                rgb = frame.reformat(width=stored_w, height=stored_h, format="rgb24").to_ndarray()
                out.append(np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb)
                if len(out) == chunk:
                    yield np.stack(out)
                    out = []
                if taken.all():
                    break
        if out:
            yield np.stack(out)


def encode_jpeg(frame: npt.NDArray[np.uint8], max_side: int, quality: int) -> bytes:
    img = Image.fromarray(frame)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Decode(Operator):
    """Video rows in, frame rows out (1:N).

    Reads ``video_id``, ``path``. Writes per frame ``video_id``, ``path``, ``t``, ``frame_idx``, ``sample_idx``,
    ``n_samples`` (planned samples of the video), ``frame`` (uint8 HxWx3, upright, working size), ``thumb``
    (JPEG bytes), ``error`` ("" when fine) and the video's metadata columns.
    """

    kind = "task"

    def __init__(self, cfg: DecodeConfig) -> None:
        self.cfg = cfg

    def open(self, path: str) -> tuple[_DecordReader | _PyAVReader, VideoInfo]:
        """Open ``path`` with the configured backend (decord first, PyAV on failure) and probe it."""
        if os.path.isdir(path):
            raise DecodeError("path is a directory")
        if not os.access(path, os.R_OK):
            raise DecodeError("file is not readable (permission denied)")
        if os.path.getsize(path) == 0:
            raise DecodeError("file is empty (0 bytes)")
        errors: list[str] = []
        order = {"auto": ("decord", "pyav"), "decord": ("decord",), "pyav": ("pyav",)}[self.cfg.backend]
        for backend in order:
            try:
                reader: _DecordReader | _PyAVReader = (
                    _DecordReader(path, self.cfg.max_side)
                    if backend == "decord"
                    else _PyAVReader(path, self.cfg.max_side)
                )
                if len(reader.timestamps) == 0 or reader.width == 0:
                    raise DecodeError("no decodable video frames")
                return reader, self._info(path, reader, backend)
            except DecodeError as exc:
                errors.append(f"{backend}: {exc}")
            except Exception as exc:  # readers raise many types for bad media; keep the first line
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                errors.append(f"{backend}: {type(exc).__name__}: {first}")
        raise DecodeError("cannot decode video (" + "; ".join(errors) + ")")

    def _info(self, path: str, reader: _DecordReader | _PyAVReader, backend: str) -> VideoInfo:
        rotation, codec = reader.rotation, ""
        try:
            import av

            with av.open(path) as container:
                stream = container.streams.video[0]
                codec = stream.codec_context.name
                if backend == "decord":
                    frame = next(container.decode(video=0))
                    rotation = int(getattr(frame, "rotation", 0) or 0)
        except Exception:  # metadata only; decoding already succeeded
            pass
        ts = reader.timestamps
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else (1.0 / reader.fps if reader.fps else 0.0)
        return VideoInfo(
            duration_s=float(ts[-1] - ts[0] + step),
            fps=reader.fps if reader.fps > 0 else (1.0 / step if step else 0.0),
            n_frames=len(ts),
            width=reader.width,
            height=reader.height,
            rotation=rotation,
            backend=backend,
            codec=codec,
        )

    def check_limits(self, info: VideoInfo) -> None:
        if info.width * info.height > self.cfg.max_source_pixels:
            raise DecodeError(
                f"resolution {info.width}x{info.height} exceeds the limit of {self.cfg.max_source_pixels} pixels"
            )
        if info.duration_s > self.cfg.max_duration_s:
            raise DecodeError(f"duration {info.duration_s:.0f} s exceeds the limit of {self.cfg.max_duration_s:.0f} s")

    def iter_video(self, video_id: str, path: str) -> Iterator[Batch]:
        """Decode one video into time-ordered chunks; on failure yield a single error row."""
        start = time.monotonic()
        try:
            reader, info = self.open(path)
            self.check_limits(info)
            indices = sample_indices(reader.timestamps, self.cfg.fps)
            if len(indices) > self.cfg.max_samples:
                raise DecodeError(f"{len(indices)} sampled frames exceed the limit of {self.cfg.max_samples}")
            done = 0
            for frames in reader.frames(indices, self.cfg.chunk_frames):
                if time.monotonic() - start > self.cfg.timeout_s:
                    raise DecodeError(f"decode timed out after {self.cfg.timeout_s:.0f} s")
                idx = indices[done : done + len(frames)]
                yield self._chunk(video_id, path, info, frames, idx, reader.timestamps[idx], done, len(indices))
                done += len(frames)
            if done != len(indices):
                raise DecodeError(f"file ended early: decoded {done} of {len(indices)} sampled frames")
        except DecodeError as exc:
            yield self.error_row(video_id, path, str(exc))
        except Exception as exc:  # a reader crashing mid-file is still a property of the file
            yield self.error_row(video_id, path, f"{type(exc).__name__}: {str(exc).strip()[:300]}")

    def _chunk(
        self,
        video_id: str,
        path: str,
        info: VideoInfo,
        frames: npt.NDArray[np.uint8],
        idx: npt.NDArray[np.int64],
        ts: npt.NDArray[np.float64],
        first: int,
        n_samples: int,
    ) -> Batch:
        n = len(frames)
        thumbs = np.empty(n, dtype=object)
        thumbs[:] = [encode_jpeg(f, self.cfg.thumb_side, self.cfg.thumb_quality) for f in frames]
        return {
            "video_id": np.full(n, video_id),
            "path": np.full(n, path),
            "t": ts.astype(np.float64),
            "frame_idx": idx.astype(np.int64),
            "sample_idx": np.arange(first, first + n, dtype=np.int64),
            "n_samples": np.full(n, n_samples, dtype=np.int64),
            "frame": frames,
            "thumb": thumbs,
            "error": np.full(n, ""),
            **_meta_columns(info, n),
        }

    @staticmethod
    def error_row(video_id: str, path: str, message: str) -> Batch:
        info = VideoInfo(0.0, 0.0, 0, 0, 0, 0, "", "")
        thumbs = np.empty(1, dtype=object)
        thumbs[:] = [b""]
        return {
            "video_id": np.array([video_id]),
            "path": np.array([path]),
            "t": np.zeros(1),
            "frame_idx": np.zeros(1, dtype=np.int64),
            "sample_idx": np.zeros(1, dtype=np.int64),
            "n_samples": np.zeros(1, dtype=np.int64),
            "frame": np.zeros((1, 2, 2, 3), dtype=np.uint8),
            "thumb": thumbs,
            "error": np.array([message or "unknown decode error"]),
            **_meta_columns(info, 1),
        }

    def __call__(self, batch: Batch) -> Iterator[Batch]:  # type: ignore[override]
        """Reads ``video_id``, ``path``; yields frame chunks (see class docstring)."""
        for video_id, path in zip(batch["video_id"], batch["path"], strict=True):
            yield from self.iter_video(str(video_id), str(path))


def _meta_columns(info: VideoInfo, n: int) -> Batch:
    return {
        "duration_s": np.full(n, info.duration_s if math.isfinite(info.duration_s) else 0.0),
        "fps": np.full(n, info.fps),
        "n_frames": np.full(n, info.n_frames, dtype=np.int64),
        "width": np.full(n, info.width, dtype=np.int32),
        "height": np.full(n, info.height, dtype=np.int32),
        "rotation": np.full(n, info.rotation, dtype=np.int32),
        "backend": np.full(n, info.backend),
        "codec": np.full(n, info.codec),
    }
