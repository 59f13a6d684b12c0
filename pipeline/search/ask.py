"""Ask a question about a moment of an indexed video: ``run_pipeline.py ask``, ``POST /api/ask`` and the page's
Ask box all call ``Asker.ask``.

The moment is a video id and a time, or the id of a search hit (a segment, frame or track id), which resolves
to its video and its keyframe's time (a track's best view). The frame is the stored thumbnail nearest to that
time when one lies within ``vqa.thumb_tolerance_s`` (no video is opened); otherwise it is decoded at that time
from the original file, after checking that the file still is the indexed content (size and fingerprint, as
the media route does) and, on the server, that it lies under the media roots. The answer names the frame it
was asked on: its time, and its thumbnail id or the decoded frame as a JPEG.

Only videos marked ``complete`` are answered about. Bad input is an ``AskError`` whose message is safe to show:
status 400 (empty or over-long question, time outside the video), 404 (unknown id), 409 (the frame must be
decoded but the file is gone, changed or outside the media roots).
"""

from __future__ import annotations

import base64
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from operators.decode import Decode, DecodeConfig, DecodeError, encode_jpeg
from operators.readers import relabelled, target_size
from operators.vqa import QuestionError, VqaConfig, VqaModel, build_vqa
from pipeline.config import Config
from pipeline.errors import AskError
from pipeline.index.catalog import Verifier
from pipeline.search.images import load_image
from pipeline.store import schema as S
from pipeline.store.db import Store, quote

ID_CHARS = 36  # uuid5 ids
DECODED_JPEG_QUALITY = 90


@dataclass
class AskResult:
    question: str
    answer: str
    score: float
    answers: list[dict[str, Any]]  # [{answer, score}], best first
    model: str
    checkpoint: str | None  # None: random weights (answers carry no meaning)
    random_weights: bool
    video_id: str
    path: str
    t: float  # the time of the frame the question was asked on
    asked_t: float  # the time asked for (a hit's keyframe time when asked by hit)
    source: Literal["thumbnail", "decoded"]
    thumb_id: str | None  # the stored thumbnail's id (source "thumbnail")
    width: int
    height: int
    took_ms: float = 0.0
    frame_jpeg: bytes = field(default=b"", repr=False)  # the frame asked on, as JPEG

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the frame is base64 JPEG only when decoded (a thumbnail is fetched by its id)."""
        out = asdict(self)
        out["frame_jpeg"] = base64.b64encode(self.frame_jpeg).decode() if self.source == "decoded" else None
        return out


def decode_frame(path: str, t: float, cfg: VqaConfig) -> tuple[float, npt.NDArray[np.uint8]]:
    """(time, upright RGB frame) of the frame of ``path`` nearest to ``t`` seconds from the first frame.

    Probed like indexing (limits enforced, times from the packets), then PyAV seeks to the keyframe before it
    and decodes forward. Decoding is only right from a keyframe: when the seek lands elsewhere (AVI and other
    containers seek to index entries that need not be keyframes) or after the frame, it decodes from the start.
    """
    deadline = time.monotonic() + cfg.decode_timeout_s
    header, _ = Decode(DecodeConfig(max_side=cfg.decode_max_side, backend="pyav")).open(path, deadline)
    i = int(np.argmin(np.abs(header.times - t)))
    want = float(header.times[i] + header.t0)
    out_w, out_h = target_size(header.width, header.height, cfg.decode_max_side)
    k = (header.rotation // 90) % 4  # np.rot90 turns counter-clockwise, like the display matrix angle
    stored_w, stored_h = (out_h, out_w) if k % 2 else (out_w, out_h)
    for seek in (True, False):
        frame = _scan(path, want, seek, deadline, cfg.decode_timeout_s)
        if frame is not None:
            rgb = frame.reformat(width=stored_w, height=stored_h, format="rgb24").to_ndarray()
            upright = np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
            return float(header.times[i]), np.asarray(upright, dtype=np.uint8)
    raise DecodeError(f"no frame at {t:.3f} s could be decoded")


def _scan(path: str, want: float, seek: bool, deadline: float, timeout_s: float) -> Any:
    """The decoded frame presented at ``want`` (stream seconds), or None: from the start of the file, or (``seek``)
    from the keyframe the demuxer seeks to, None if it did not land on a keyframe at or before ``want``."""
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        tb = float(stream.time_base or 0.0)
        if seek:
            container.seek(int(want / tb), stream=stream, backward=True)

        def frames() -> Iterator[tuple[float, Any]]:  # ends without a frame when the seek missed a keyframe
            first = True
            for packet in container.demux(stream):
                if time.monotonic() > deadline:
                    raise DecodeError(f"decoding took longer than {timeout_s:g} s")
                if seek and first and packet.pts is not None:
                    if not packet.is_keyframe or packet.pts * tb > want + 1e-6:
                        return
                    first = False
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    continue
                for frame in decoded:
                    yield (frame.pts * tb if frame.pts is not None else float(frame.time or 0.0)), frame

        for ft, frame in relabelled(frames()):  # labels as indexing reads them (packed B-frames, see there)
            if abs(ft - want) <= 1e-6:
                return frame
            if seek and ft > want + 1e-6:
                return None  # past it without meeting it
    return None


class Asker:
    """Answers questions about moments of the database's videos with the ``vqa`` model of ``cfg``.

    ``store``: a ``Store`` or a callable returning the current one (the server re-opens it periodically).
    ``media_roots``: when given, a frame is decoded only from files under one of them (as media are served).
    The model loads on the first question; questions are answered one at a time (tokenizers are not
    thread-safe), while the lookups run concurrently.
    """

    def __init__(
        self,
        cfg: Config,
        store: Store | Callable[[], Store],
        model: VqaModel | None = None,
        media_roots: list[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self._store = store
        self.model = model or build_vqa(cfg.vqa)
        self.media_roots = [os.path.realpath(r) for r in media_roots or []]
        self.verifier = Verifier()
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        return self._store if isinstance(self._store, Store) else self._store()

    def ask(
        self, question: str, video_id: str | None = None, t: float | None = None, hit_id: str | None = None
    ) -> AskResult:
        t0 = time.perf_counter()
        question = self.check_question(question)
        video, asked = self.resolve(video_id, t, hit_id)
        t_frame, frame, jpeg, thumb_id = self.frame(video, asked)
        with self._lock:
            self.model.setup()
            try:
                answers = self.model.answer(frame, question)
            except QuestionError as exc:
                raise AskError(str(exc)) from None
        vqa = self.cfg.vqa
        return AskResult(
            question=question,
            answer=answers[0].answer,
            score=answers[0].score,
            answers=[{"answer": a.answer, "score": a.score} for a in answers],
            model=vqa.model,
            checkpoint=self.model.checkpoint,
            random_weights=vqa.random_weights,
            video_id=video["video_id"],
            path=video["path"],
            t=t_frame,
            asked_t=asked,
            source="thumbnail" if thumb_id else "decoded",
            thumb_id=thumb_id,
            width=int(frame.shape[1]),
            height=int(frame.shape[0]),
            took_ms=round(1000 * (time.perf_counter() - t0), 1),
            frame_jpeg=jpeg,
        )

    def check_question(self, question: Any) -> str:
        if not isinstance(question, str):
            raise AskError(f"the question must be text, not {type(question).__name__}")
        question = question.strip()
        if not question:
            raise AskError("the question is empty")
        limit = self.cfg.vqa.max_question_chars
        if len(question) > limit:
            raise AskError(f"the question is longer than {limit} characters")
        if "\x00" in question:
            raise AskError("the question must not contain NUL characters")
        try:
            question.encode("utf-8")
        except UnicodeEncodeError:
            raise AskError("the question must be valid Unicode text") from None
        return question

    # -- what is asked about ---------------------------------------------------------------------------------
    def resolve(self, video_id: str | None, t: float | None, hit_id: str | None) -> tuple[dict[str, Any], float]:
        """The complete video's row and the time asked about (seconds from the first frame)."""
        if (video_id is None) == (hit_id is None):
            raise AskError("give either a video id and a time, or the id of a search hit")
        if hit_id is not None:
            video_id, hit_t = self._hit(hit_id)
            t = hit_t if t is None else t
        assert video_id is not None
        video = self._video(video_id)
        if t is None:
            raise AskError("give the time (seconds) to ask about")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise AskError("the time must be a finite number of seconds")
        duration = float(video["duration_s"] or 0.0)
        if not 0 <= t <= duration:
            raise AskError(f"t={t:g} s is outside the video (0 to {duration:.2f} s)")
        return video, float(t)

    def _video(self, video_id: str) -> dict[str, Any]:
        rows = []
        if _looks_like_id(video_id):
            where = f"video_id = {quote(video_id)} AND status = {quote(S.STATUS_COMPLETE)}"
            rows = self.store.rows(S.VIDEOS, where)  # every column: mtime_ns only where the database records it
            rows = rows.to_pylist()
        if not rows:
            raise AskError("no indexed video with that id", 404)
        return rows[0]

    def _hit(self, hit_id: str) -> tuple[str, float]:
        """A segment (its keyframe's time), frame (its time) or track (its best view's time) id."""
        if _looks_like_id(hit_id):
            key = quote(hit_id)
            store = self.store
            frames = store.rows(S.FRAMES, f"frame_id = {key}", ["video_id", "t"]).to_pylist()
            if frames:
                return frames[0]["video_id"], float(frames[0]["t"])
            segments = store.rows(S.SEGMENTS, f"segment_id = {key}", ["video_id", "start_s", "thumb_id"]).to_pylist()
            if segments:
                seg = segments[0]
                thumbs = store.rows(S.THUMBNAILS, f"thumb_id = {quote(seg['thumb_id'] or '')}", ["t"]).to_pylist()
                return seg["video_id"], float(thumbs[0]["t"] if thumbs else seg["start_s"])
            tracks = store.rows(S.TRACKS, f"track_id = {key}", ["video_id", "best_t"]).to_pylist()
            if tracks:
                return tracks[0]["video_id"], float(tracks[0]["best_t"])
        raise AskError("no segment, frame or track with that id", 404)

    # -- the frame ---------------------------------------------------------------------------------------------
    def frame(self, video: dict[str, Any], t: float) -> tuple[float, npt.NDArray[np.uint8], bytes, str | None]:
        """(frame time, RGB frame, its JPEG, thumbnail id or None when decoded)."""
        tol = self.cfg.vqa.thumb_tolerance_s
        where = f"video_id = {quote(video['video_id'])} AND t >= {t - tol!r} AND t <= {t + tol!r}"
        near = self.store.rows(S.THUMBNAILS, where, ["thumb_id", "t", "jpeg"]).to_pylist()
        if near:
            best = min(near, key=lambda r: (abs(r["t"] - t), r["t"]))
            return float(best["t"]), load_image(best["jpeg"]), best["jpeg"], best["thumb_id"]
        path = self._verified_path(video)
        try:
            t_frame, rgb = decode_frame(path, t, self.cfg.vqa)
        except DecodeError as exc:
            raise AskError(f"the frame at {t:g} s cannot be decoded: {exc}", 409) from None
        return t_frame, rgb, encode_jpeg(rgb, max(rgb.shape[:2]), DECODED_JPEG_QUALITY), None

    def _verified_path(self, video: dict[str, Any]) -> str:
        real = os.path.realpath(video["path"])
        if self.media_roots and not any(real.startswith(os.path.join(r, "")) for r in self.media_roots):
            raise AskError("no stored frame near that time, and the video file is outside the media roots", 409)
        opened = self.verifier.open(real, video["size_bytes"], video["fingerprint"], video.get("mtime_ns"))
        if opened is None:
            raise AskError(
                "no stored frame near that time, and the video file is gone or no longer the indexed content", 409
            )
        os.close(opened[0])
        return real


def _looks_like_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == ID_CHARS and all(c in "0123456789abcdef-" for c in value)
