"""Decode and sample: one video in, its sampled frames out in time-ordered chunks (1:N fan-out).

Every file is first probed with PyAV (``operators.media_probe``): the header and the packet times are read
without decoding, and the resource limits are enforced there, before any frame is decoded. The probe's
packet times are the sampling clock: for each point ``k / fps`` of the grid the frame whose presentation time
is nearest is taken, which stays right for variable-frame-rate files. decord then decodes the sampled frames
(it seeks by index, resizes inside the decoder and applies the rotation itself) when its frame index agrees
with those packet times; otherwise, or when decord fails part-way, PyAV decodes the remaining samples, matched
by presentation time (the readers live in ``operators/readers.py``). Both scale in the decoder to ``max_side``, so
a full-size RGB frame is never allocated, and output goes out in chunks of ``chunk_frames``, so a task's memory
does not grow with the file.

A video that cannot be decoded, breaks a limit, or changes while it is read becomes one failure row
(``error`` set to one sentence, no frames); it never stops the job.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from operators import contract as C
from operators.base import Batch, Operator, StrictModel, objects
from operators.contract import fingerprint
from operators.media_probe import DecodeError, Header, container_hint, probe, short_error
from operators.readers import Backend, Mode, decord_open_error, keyframe_indices, open_readers

__all__ = ["Decode", "DecodeConfig", "DecodeError", "VideoInfo", "encode_jpeg", "sample_indices"]


class DecodeConfig(StrictModel):
    fps: float = 1.0  # sampled frames per second of video
    max_side: int = 640  # frames are resized in the decoder so their longest side is at most this
    chunk_frames: int = 16  # frames per output batch; bounds the memory of one decode task
    backend: Backend = "auto"
    #: "sample": the frames nearest the ``fps`` grid. "keyframes": one frame per GOP, only keyframes are decoded
    #: (PyAV, ``skip_frame=NONKEY``; ``fps`` and ``backend`` are then unused); each row's ``t`` is the
    #: keyframe's own presentation time, so the sampling follows the encoder's GOP length, not a fixed rate.
    mode: Mode = "sample"
    thumb_side: int = 320
    thumb_quality: int = 80
    # Resource limits, enforced by the probe before any frame is decoded (see operators/media_probe.py).
    max_source_pixels: int = 7680 * 4320  # 8K; above this the file is refused
    max_duration_s: float = 6 * 3600.0  # measured from packet times, not from the header's claim
    max_frames: int = 1_000_000  # video frames in the file (about 9 h at 30 fps)
    max_samples: int = 100_000
    timeout_s: float = 1800.0  # wall-clock limit for decoding one video, checked between frames


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


def encode_jpeg(frame: npt.NDArray[np.uint8], max_side: int, quality: int) -> bytes:
    img = Image.fromarray(frame)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Decode(Operator):
    """Video rows in, frame rows out (1:N).

    Reads ``video_id``, ``path`` (and ``fingerprint`` when given). Writes per frame ``video_id``, ``path``,
    ``t``, ``frame_idx``, ``sample_idx``, ``n_samples`` (planned samples of the video), ``frame`` (uint8 HxWx3,
    upright, working size), ``thumb`` (JPEG bytes), ``error`` ("" when fine) and the video's metadata columns;
    repeats the video row's ``shot_bounds`` (when the shot detector ran) on each of its frames, and hands its
    transcript (``speech``, ``speech_error``, when the speech stage ran) and ``shots_error`` to its first frame row
    only (null on the others: they are one value per video, not one per frame).
    """

    reads = (C.VIDEO_ID, C.PATH)
    writes = C.DECODE_COLUMNS
    # 1 video : N new frame rows; nothing else of the video row travels on
    carries = (*C.SHOT_COLUMNS, C.SHOTS_ERROR, *C.TRANSCRIPT_COLUMNS)

    def __init__(self, cfg: DecodeConfig) -> None:
        self.cfg = cfg

    def open(self, path: str, deadline: float) -> tuple[Header, VideoInfo]:
        """Check the file, probe it (limits enforced) and describe it; raises ``DecodeError``."""
        if os.path.isdir(path):
            raise DecodeError("path is a directory")
        if not os.access(path, os.R_OK):
            raise DecodeError("file is not readable (permission denied)")
        if os.path.getsize(path) == 0:
            raise DecodeError("file is empty (0 bytes)")
        try:
            header = probe(path, self.cfg, deadline)
        except DecodeError:
            raise
        except Exception as exc:  # av.open refusing the bytes: not a container FFmpeg knows
            errors = [f"pyav: {short_error(exc, path)}"]
            if self.cfg.backend != "pyav":
                errors.insert(0, f"decord: {decord_open_error(path)}")
            why = container_hint(path) or "not a recognised video file"
            raise DecodeError(f"cannot decode video: {why} ({'; '.join(errors)})") from None
        ts = header.times
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else (1.0 / header.fps if header.fps else 0.0)
        return header, VideoInfo(
            duration_s=float(ts[-1] + step),
            fps=header.fps if header.fps > 0 else (1.0 / step if step else 0.0),
            n_frames=len(ts),
            width=header.width,
            height=header.height,
            rotation=header.rotation,
            backend="",
            codec=header.codec,
        )

    def iter_video(self, video_id: str, path: str, fingerprint: str | None = None) -> Iterator[Batch]:
        """Decode one video into time-ordered chunks; on failure yield a single error row.

        ``fingerprint`` (the catalog's, taken when the file was listed) is checked before decoding and again
        before the last chunk leaves, which is held back until then; without it the two checks compare the
        file with itself. A file that changed is refused: its frames would be stored under another content's id.
        """
        deadline = time.monotonic() + self.cfg.timeout_s
        done = 0
        try:
            listed = fingerprint or _fingerprint(path)
            if fingerprint and _fingerprint(path) != fingerprint:
                raise DecodeError(_CHANGED)
            header, info = self.open(path, deadline)
            if self.cfg.mode == "keyframes":
                indices = keyframe_indices(path, header, deadline)
            else:
                indices = sample_indices(header.times, self.cfg.fps)
            if len(indices) > self.cfg.max_samples:
                raise DecodeError(
                    f"{len(indices)} sampled frames exceed the limit of {self.cfg.max_samples} (decode.max_samples)"
                )
            held: Batch | None = None
            errors: list[str] = []
            for reader in open_readers(path, header, self.cfg.mode, self.cfg.backend, self.cfg.max_side):
                meta = dataclasses.replace(info, backend=reader.name)
                try:
                    for frames in reader.frames(indices[done:], self.cfg.chunk_frames, deadline):
                        idx = indices[done : done + len(frames)]
                        if held is not None:
                            yield held
                        held = self._chunk(video_id, path, meta, frames, idx, header.times[idx], done, len(indices))
                        done += len(frames)
                    break
                except (DecodeError, TimeoutError):
                    raise
                except Exception as exc:  # a reader failing part-way: the next one goes on from sample `done`
                    errors.append(f"{reader.name}: {short_error(exc, path)}")
            if done != len(indices):
                why = f" ({'; '.join(errors)})" if errors else ""
                raise DecodeError(f"only {done} of {len(indices)} sampled frames could be decoded{why}")
            if _fingerprint(path) != listed:
                raise DecodeError(_CHANGED)
            if held is not None:
                yield held
        except TimeoutError:
            yield self.error_row(
                video_id,
                path,
                f"decode timed out after {self.cfg.timeout_s:g} s (decode.timeout_s) with {done} sampled frames done",
            )
        except DecodeError as exc:
            yield self.error_row(video_id, path, str(exc))
        except Exception as exc:  # anything else a reader raises is still a property of the file
            yield self.error_row(video_id, path, f"cannot decode video: {short_error(exc, path)}")

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
            C.VIDEO_ID: np.full(n, video_id),
            C.PATH: np.full(n, path),
            C.T: ts.astype(np.float64),
            C.FRAME_IDX: idx.astype(np.int64),
            C.SAMPLE_IDX: np.arange(first, first + n, dtype=np.int64),
            C.N_SAMPLES: np.full(n, n_samples, dtype=np.int64),
            C.FRAME: frames,
            C.THUMB: thumbs,
            C.ERROR: np.full(n, ""),
            **_meta_columns(info, n),
        }

    @staticmethod
    def error_row(video_id: str, path: str, message: str) -> Batch:
        info = VideoInfo(0.0, 0.0, 0, 0, 0, 0, "", "")
        thumbs = np.empty(1, dtype=object)
        thumbs[:] = [b""]
        return {
            C.VIDEO_ID: np.array([video_id]),
            C.PATH: np.array([path]),
            C.T: np.zeros(1),
            C.FRAME_IDX: np.zeros(1, dtype=np.int64),
            C.SAMPLE_IDX: np.zeros(1, dtype=np.int64),
            C.N_SAMPLES: np.zeros(1, dtype=np.int64),
            C.FRAME: np.zeros((1, 2, 2, 3), dtype=np.uint8),
            C.THUMB: thumbs,
            C.ERROR: np.array([message or "unknown decode error"]),
            **_meta_columns(info, 1),
        }

    def __call__(self, batch: Batch) -> Iterator[Batch]:  # type: ignore[override]
        """Reads ``video_id``, ``path`` and, when present, ``fingerprint``; yields frame chunks (see class
        docstring)."""
        n = len(batch[C.VIDEO_ID])
        prints = batch.get(C.FINGERPRINT, [None] * n)
        shots = batch.get(C.SHOT_BOUNDS)  # from the shot detector, when it ran: repeated on each frame row
        # from the speech stage and the shot detector's reason: one value per video, on its first row only
        once = [c for c in (*C.TRANSCRIPT_COLUMNS, C.SHOTS_ERROR) if c in batch]
        for i, (video_id, path, fp) in enumerate(zip(batch[C.VIDEO_ID], batch[C.PATH], prints, strict=True)):
            first = True
            for chunk in self.iter_video(str(video_id), str(path), str(fp) if fp else None):
                n = len(chunk[C.VIDEO_ID])
                if shots is not None:
                    chunk[C.SHOT_BOUNDS] = objects([shots[i]] * n)
                for c in once:
                    chunk[c] = objects([batch[c][i] if first else None] + [None] * (n - 1))
                first = False
                yield chunk


def _meta_columns(info: VideoInfo, n: int) -> Batch:
    return {
        C.DURATION_S: np.full(n, info.duration_s if math.isfinite(info.duration_s) else 0.0),
        C.SOURCE_FPS: np.full(n, info.fps),
        C.N_FRAMES: np.full(n, info.n_frames, dtype=np.int64),
        C.WIDTH: np.full(n, info.width, dtype=np.int32),
        C.HEIGHT: np.full(n, info.height, dtype=np.int32),
        C.ROTATION: np.full(n, info.rotation, dtype=np.int32),
        C.BACKEND: np.full(n, info.backend),
        C.CODEC: np.full(n, info.codec),
    }


_CHANGED = (
    "the file changed while it was being indexed (its content no longer matches its fingerprint); "
    "the next run indexes the new content"
)


def _fingerprint(path: str) -> str:
    try:
        return fingerprint(path)[1]
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
