"""What a video file holds, read with PyAV before any frame is decoded; the decode limits are enforced here.

``probe`` opens the container, refuses what is not one ordinary video (no video stream, a still image, a
codec this build cannot decode), checks the stored resolution against ``max_source_pixels`` from the header
alone, then demuxes the video packets (no decoding) to measure the real presentation times. Duration and
frame-count limits are checked on those measured times while demuxing, so a file that is truly too long is
refused after reading only up to the limit, and a header that merely *claims* a long duration is not
trusted. A container whose index lists more frames than the file holds is reported as truncated.

Memory: the probe keeps one float per video frame (bounded by ``max_frames``) and decodes a single frame at
stored resolution inside FFmpeg (to read the rotation), never converted to RGB.
"""

from __future__ import annotations

import math
import os
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class DecodeError(Exception):
    """A video that cannot be decoded; the message is the reason recorded in ``failures``."""


class Limits(Protocol):
    max_source_pixels: int
    max_duration_s: float
    max_frames: int
    timeout_s: float


@dataclass(frozen=True)
class Header:
    container: str  # FFmpeg demuxer name
    codec: str
    width: int  # upright (displayed) size
    height: int
    rotation: int  # degrees counter-clockwise to turn stored frames upright
    fps: float  # declared average rate (0 when none)
    times: npt.NDArray[np.float64]  # sorted presentation times of the video frames, seconds from the first
    t0: float  # presentation time of the first frame in the stream's clock (seconds)


_CLOCK = re.compile(r"\[\d\d:\d\d:\d\d\] ")  # decord log prefixes
_SOURCE = re.compile(r"\S+\.(?:cc|h|cpp):\d+: ")  # C++ source locations
_CHECK = re.compile(r"Check failed: .*?\(-?\d+ vs\. -?\d+\)\s*")  # decord's assertion text
_ERRNO = re.compile(r"\[Errno -?\d+\] ")
_QUOTED_PATH = re.compile(r":\s*'[^']*'$")


def short_error(exc: BaseException, path: str | None = None) -> str:
    """One readable clause from a reader's exception: no source locations, errno numbers, paths or traces."""
    text = str(exc).strip()
    if path:
        text = text.replace(path, "the file")
    text = _CLOCK.sub("", _SOURCE.sub("", text))
    text = _CHECK.sub("", _ERRNO.sub("", text))
    text = text.splitlines()[0] if text else ""
    text = _QUOTED_PATH.sub("", text).strip(" .:;")
    return text[:160] or type(exc).__name__


def is_still_image(container_format: str) -> bool:
    """FFmpeg's single-image demuxers (jpeg_pipe, png_pipe, image2 ...); GIF and APNG are animations."""
    return container_format.endswith("_pipe") or container_format == "image2"


def probe(path: str, limits: Limits, deadline: float) -> Header:
    """Read ``path``'s header and packet times; raises ``DecodeError`` (a one-sentence reason) or what
    ``av.open`` raises for a file that is not media at all."""
    import av

    with av.open(path, metadata_errors="ignore") as container:
        fmt = container.format.name
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            has = f"only {' and '.join(kinds)} streams" if kinds else "no streams"
            raise DecodeError(f"no video stream: the file has {has}")
        if is_still_image(fmt):
            raise DecodeError(f"the file is a still image ({fmt}), not a video")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = ctx.name if ctx is not None else ""
        if ctx is None or not _has_decoder(codec):
            raise DecodeError(f"unsupported codec '{codec or 'unknown'}': this build has no decoder for it")
        _check_pixels(ctx.width, ctx.height, limits)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        tb = float(stream.time_base) if stream.time_base else 0.0
        if tb <= 0:
            raise DecodeError("the video stream has no time base, so frame times are unknown")
        listed = int(stream.frames or 0)
        times, present = _packet_times(container, stream, tb, limits, deadline)
    if listed and present < listed:
        raise DecodeError(
            f"the file is truncated: its index lists {listed} video frames but only {present} are in the file"
        )
    if not len(times):
        raise DecodeError("no decodable video frames: the video stream has no timed packets")
    rotation, width, height = _first_frame(path, limits)
    return Header(fmt, codec, width, height, rotation, fps, times - times[0], float(times[0]))


def container_hint(path: str) -> str | None:
    """A specific reason for an MP4/MOV that FFmpeg refuses: its top-level boxes, read by seeking (no decode)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            kinds: list[str] = []
            off = 0
            while off + 8 <= size and len(kinds) < 10_000:
                f.seek(off)
                n, kind = struct.unpack(">I4s", f.read(8))
                if n == 1:
                    n = struct.unpack(">Q", f.read(8))[0]
                elif n == 0:
                    n = size - off
                if n < 8:
                    break
                kinds.append(kind)
                off += n
    except (OSError, struct.error):
        return None
    if not kinds or kinds[0] != b"ftyp":
        return None
    if b"moov" not in kinds:
        return "the MP4/MOV file has no 'moov' index: it is truncated or was never finalised"
    if off > size:
        return "the MP4/MOV file is truncated: its last box ends past the end of the file"
    return None


def _has_decoder(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "r")
        return True
    except Exception:  # UnknownCodecError and friends
        return False


def _check_pixels(width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_source_pixels:
        raise DecodeError(
            f"resolution {width}x{height} exceeds the limit of {limits.max_source_pixels} pixels "
            "(decode.max_source_pixels)"
        )


def _packet_times(
    container: Any, stream: Any, tb: float, limits: Limits, deadline: float
) -> tuple[npt.NDArray[np.float64], int]:
    """Sorted unique presentation times (stream clock, seconds) and the number of packets present."""
    chunks: list[npt.NDArray[np.float64]] = []
    buf = np.empty(4096, dtype=np.float64)
    n = present = 0
    lo, hi = math.inf, -math.inf
    for packet in container.demux(stream):
        if packet.pts is None and packet.size == 0:
            continue  # the demuxer's end-of-stream flush packet
        present += 1
        if present > limits.max_frames:
            raise DecodeError(f"the video has more than {limits.max_frames} frames (decode.max_frames)")
        if packet.pts is None or packet.size == 0:
            continue
        t = packet.pts * tb
        lo, hi = min(lo, t), max(hi, t)
        if hi - lo > limits.max_duration_s:
            raise DecodeError(
                f"duration exceeds the limit of {limits.max_duration_s:.0f} s (decode.max_duration_s): "
                f"a frame at {hi - lo:.0f} s"
            )
        buf[n] = t
        n += 1
        if n == len(buf):
            chunks.append(np.unique(buf))
            n = 0
            if time.monotonic() > deadline:
                raise DecodeError(f"decode timed out after {limits.timeout_s:g} s while reading the packet index")
    chunks.append(buf[:n])
    return np.unique(np.concatenate(chunks)), present


def _first_frame(path: str, limits: Limits) -> tuple[int, int, int]:
    """(rotation, upright width, upright height) from the first decodable frame; one frame, single thread."""
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one frame in flight: memory does not grow with the core count
        try:
            for frame in container.decode(stream):
                _check_pixels(frame.width, frame.height, limits)
                rotation = int(getattr(frame, "rotation", 0) or 0)
                w, h = frame.width, frame.height
                return (rotation, h, w) if rotation % 180 else (rotation, w, h)
        except av.error.FFmpegError as exc:
            raise DecodeError(f"no decodable video frames: {short_error(exc, path)}") from None
    raise DecodeError("no decodable video frames: the decoder produced no picture")
