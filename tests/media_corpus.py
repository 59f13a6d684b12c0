"""A malformed-media corpus, generated from the real clips in ``../shared/testdata`` with PyAV and byte surgery.

``build_corpus(out_dir)`` writes every case into ``out_dir`` (nothing is committed; a few MiB in all) and
returns one ``Case`` per input with the outcome the indexer must produce for it:

- ``indexed``: the video is indexed completely (``samples`` sampled frames at 1 fps when known);
- ``failed``: the file appears in the ``failures`` table of the run, at ``stage``, and its message contains
  ``reason`` (a sentence, not a stack trace);
- ``ignored``: listing does not treat the entry as a video at all (a symlinked folder loop); the run neither
  hangs nor records it.

Only PyAV (which bundles its own FFmpeg) is used, so no ``ffmpeg`` binary is needed. Encodes whose encoder
or decoder this PyAV build lacks are still listed, with the outcome that build gives them (an "unsupported"
failure) so the expectation stays honest on every machine.

Run ``python -m tests.media_corpus OUT_DIR`` to build the corpus by hand and print the table.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("VIDSEARCH_TESTDATA", ROOT.parent / "shared" / "testdata")).resolve()
SOURCE = "imageio_test_images/realshort.mp4"  # 320x240 H.264 + AAC, 1.2 s, 36 frames: the raw material

Outcome = Literal["indexed", "failed", "ignored"]


@dataclass
class Case:
    """One corpus entry. ``name`` is relative to the corpus folder (bytes when it is not valid UTF-8)."""

    name: str | bytes
    how: str  # how it was made, one line
    expect: Outcome
    reason: str = ""  # for "failed": a substring of the recorded message
    stage: str = "decode"  # for "failed": the stage that records it ("list" or "decode")
    samples: int | None = None  # for "indexed": frames sampled at 1 fps, when known by construction
    checks: dict[str, Any] = field(default_factory=dict)  # for "indexed": expected ``videos`` columns
    note: str = ""  # why the expectation is what it is, when not obvious

    @property
    def fs_name(self) -> bytes:
        return self.name if isinstance(self.name, bytes) else os.fsencode(self.name)

    def path(self, folder: str | os.PathLike[str]) -> str:
        """Absolute path as a ``str`` (non-UTF-8 bytes surrogate-escaped, like ``os.listdir`` returns them)."""
        return os.path.abspath(os.path.join(os.fspath(folder), os.fsdecode(self.fs_name)))

    @property
    def label(self) -> str:
        return os.fsencode(self.name).decode("utf-8", "backslashreplace") if isinstance(self.name, bytes) else self.name


# --- raw material ---------------------------------------------------------------------------------------------


def source_frames(n: int | None = None) -> list[np.ndarray]:
    """RGB frames of the source clip (320x240)."""
    out = []
    with av.open(str(TESTDATA / SOURCE)) as c:
        for frame in c.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if n is not None and len(out) == n:
                break
    return out


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
        return True
    except Exception:
        return False


def encode(
    path: Path,
    frames: Iterator[np.ndarray] | list[np.ndarray],
    *,
    codec: str = "libx264",
    rate: Fraction | int = 30,
    size: tuple[int, int] | None = None,
    pix_fmt: str = "yuv420p",
    pts_ms: list[int] | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int | None = None,
    audio: bool = False,
) -> None:
    """Encode RGB ``frames`` into ``path`` (container from the suffix); ``pts_ms`` gives a variable frame rate."""
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        first = None
        frames = iter(frames)
        first = next(frames)
        w, h = size or (first.shape[1], first.shape[0])
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.options = {"preset": "ultrafast"} if codec in ("libx264", "libx265") else {}
        s.options.update(options or {})
        if pts_ms is not None:
            s.time_base = Fraction(1, 1000)
            s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=44100) if audio else None
        for i, rgb in enumerate([first, *frames]):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if (frame.width, frame.height) != (w, h):
                frame = frame.reformat(width=w, height=h)
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
        if a is not None:
            _mux_tone(c, a, seconds=1.0)


def _mux_tone(c: Any, stream: Any, seconds: float) -> None:
    rate = 44100
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, len(pcm), 1024):
        frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            c.mux(packet)
    for packet in stream.encode(None):
        c.mux(packet)


def samples_at_1fps(seconds_of_last_frame: float) -> int:
    """Grid points 0, 1, 2 ... up to the last frame's time (the decoder samples the nearest frame to each)."""
    return int(np.floor(seconds_of_last_frame + 1e-9)) + 1


# --- byte surgery ----------------------------------------------------------------------------------------------


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """Top-level ISO-BMFF boxes in ``data[start:end]``: (offset, size, type)."""
    end = len(data) if end is None else end
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack(">I4s", data[off : off + 8])
        if size == 1:
            size = struct.unpack(">Q", data[off + 8 : off + 16])[0]
        elif size == 0:
            size = end - off
        if size < 8:
            return
        yield off, size, kind
        off += size


def find_box(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> tuple[int, int]:
    for off, size, kind in boxes(data, start, end):
        if kind == path[0]:
            return (off, size) if len(path) == 1 else find_box(data, path[1:], off + 8, off + size)
    raise KeyError(path[0])


def claim_long_duration(data: bytes, seconds: int) -> bytes:
    """Rewrite the movie, track and media header durations to ``seconds`` (version-0 boxes)."""
    buf = bytearray(data)
    mvhd, _ = find_box(data, [b"moov", b"mvhd"])
    tkhd, _ = find_box(data, [b"moov", b"trak", b"tkhd"])
    mdhd, _ = find_box(data, [b"moov", b"trak", b"mdia", b"mdhd"])
    assert buf[mvhd + 8] == buf[tkhd + 8] == buf[mdhd + 8] == 0, "version-0 headers expected"
    movie_scale = struct.unpack(">I", buf[mvhd + 20 : mvhd + 24])[0]
    media_scale = struct.unpack(">I", buf[mdhd + 20 : mdhd + 24])[0]
    # mvhd: timescale at +20, duration at +24; tkhd: duration at +28 (movie timescale); mdhd like mvhd.
    for at, scale in ((mvhd + 24, movie_scale), (tkhd + 28, movie_scale), (mdhd + 24, media_scale)):
        struct.pack_into(">I", buf, at, min(seconds * scale, 2**32 - 1))
    return bytes(buf)


def cut_box(data: bytes, box: bytes) -> bytes:
    off, size = find_box(data, [box])
    return data[:off] + data[off + size :]


# --- the corpus ------------------------------------------------------------------------------------------------


def build_corpus(out_dir: str | os.PathLike[str]) -> list[Case]:
    """Write every case into ``out_dir`` and return the expectations (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    frames = source_frames()  # 36 frames, 320x240
    rng = np.random.default_rng(6)

    def add(case: Case, make: Callable[[Path], None]) -> None:
        path = Path(case.path(out))
        make(path)
        cases.append(case)

    def write(data: bytes) -> Callable[[Path], None]:
        return lambda p: p.write_bytes(data)

    # A reference MP4 with moov at the end (the default) and one with moov first (faststart, "streamable").
    ref = out / "_ref.mp4"
    encode(ref, frames, rate=Fraction(30000, 1001), audio=True)
    ref_bytes = ref.read_bytes()
    ref.unlink()
    fast = out / "_fast.mp4"
    encode(fast, frames, rate=Fraction(30000, 1001), container_options={"movflags": "+faststart"})
    fast_bytes = fast.read_bytes()
    fast.unlink()
    moov_off, moov_size = find_box(fast_bytes, [b"moov"])

    # -- not media at all ----------------------------------------------------------------------------------
    add(Case("empty.mp4", "zero-byte file", "failed", "empty (0 bytes)", stage="list"), write(b""))
    add(
        Case("notes.mp4", "a text file renamed .mp4", "failed", "cannot decode video"),
        write(b"This is a shopping list, not a video.\n" * 40),
    )
    add(
        Case("random.mkv", "64 KiB of random bytes named .mkv", "failed", "cannot decode video"),
        write(rng.integers(0, 256, 65536, dtype=np.uint8).tobytes()),
    )
    jpeg = TESTDATA / "mot17_mini" / "MOT17-02-FRCNN" / "img1" / "000001.jpg"
    add(
        Case("photo.mp4", "a JPEG photo renamed .mp4", "failed", "still image"),
        write(jpeg.read_bytes()),
    )

    # -- structurally broken MP4s ----------------------------------------------------------------------------
    add(Case("ftyp_only.mp4", "only the 32-byte ftyp box", "failed", "no 'moov' index"), write(ref_bytes[:32]))
    add(
        Case(
            "header_only.mp4",
            "ftyp + moov of a faststart MP4, no media data",
            "failed",
            "truncated",
            note="the header lists 36 frames whose bytes are missing",
        ),
        write(fast_bytes[: moov_off + moov_size]),
    )
    for pct in (10, 50, 90):
        add(
            Case(
                f"truncated_{pct}.mp4",
                f"first {pct}% of an MP4 whose moov atom is at the end",
                "failed",
                "no 'moov' index",
                note="the index (moov) is lost with the tail",
            ),
            write(ref_bytes[: len(ref_bytes) * pct // 100]),
        )
    add(
        Case(
            "truncated_fast_50.mp4",
            "first 50% of a faststart MP4 (index intact, half the frames missing)",
            "failed",
            "truncated",
        ),
        write(fast_bytes[: len(fast_bytes) // 2]),
    )
    add(
        Case("no_moov.mp4", "the moov box cut out (no index)", "failed", "no 'moov' index"),
        write(cut_box(ref_bytes, b"moov")),
    )
    mid = bytearray(ref_bytes)
    mdat_off, mdat_size = find_box(ref_bytes, [b"mdat"])
    mid[mdat_off + mdat_size // 2 : mdat_off + mdat_size // 2 + 4096] = rng.integers(
        0, 256, 4096, dtype=np.uint8
    ).tobytes()
    add(
        Case(
            "corrupt_middle.mp4",
            "4 KiB of random bytes over the middle of the media data (a corrupt GOP)",
            "indexed",
            samples=2,
            note="the decoder conceals the damaged slices; every sampled frame still comes out",
        ),
        write(bytes(mid)),
    )
    add(
        Case(
            "long_claimed.mp4",
            "36 frames, headers rewritten to claim a 1000-hour duration",
            "indexed",
            samples=2,
            note="durations are measured from packet timestamps, never trusted from the header",
        ),
        write(claim_long_duration(fast_bytes, 1000 * 3600)),
    )

    # -- streams that are not (only) one ordinary video ----------------------------------------------------------
    def audio_only(p: Path) -> None:
        with av.open(str(p), "w") as c:
            _mux_tone(c, c.add_stream("aac", rate=44100), seconds=2.0)

    add(Case("audio_only.mp4", "AAC audio, no video stream", "failed", "no video stream"), audio_only)
    add(
        Case("one_frame.mp4", "a single-frame H.264 video", "indexed", samples=1),
        lambda p: encode(p, frames[:1]),
    )
    add(
        Case("tenth_second.mp4", "0.1 s: 3 frames at 30 fps", "indexed", samples=1),
        lambda p: encode(p, frames[:3]),
    )
    add(
        Case("fps1.mp4", "5 frames at 1 fps", "indexed", samples=5, checks={"fps": 1.0}),
        lambda p: encode(p, frames[:5], rate=1),
    )
    add(
        Case("fps240.mp4", "480 frames at 240 fps (2 s), 160x120", "indexed", samples=2, checks={"fps": 240.0}),
        lambda p: encode(p, [frames[i % 36] for i in range(480)], rate=240, size=(160, 120)),
    )
    vfr = [0, 40, 90, 500, 520, 1500, 1510, 2900, 3700]  # gaps from 10 ms to 1.4 s
    add(
        Case("vfr.mp4", "9 frames with presentation times 0 ms ... 3700 ms, gaps 10-1400 ms", "indexed", samples=4),
        lambda p: encode(p, frames[: len(vfr)], pts_ms=vfr, rate=25),
    )
    add(
        Case(
            "gap_7h.mp4",
            "3 frames, the last at 7 h (real timestamps, not just a header claim)",
            "failed",
            "exceeds the limit",
            note="default max_duration_s is 6 h; the limit is checked before any frame is decoded",
        ),
        lambda p: encode(p, frames[:3], pts_ms=[0, 1000, 7 * 3600 * 1000], rate=1),
    )

    # -- sizes --------------------------------------------------------------------------------------------------
    def uhd(p: Path) -> None:
        big = np.ascontiguousarray(np.tile(frames[0], (18, 24, 1)))  # 7680x4320: the real frame, tiled
        encode(p, [big, big, big], rate=1, options={"crf": "51"})

    add(
        Case(
            "uhd_8k.mp4",
            "7680x4320, 3 frames at 1 fps, crf 51 (about 100 KiB)",
            "indexed",
            samples=3,
            checks={"width": 7680, "height": 4320},
            note="frames are downscaled inside the decoder to decode.max_side",
        ),
        uhd,
    )
    add(
        Case(
            "over_8k.mp4",
            "8704x4352 (above the 8K pixel limit), 1 black frame",
            "failed",
            "exceeds the limit",
            note="refused from the header, before any frame is decoded",
        ),
        lambda p: encode(p, [np.zeros((4352, 8704, 3), dtype=np.uint8)], rate=1, options={"crf": "51"}),
    )
    add(
        Case("tiny_16x16.mp4", "16x16 pixels, 30 frames", "indexed", samples=1, checks={"width": 16, "height": 16}),
        lambda p: encode(p, frames[:30], size=(16, 16)),
    )
    add(
        Case(
            "odd_333x199.mp4",
            "333x199 (odd dimensions), H.264 4:4:4",
            "indexed",
            samples=2,
            checks={"width": 333, "height": 199},
        ),
        lambda p: encode(p, frames, size=(333, 199), pix_fmt="yuv444p", rate=Fraction(30000, 1001)),
    )
    for rot in (90, 270):
        add(
            Case(
                f"rotated_{rot}.mp4",
                f"320x240 stored, display matrix rotation {rot}",
                "indexed",
                samples=2,
                checks={"width": 240, "height": 320},
            ),
            lambda p, rot=rot: encode(p, frames, rate=Fraction(30000, 1001), rotation=rot),
        )

    # -- other codecs: indexed where this PyAV build decodes them, else an "unsupported" failure ------------------
    for name, codec, dec, kw in (
        ("hevc.mp4", "libx265", "hevc", {"options": {"x265-params": "log-level=error"}}),
        ("vp9.webm", "libvpx-vp9", "vp9", {"options": {"deadline": "realtime", "cpu-used": "8"}}),
        ("av1.mp4", "libsvtav1", "libdav1d", {"options": {"preset": "12"}}),
        ("mjpeg.avi", "mjpeg", "mjpeg", {"pix_fmt": "yuvj420p"}),
    ):
        if not has_encoder(codec):
            continue  # cannot be built here; reported by the test as a skipped case
        case = (
            Case(name, f"{codec} encode of the source clip", "indexed", samples=2)
            if has_decoder(dec)
            else Case(name, f"{codec} encode of the source clip", "failed", "unsupported")
        )
        add(case, lambda p, codec=codec, kw=kw: encode(p, frames, codec=codec, rate=30, **kw))

    # -- file-system hostility ----------------------------------------------------------------------------------
    weird = "a \"quoted\" 'name' with  spaces\nand a newline.mp4"
    add(Case(weird, "a name with spaces, both quote kinds and a newline", "indexed", samples=2), write(fast_bytes))
    add(
        Case(b"latin1_\xe9t\xe9.mp4", "a non-UTF-8 (Latin-1) file name", "failed", "not valid UTF-8", stage="list"),
        write(ref_bytes[:-1] + b"\x00"),  # different bytes from other cases, so its own fingerprint
    )

    def folder_named_mp4(p: Path) -> None:
        p.mkdir()
        encode(p / "inside.mp4", frames[:12])

    add(
        Case("x.mp4", "a directory named x.mp4 (holding one good clip)", "ignored", note="walked as a folder"),
        folder_named_mp4,
    )
    cases.append(Case("x.mp4/inside.mp4", "the clip inside the directory x.mp4", "indexed", samples=1))

    def loop(p: Path) -> None:
        p.mkdir()
        (p / "again").symlink_to("..", target_is_directory=True)

    add(Case("loop", "a folder with a symlink to its parent (a loop)", "ignored", note="not followed"), loop)
    add(
        Case("self_link.mp4", "a symlink that points to itself", "failed", "symbolic links", stage="list"),
        lambda p: p.symlink_to(p.name),
    )
    add(
        Case("dangling.mp4", "a symlink to a missing file", "failed", "no such file", stage="list"),
        lambda p: p.symlink_to("does-not-exist.mp4"),
    )
    add(
        Case("pipe.mp4", "a named pipe (FIFO) called .mp4", "failed", "not a regular file", stage="list"),
        lambda p: os.mkfifo(p),
    )
    add(
        Case("zeros.mp4", "a symlink to /dev/zero", "failed", "not a regular file", stage="list"),
        lambda p: p.symlink_to("/dev/zero"),
    )

    def unreadable(p: Path) -> None:
        p.write_bytes(fast_bytes[:-1] + b"\x01")
        p.chmod(0)

    root = os.geteuid() == 0
    add(
        Case(
            "no_permission.mp4",
            "a good clip with mode 000",
            "indexed" if root else "failed",
            "" if root else "permission denied",
            stage="list",
            samples=2,
            note="running as root, which reads mode-000 files: expected indexed"
            if root
            else "a non-root reader gets EACCES",
        ),
        unreadable,
    )
    add(
        Case(
            "replaced.mp4",
            "a good clip replaced by another after listing, before decoding (the test swaps it)",
            "failed",
            "changed while",
            note="its content no longer matches the fingerprint taken when it was listed",
        ),
        write(fast_bytes[:-2] + b"\x02\x02"),
    )
    return cases


REPLACED = "replaced.mp4"


def replace_file(folder: str | os.PathLike[str]) -> None:
    """Swap ``replaced.mp4`` for different content (atomically, like a re-upload)."""
    path = Path(folder) / REPLACED
    tmp = path.with_name(".replacing.mp4")
    encode(tmp, source_frames(8), rate=8)
    os.replace(tmp, path)


def decode_peak_rss(path: str) -> tuple[int, int, str]:
    """Peak RSS (bytes) after decoding a small clip, then after decoding ``path``, and the chunk shapes.

    Meant for a fresh process (this module imports nothing heavy), so the peaks are the decoder's own.
    """
    import resource

    from operators.decode import Decode, DecodeConfig

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    dec = Decode(DecodeConfig(max_side=320))
    for _ in dec.iter_video("small", str(TESTDATA / SOURCE)):
        pass
    base = peak()
    shapes = [str(c["frame"].shape) + c["error"][0] for c in dec.iter_video("8k", path)]
    return base, peak(), ";".join(shapes)


def remove_corpus(out_dir: str | os.PathLike[str]) -> None:
    """Delete a corpus folder (restoring permissions first)."""
    for root, dirs, files in os.walk(out_dir):
        for name in files + dirs:
            p = os.path.join(root, name)
            if not os.path.islink(p) and os.path.isfile(p):
                os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "malformed_corpus"
    for c in build_corpus(target):
        print(f"{c.label!r:60} {c.expect:8} {c.stage if c.expect == 'failed' else '':7} {c.reason}")
