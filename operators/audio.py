"""A video file's audio as float32 mono 16 kHz (Whisper's input), decoded with PyAV and streamed in chunks.

``read_audio`` yields ``(start_s, samples)`` chunks of at most ``chunk_s`` seconds, so memory does not grow with
the file (a 3-hour file is never held whole). ``start_s`` is on the video clock of the rest of the pipeline
(``operators.media_probe``, decode, shots): seconds from the first video frame's presentation time. The audio
stream's own start offset relative to the video (an ``-itsoffset``, an edit list, a late first packet) is kept,
so a word is stamped where it is heard in the picture; audio before the first video frame is dropped (the video
clock has no negative times), and audio that runs past the end of the video keeps its times. A file without a
video stream (or whose only picture is cover art) is timed from its first audio frame.

Every format FFmpeg decodes is brought to 16 kHz mono by FFmpeg's resampler (``av.AudioResampler(format="flt",
layout="mono", rate=16000)``, flushed with ``resample(None)``): 5.1 is downmixed, 8 kHz is upsampled. A gap in
the packet times is filled with silence, so later chunks stay aligned.

No audio stream yields nothing (not an error). A stream that cannot be decoded raises ``AudioDecodeError`` with
a short reason: the file does not open, the codec has no decoder, no packet decodes, more than
``max_bad_fraction`` of the packets fail, or the container's index lists more packets than the file holds
(truncated). A few corrupt packets are skipped rather than failing hours of good audio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.media_probe import short_error

__all__ = ["SAMPLE_RATE", "AudioDecodeError", "Samples", "read_audio"]

SAMPLE_RATE = 16000
Samples = npt.NDArray[np.float32]

GAP_S = 0.1  # a jump in packet times larger than this is filled with silence
ORIGIN_PACKETS = 64  # video packets demuxed to find the first presentation time (B-frames arrive out of order)
MIN_BAD = 8  # fewer failed packets than this never fail a stream


class AudioDecodeError(Exception):
    """An audio stream that cannot be decoded; the message is the short reason recorded for the video."""


def video_origin(container: Any) -> float | None:
    """Presentation time (seconds) of the first video frame, or None without a real video stream."""
    import av

    streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        return None
    stream = streams[0]
    tb = float(stream.time_base or 0)
    times = []
    for packet in container.demux(stream):
        if packet.pts is not None and packet.size:
            times.append(packet.pts * tb)
        if len(times) >= ORIGIN_PACKETS:
            break
    return min(times) if times else None


def _open(path: str) -> Any:
    import av

    try:
        return av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise AudioDecodeError(f"cannot open the file: {short_error(exc, path)}") from None


def read_audio(
    path: str,
    chunk_s: float = 30.0,
    *,
    max_duration_s: float = 6 * 3600.0,
    max_bad_fraction: float = 0.2,
    deadline: float | None = None,
) -> Iterator[tuple[float, Samples]]:
    """``(start_s, samples)`` chunks of ``path``'s first audio stream: float32 mono 16 kHz, at most ``chunk_s``
    seconds each, contiguous, ``start_s`` on the video clock (see the module docstring). Raises
    ``AudioDecodeError``."""
    import av

    if chunk_s <= 0:
        raise ValueError("chunk_s must be positive")
    with _open(path) as probe:
        if not probe.streams.audio:
            return
        try:
            origin = video_origin(probe)
        except av.error.FFmpegError:
            origin = None  # an unreadable picture does not stop the sound; timed from the audio itself
    cap = max(1, int(round(chunk_s * SAMPLE_RATE)))
    buf = np.empty(cap, np.float32)  # the one chunk held at a time
    n = 0
    start: float | None = None  # video-clock time of buf[0]
    with _open(path) as container:
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise AudioDecodeError(f"unsupported audio codec '{stream.codec.name if stream.codec else 'unknown'}'")
        stream.codec_context.thread_count = 1
        reader = _Frames(container, stream, path, max_bad_fraction)
        skip = 0  # samples still to drop: audio before the first video frame (the video clock has no negative time)
        for samples in reader:
            if deadline is not None and time.monotonic() > deadline:
                raise AudioDecodeError("audio decoding timed out")
            if start is None:
                t = reader.t0 or 0.0
                origin = t if origin is None else origin
                start, skip = max(0.0, t - origin), max(0, int(round((origin - t) * SAMPLE_RATE)))
            if skip:
                samples, skip = samples[skip:], max(0, skip - len(samples))
            if start + n / SAMPLE_RATE > max_duration_s:
                raise AudioDecodeError(f"the audio is longer than the limit of {max_duration_s:.0f} s")
            while len(samples):
                take = min(cap - n, len(samples))
                buf[n : n + take] = samples[:take]
                n, samples = n + take, samples[take:]
                if n == cap:
                    yield start, buf.copy()
                    start, n = start + cap / SAMPLE_RATE, 0
        if start is not None and n:
            yield start, buf[:n].copy()


class _Frames:
    """16 kHz mono samples as decoded and resampled, gaps filled with silence; ``t0`` is the stream time of the
    first sample once one was produced."""

    def __init__(self, container: Any, stream: Any, path: str, max_bad_fraction: float) -> None:
        self.container, self.stream, self.path = container, stream, path
        self.max_bad_fraction = max_bad_fraction
        self.packets = self.bad = 0
        self.resampler: Any = None
        self.key: tuple[str, str, int] | None = None
        self.t0: float | None = None  # stream time of the first sample
        self.pos_s = 0.0  # seconds of input decoded (and silence inserted) since t0: where the next frame belongs

    def __iter__(self) -> Iterator[Samples]:
        import av

        try:
            for packet in self.container.demux(self.stream):
                if packet.size:
                    self.packets += 1
                try:
                    frames = packet.decode()  # the final empty packet flushes the decoder
                except (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.UndefinedError) as exc:
                    self._bad(exc)
                    continue
                for frame in frames:
                    yield from self._resampled(frame)
            yield from self._flush()
        except av.error.FFmpegError as exc:  # the demuxer giving up mid-file (a damaged container)
            raise AudioDecodeError(
                f"the audio is corrupt: the file could not be read past packet {self.packets} "
                f"({short_error(exc, self.path)})"
            ) from None
        listed = int(self.stream.frames or 0)  # the container index's packet count (MP4/MOV; 0 when unknown)
        if listed and self.packets < listed:
            raise AudioDecodeError(
                f"the file is truncated: its index lists {listed} audio packets but only {self.packets} are in it"
            )
        if self.packets and self.t0 is None:
            raise AudioDecodeError(f"no decodable audio: none of {self.packets} packets decoded")
        if self.packets and self.bad / self.packets > self.max_bad_fraction and self.bad >= MIN_BAD:
            raise AudioDecodeError(f"the audio is corrupt: {self.bad} of {self.packets} packets failed to decode")

    def _bad(self, exc: Exception) -> None:
        self.bad += 1
        # Fail early on a stream that is mostly garbage instead of walking hours of it.
        if self.bad >= MIN_BAD and self.bad / max(1, self.packets) > max(0.5, self.max_bad_fraction):
            raise AudioDecodeError(
                f"the audio is corrupt: {self.bad} of {self.packets} packets failed to decode "
                f"({short_error(exc, self.path)})"
            )

    def _resampled(self, frame: Any) -> Iterator[Samples]:
        import av

        t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
        if self.t0 is None:
            self.t0 = t if t is not None else 0.0
        elif t is not None and GAP_S < t - self.t0 - self.pos_s < math.inf:
            gap = t - self.t0 - self.pos_s
            yield from self._flush()  # what the resampler still holds belongs before the silence
            self.pos_s += gap
            yield np.zeros(int(round(gap * SAMPLE_RATE)), np.float32)
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self.key:  # FFmpeg's resampler is built for one input format; a change mid-stream rebuilds it
            yield from self._flush()
            self.resampler, self.key = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE), key
        self.pos_s += frame.samples / frame.sample_rate
        for out in self.resampler.resample(frame):
            yield self._out(out)

    def _flush(self) -> Iterator[Samples]:
        """What the resampler holds; it is then dropped (a flushed resampler is not fed again)."""
        if self.resampler is not None:
            for out in self.resampler.resample(None):
                yield self._out(out)
        self.resampler = self.key = None

    @staticmethod
    def _out(out: Any) -> Samples:
        samples: Samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        return samples
