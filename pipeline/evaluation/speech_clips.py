"""Spoken clips for the speech evaluation and tests: a real recording muxed into a real clip by the ffmpeg CLI, and
a real clip whose audio stream is garbage (for the corrupt-audio path). Nothing binary is committed: the clips
are built at run time into a work folder (a clip already there is reused).
"""

from __future__ import annotations

import fractions
import re
import shutil
import subprocess
from pathlib import Path

from operators.base import StrictModel

__all__ = ["SpokenClip", "build_spoken_clip", "corrupt_audio_clip", "ffmpeg", "words_of"]


class SpokenClip(StrictModel):
    """A clip of ``source`` (``video_offset``..+``duration`` s) with ``audio`` (a recording, or none: no audio
    stream) starting ``audio_delay`` s after its first frame. Paths are relative to the media root."""

    id: str
    source: str
    audio: str | None = None
    duration: float
    video_offset: float = 0.0
    audio_delay: float = 0.0


def ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the ffmpeg command-line tool is needed to build the spoken clips (apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def build_spoken_clip(spec: SpokenClip, root: Path, work: Path) -> Path:
    """``spec`` as an MP4 (H.264 copied from the source when it is H.264, else re-encoded; AAC audio) under
    ``work``; built once."""
    out = work / f"{spec.id}.mp4"
    if out.exists():
        return out
    work.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.mp4")
    video = ["-ss", f"{spec.video_offset:g}", "-t", f"{spec.duration:g}", "-i", str(root / spec.source)]
    # re-encoded: a cut at any offset starts on a frame of its own, and every source becomes one codec
    vcodec = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    if spec.audio is None:
        ffmpeg(*video, "-map", "0:v", *vcodec, "-an", str(tmp))
    else:
        audio = (
            ["-itsoffset", f"{spec.audio_delay:g}", "-i", str(root / spec.audio)]
            if spec.audio_delay
            else [
                "-i",
                str(root / spec.audio),
            ]
        )
        maps = ["-map", "0:v", "-map", "1:a", *vcodec, "-c:a", "aac", "-t", f"{spec.duration:g}"]
        ffmpeg(*video, *audio, *maps, str(tmp))
    tmp.rename(out)
    return out


def corrupt_audio_clip(source: Path, out: Path, duration: float = 6.0, packets: int = 300) -> Path:
    """A real clip (its first ``duration`` s, H.264 re-encoded) in MKV with an AAC stream whose packets are random
    bytes: the picture decodes, the audio cannot."""
    import av
    import numpy as np

    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    picture, noise = out.with_suffix(".video.mkv"), out.with_suffix(".noise.mkv")
    ffmpeg("-t", f"{duration:g}", "-i", str(source), "-map", "0:v", "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", str(picture))  # fmt: skip
    rng = np.random.default_rng(0)
    with av.open(str(noise), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"  # type: ignore[union-attr]
        for i in range(packets):
            packet = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            packet.stream, packet.time_base = stream, fractions.Fraction(1, 48000)
            packet.pts = packet.dts = i * 1024
            container.mux(packet)
    ffmpeg("-i", str(picture), "-i", str(noise), "-map", "0:v", "-map", "1:a", "-c", "copy", str(out))
    picture.unlink()
    noise.unlink()
    return out


def words_of(text: str) -> list[str]:
    """A transcript's words for WER and phrase matching: lower case, dashes as spaces, punctuation other than
    apostrophes dropped."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()
