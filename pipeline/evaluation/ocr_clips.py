"""Drawn-text clips for the on-screen text evaluation: real clips with text drawn in by ffmpeg ``drawtext``.

A ``ClipSpec`` names a clip of the media root (offset, duration) and the texts to draw (font, size, colour, box,
outline, motion). ``build_clip`` writes the clip and, per text, a ground-truth layer: the text alone on black
through the same filter, whose bright pixels (``ink_box``) are the text's exact box at any time, moving text
included. Outputs are cached under a key of the spec, so nothing binary is committed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

from operators.base import StrictModel

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


class DrawnText(StrictModel):
    text: str
    start: float
    end: float
    font: str = "DejaVuSans.ttf"
    size: int = 32
    color: str = "white"
    x: float = 0.1  # top-left, fractions of the frame
    y: float = 0.1
    vx: float = 0.0  # frame widths per second
    vy: float = 0.0
    box: bool = False  # a translucent black box behind the text (a lower third)
    border: int = 0  # black outline width in pixels


class ClipSpec(StrictModel):
    id: str
    source: str  # relative to the media root
    offset: float = 0.0
    duration: float
    texts: list[DrawnText] = []


def _drawtext(d: DrawnText, textfile: Path) -> str:
    x = f"W*{d.x}+W*{d.vx}*(t-{d.start})"
    y = f"H*{d.y}+H*{d.vy}*(t-{d.start})"
    opts = [
        f"fontfile={FONT_DIR / d.font}",
        f"textfile={textfile}",
        "expansion=none",
        f"fontsize={d.size}",
        f"fontcolor={d.color}",
        f"x='{x}'",
        f"y='{y}'",
        f"enable='between(t,{d.start},{d.end})'",
    ]
    if d.box:
        opts += ["box=1", "boxcolor=black@0.6", "boxborderw=6"]
    if d.border:
        opts += [f"borderw={d.border}", "bordercolor=black"]
    return "drawtext=" + ":".join(opts)


def _ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _probe(path: Path) -> tuple[int, int, str]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or 25
        return s.codec_context.width, s.codec_context.height, str(rate)


def build_clip(clip: ClipSpec, media_root: Path, cache: Path) -> tuple[Path, list[Path]]:
    """The clip with its texts drawn in, and one ground-truth layer (the text alone on black) per text."""
    key = hashlib.sha256(json.dumps(clip.model_dump(), sort_keys=True).encode()).hexdigest()[:16]
    out = cache / f"{clip.id}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    video = out / "clip.mp4"
    layers = [out / f"text{i}.mkv" for i in range(len(clip.texts))]
    if video.exists() and all(p.exists() for p in layers):
        return video, layers
    files = []
    for i, d in enumerate(clip.texts):
        files.append(out / f"text{i}.txt")
        files[-1].write_text(d.text)
    src = media_root / clip.source
    vf = ",".join(_drawtext(d, f) for d, f in zip(clip.texts, files, strict=True)) or "null"
    tmp = out / "clip.tmp.mp4"
    _ffmpeg(
        [
            "-ss",
            str(clip.offset),
            "-t",
            str(clip.duration),
            "-i",
            str(src),
            "-vf",
            vf,
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "20",
            "-pix_fmt",
            "yuv420p",
            str(tmp),
        ]
    )
    w, h, rate = _probe(tmp)
    for d, f, layer in zip(clip.texts, files, layers, strict=True):
        lavfi = f"color=black:s={w}x{h}:r={rate}:d={clip.duration}"
        _ffmpeg(["-f", "lavfi", "-i", lavfi, "-vf", _drawtext(d, f), "-c:v", "ffv1", str(layer)])
    tmp.rename(video)
    return video, layers


def ink_box(frame: npt.NDArray[np.uint8], threshold: int = 60) -> tuple[float, float, float, float] | None:
    """Normalised bounding box of the bright pixels of a ground-truth layer frame (None: no text shown)."""
    mask = frame.max(axis=2) > threshold
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def decode_frames(path: Path, fps: float) -> tuple[list[float], list[int], list[npt.NDArray[np.uint8]]]:
    """Times, frame indices and RGB frames of ``path`` sampled at ``fps`` by the indexer's decoder."""
    from operators.decode import Decode, DecodeConfig

    t: list[float] = []
    idx: list[int] = []
    frames: list[npt.NDArray[np.uint8]] = []
    for chunk in Decode(DecodeConfig(fps=fps)).iter_video("eval", str(path)):
        if chunk["error"][0]:
            raise RuntimeError(f"cannot decode {path}: {chunk['error'][0]}")
        t += chunk["t"].tolist()
        idx += chunk["frame_idx"].tolist()
        frames += list(chunk["frame"])
    return t, idx, frames
