"""Video readers: decord (seeks by index, used only when its index agrees with the probe's packet times), PyAV
(decodes in presentation order, frames matched by time) and PyAV on keyframes only (``decode.mode: keyframes``).

All scale in the decoder to the working size (``target_size``) and yield frames in chunks, so a full-size RGB
frame is never allocated and a reader's memory does not grow with the file. ``open_readers`` gives them in the
order ``Decode`` tries them; a reader failing part-way hands on to the next one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from operators.media_probe import DecodeError, Header, short_error

if TYPE_CHECKING:
    import av

_F = TypeVar("_F")

Backend = Literal["auto", "decord", "pyav"]
Mode = Literal["sample", "keyframes"]


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Working size: longest side at most ``max_side``, aspect kept, even dimensions, never upscaled."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _usable(ts: npt.NDArray[np.float64]) -> bool:
    return bool(np.all(np.isfinite(ts)) and np.all(ts >= 0) and np.all(ts < 1e7) and np.all(np.diff(ts) > 0))


class DecordReader:
    """Seeks by frame index; used only when its index matches the probe's packet times frame for frame."""

    name = "decord"

    def __init__(self, path: str, header: Header, out_w: int, out_h: int) -> None:
        import decord

        self.reader = decord.VideoReader(path, num_threads=1, width=out_w, height=out_h)
        n = len(self.reader)
        ts = self.reader.get_frame_timestamp(range(n))[:, 0].astype(np.float64) if n else np.zeros(0)
        if n != len(header.times) or not _usable(ts) or np.max(np.abs((ts - ts[0]) - header.times)) > 2e-3:
            # Seen on MPEG-4 ASP AVIs with packed B-frames: decord's index is then off by a frame as well, so
            # hand the file to PyAV, which decodes in presentation order.
            raise DecodeError("decord's frame index does not match the packet times")

    def frames(self, indices: npt.NDArray[np.int64], chunk: int, deadline: float) -> Iterator[npt.NDArray[np.uint8]]:
        for start in range(0, len(indices), chunk):
            if time.monotonic() > deadline:
                raise TimeoutError
            yield self.reader.get_batch(indices[start : start + chunk].tolist()).asnumpy()


class PyAVReader:
    """Decodes in presentation order and keeps the frames whose time is a sampled one."""

    name = "pyav"
    skip_frame: Literal["DEFAULT", "NONKEY"] = "DEFAULT"  # "NONKEY" in keyframe mode: others are skipped

    def __init__(self, path: str, header: Header, out_w: int, out_h: int) -> None:
        self.path, self.header, self.out_w, self.out_h = path, header, out_w, out_h

    def frames(self, indices: npt.NDArray[np.int64], chunk: int, deadline: float) -> Iterator[npt.NDArray[np.uint8]]:
        """Decoded frames whose presentation time is one of the sampled ones (matched by time, not by decode
        position: packed B-frames and skipped-frame packets make positions unreliable)."""
        import av

        k = (self.header.rotation // 90) % 4  # np.rot90 turns counter-clockwise, like the display matrix angle
        stored_w, stored_h = (self.out_h, self.out_w) if k % 2 else (self.out_w, self.out_h)
        wanted = self.header.times[indices] + self.header.t0
        taken = np.zeros(len(wanted), dtype=bool)
        out: list[npt.NDArray[np.uint8]] = []
        with av.open(self.path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # frames in flight (each full size) do not grow with cores
            stream.codec_context.skip_frame = self.skip_frame
            tb = float(stream.time_base or 0)
            for t, frame in relabelled(self._decoded(container, stream, tb, deadline)):
                j = int(np.argmin(np.abs(wanted - t)))
                if taken[j] or abs(wanted[j] - t) > 1e-6:
                    continue
                taken[j] = True
                rgb: npt.NDArray[np.uint8] = frame.reformat(
                    width=stored_w, height=stored_h, format="rgb24"
                ).to_ndarray()  # type: ignore[assignment]
                out.append(np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb)
                if len(out) == chunk:
                    yield np.stack(out)
                    out = []
                if taken.all():
                    break
        if out:
            yield np.stack(out)

    @staticmethod
    def _decoded(
        container: av.container.InputContainer, stream: av.VideoStream, tb: float, deadline: float
    ) -> Iterator[tuple[float, av.VideoFrame]]:
        """(presentation time as labelled, frame) in the order the decoder emits them."""
        import av

        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise TimeoutError
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                continue  # a corrupt packet: the decoder conceals it in the frames that follow
            for frame in decoded:
                yield (frame.pts * tb if frame.pts is not None else float(frame.time or 0.0)), frame


def relabelled(frames: Iterator[tuple[float, _F]]) -> Iterator[tuple[float, _F]]:
    """The decoder's (time, frame) pairs, with a too-late label handed on to the frame after it.

    A decoder emits frames in presentation order, so a label that runs backwards is a mislabel, not a late
    frame: PyAV labels the frames of MPEG-4 ASP AVIs with packed B-frames 1, 2, 4, 3, 5, 7, 6 ... (ffprobe's
    best-effort timestamps, decord's decode order and the pictures themselves all give the emitted order), and
    matching by those labels would store frame 3 under frame 4's time. One frame is held back: when the next
    label lies between the last time given out and the held frame's label, the two swap labels. A label that
    falls back further (a timestamp reset) is kept as it is.
    """
    last = -math.inf
    held: tuple[float, _F] | None = None
    for t, frame in frames:
        if held is not None:
            if last < t < held[0]:
                held, t = (t, held[1]), held[0]
            last = held[0]
            yield held
        held = (t, frame)
    if held is not None:
        yield held


class KeyframeReader(PyAVReader):
    """PyAV decoding keyframes only; the wanted indices are the keyframes' (``keyframe_indices``)."""

    skip_frame: Literal["DEFAULT", "NONKEY"] = "NONKEY"


def keyframe_indices(path: str, header: Header, deadline: float) -> npt.NDArray[np.int64]:
    """Indices (into ``header.times``) of the frames whose packets are keyframes; demuxed, not decoded."""
    import av

    times = []
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base or 0.0)
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise TimeoutError
            if packet.is_keyframe and packet.pts is not None:
                times.append(packet.pts * tb - header.t0)
    if not times:
        raise DecodeError("no keyframe found in the video stream (decode.mode: keyframes)")
    t = np.asarray(times)
    pos = np.clip(np.searchsorted(header.times, t), 0, len(header.times) - 1)
    left = np.clip(pos - 1, 0, len(header.times) - 1)
    nearest = np.where(np.abs(header.times[left] - t) < np.abs(header.times[pos] - t), left, pos)
    return np.unique(nearest[np.abs(header.times[nearest] - t) <= 1e-6]).astype(np.int64)


Reader = DecordReader | PyAVReader


def open_readers(path: str, header: Header, mode: Mode, backend: Backend, max_side: int) -> Iterator[Reader]:
    """The readers to try in order: decord (when allowed and consistent with the probe), then PyAV; in keyframe
    mode PyAV on keyframes alone."""
    out_w, out_h = target_size(header.width, header.height, max_side)
    if mode == "keyframes":
        yield KeyframeReader(path, header, out_w, out_h)
        return
    if backend in ("auto", "decord"):
        try:
            yield DecordReader(path, header, out_w, out_h)
        except Exception as exc:
            if backend == "decord":
                raise DecodeError(f"cannot decode video (decord: {short_error(exc, path)})") from None
    if backend in ("auto", "pyav"):
        yield PyAVReader(path, header, out_w, out_h)


def decord_open_error(path: str) -> str:
    """Why decord cannot open ``path`` (for the message of a file the PyAV probe refused)."""
    try:
        import decord

        decord.VideoReader(path, num_threads=1)
        return "opened it, but the PyAV probe could not"
    except Exception as exc:
        return short_error(exc, path)
