"""Per-video assembly, streaming: frame rows of one video (any order, possibly repeated) -> the rows of every
content table, emitted as soon as they are final.

State per video is bounded by what is still open, not by the video's length: a reorder buffer for rows that
arrived ahead of their turn, the tracker, the open time segment and the observations of live tracks. Rows go
to ``emit(table, rows)`` as they close: a frame (with its tracked boxes) and its thumbnail as soon as it is
tracked, a segment when its window ends, a track tube when the tracker has dropped the track for good.

Segments are fixed windows, mean-pooled and re-normalised; a tube is the mean of L2-normalised region
embeddings, re-normalised; its best observation is the largest area x confidence.

Shots: every frame and segment row carries ``shot_idx`` (the index of its shot in the video) and every segment
its shot's span ``shot_start_s``/``shot_end_s``. Without a shot detector (``segments.shots: none``) the shots
are unknown: ``shot_idx`` is 0 and the span is null (not the whole video, which a search hit would otherwise
offer as "the shot"); a video whose detection failed counts as one shot spanning the whole video.

On-screen text: a segment's ``screen_text`` holds the distinct text lines read on its frames (whitespace
collapsed, in order of first appearance, at most ``MAX_SCREEN_LINES``), so the segment is found by the words
shown in it as well as by its caption (``pipeline/search/hybrid.py``); the ``texts`` table holds the spans themselves,
and each frame row its own readings (``text_lines``: text, confidence and box per line).

Speech: the video's transcript arrives once, on its first frame row (``operators/transcript.py``); its
utterances become ``speech`` rows at once, and each segment's ``speech`` holds the words whose midpoint lies in
its span (a word never counts twice); its row also hands on the whole utterances it overlaps
(``speech_context``, not stored), which the writer embeds as the segment's speech vector. ``speech_error``
(audio that could not be transcribed) is kept for the driver, which records it; the video's pictures are
indexed all the same.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.base import Batch, StrictModel
from operators.contract import FRAMES, SEGMENTS, SPEECH, SPEECH_CONTEXT, TEXTS, THUMBNAILS, TRACKS, make_id
from operators.detect_track import DetectConfig, VideoTracker
from operators.keyframes import SampleGrid, keyframe_index, shot_segment_windows
from operators.shots import ShotConfig
from operators.text_spans import SpanConfig, frame_lines, text_spans
from operators.transcript import SegmentWords, decode_transcript, speech_rows

Row = dict[str, Any]
MAX_SCREEN_LINES = 64  # per segment: a scrolling ticker misread differently on each frame stays bounded
Emit = Callable[[str, list[Row]], None]


class SegmentConfig(StrictModel):
    window_s: float = 4.0  # segment length: fixed windows, or the longest window inside a shot
    # The shot detector (operators/shots.py); with one, segments follow the video's cuts (one per shot, long shots
    # split inside the shot) and the tracker restarts at every cut. ``none``: fixed windows over the whole video.
    shots: ShotConfig = ShotConfig(detector="none")


def normalise(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def _thumb_image(jpeg: bytes) -> Any:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[..., ::-1]  # BGR, as trackers expect


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return im.size


@dataclass
class _Window:
    k: int
    t: list[float] = field(default_factory=list)
    emb: list[npt.NDArray[np.float32]] = field(default_factory=list)
    frame_ids: list[str] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    captions: list[str | None] = field(default_factory=list)  # the caption stage's, on keyframes (else None)
    screen: dict[str, None] = field(default_factory=dict)  # on-screen text lines, in order of first appearance


@dataclass
class _Tube:
    traj: list[Row] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    embs: list[npt.NDArray[np.float32]] = field(default_factory=list)  # region embeddings (or frame ones)
    frame_ids: list[str] = field(default_factory=list)


class VideoAssembler:
    """The streaming assembly of one video (a plain class; the Ray side routes a video's rows to one instance).

    ``add(rows)`` takes a columnar batch of this video's frame rows (``operators.contract.ASSEMBLY_COLUMNS``) in
    any order; rows are processed strictly in ``sample_idx`` order, duplicates (retried upstream tasks) ignored.
    ``done`` turns true once all ``n_samples`` rows were processed, after which every row has been emitted.
    """

    def __init__(
        self,
        video_id: str,
        segments: SegmentConfig,
        detect: DetectConfig | None,
        sample_fps: float,
        emit: Emit,
        spans: SpanConfig | None = None,
    ) -> None:
        self.video_id = video_id
        self.spans = spans or SpanConfig()
        # On-screen text readings (t, frame index, lines, boxes, confidences): a few short strings per frame,
        # joined into spans when the video ends (a span's end is only known once its text is gone).
        self.readings: list[tuple[float, int, list[str], Any, Any]] = []
        self.window_s = segments.window_s
        self.detect = detect
        self.sample_fps = sample_fps
        self.emit = emit
        self.tracker = VideoTracker(detect, sample_fps) if detect is not None else None
        self.pending: dict[int, Row] = {}  # sample_idx -> row, arrived ahead of its turn
        self.next = 0
        self.n_samples = -1
        self.duration_s = 0.0
        self.meta: Row = {}
        self.window: _Window | None = None
        # With shots: the segment windows (start, end, shot) known from the cuts; the shot being tracked.
        self.windows: npt.NDArray[np.float64] | None = None
        self.shot = 0
        self.shot_spans: npt.NDArray[np.float64] | None = None  # (start, end) per shot, with shots
        self.tubes: dict[int, _Tube] = {}
        self.counts = {FRAMES: 0, SEGMENTS: 0, TRACKS: 0, THUMBNAILS: 0, TEXTS: 0, SPEECH: 0}
        self.spoken = SegmentWords()  # the transcript's words not yet given to a segment
        self.speech_error = ""  # why the audio could not be transcribed ("" when fine or speech is off)
        self.shots_error = ""  # why its shots could not be found (it is then one shot); "" when fine or off

    @property
    def done(self) -> bool:
        return self.n_samples >= 0 and self.next >= self.n_samples

    def add(self, rows: Batch) -> None:
        for i in range(len(rows["sample_idx"])):
            s = int(rows["sample_idx"][i])
            if s >= self.next and s not in self.pending:
                self.pending[s] = {k: v[i] for k, v in rows.items()}
        while self.next in self.pending:
            self._frame(self.pending.pop(self.next))
            self.next += 1
        if self.done:
            self._finish()

    # -- one frame, in time order ---------------------------------------------------------------------------
    def _frame(self, row: Row) -> None:
        if self.n_samples < 0:
            self.n_samples = int(row["n_samples"])
            self.duration_s = float(row["duration_s"])
            self.meta = {k: row[k] for k in ("duration_s", "source_fps", "n_frames", "width", "height", "rotation")}
            self.meta["backend"] = str(row["backend"])
            if row.get("shot_bounds") is not None:
                starts = np.asarray(row["shot_bounds"], np.float64)
                self.meta["shot_starts"] = [float(s) for s in starts]
                end = self.duration_s if self.duration_s > 0 else float(starts[-1]) + self.window_s
                # (start, end, shot) per segment window; the caption stage derives them with the same function
                self.windows = shot_segment_windows(starts, self.duration_s, self.window_s)
                self.shot_spans = np.stack([starts, np.append(starts[1:], max(end, float(starts[-1])))], axis=1)
        if isinstance(row.get("shots_error"), str) and row["shots_error"]:  # the first row only, like speech
            self.shots_error = row["shots_error"]
        if isinstance(row.get("speech"), str):  # the first row only (decode hands the transcript on once)
            self._speech(decode_transcript(row["speech"]), row.get("speech_error"))
        t = float(row["t"])
        fid = make_id(self.video_id, "frame", int(row["frame_idx"]))
        emb = np.asarray(row["embedding"], dtype=np.float32)
        k = self._window_of(t)
        if self.windows is not None and int(self.windows[k, 2]) != self.shot:  # a cut: no track crosses it
            if self.tracker is not None and self.detect is not None:
                for tid in sorted(self.tubes):  # closed under the shot they belong to
                    self._close_tube(tid)
                self.tracker = VideoTracker(self.detect, self.sample_fps)
            self.shot = int(self.windows[k, 2])
        w, h = _jpeg_size(row["thumb"])
        boxes = self._track(row, fid, w, h) if self.tracker is not None else []
        classes = sorted({b["class_name"] for b in boxes})
        read = row.get("ocr_text") is not None  # the lines read on the frame are stored with it (null: OCR off)
        lines = frame_lines(row["ocr_text"], row["ocr_boxes"], row["ocr_conf"]) if read else None
        self.emit(
            FRAMES,
            [
                {
                    "frame_id": fid,
                    "video_id": self.video_id,
                    "t": t,
                    "frame_idx": int(row["frame_idx"]),
                    "embedding": emb,
                    "boxes": boxes,
                    "class_names": classes,
                    "shot_idx": self.shot,
                    "text_lines": lines,
                }
            ],
        )
        self.emit(
            THUMBNAILS,
            [{"thumb_id": fid, "video_id": self.video_id, "t": t, "width": w, "height": h, "jpeg": row["thumb"]}],
        )
        self.counts[FRAMES] += 1
        self.counts[THUMBNAILS] += 1
        if row.get("ocr_text") is not None:  # every frame, read or empty: a span's gaps count sampled frames
            self.readings.append((t, int(row["frame_idx"]), list(row["ocr_text"]), row["ocr_boxes"], row["ocr_conf"]))
        if self.window is not None and self.window.k != k:
            self._close_window()
        if self.window is None:
            self.window = _Window(k)
        self.window.t.append(t)
        self.window.emb.append(emb)
        self.window.frame_ids.append(fid)
        self.window.classes.update(classes)
        caption = row.get("caption")  # Ray Data turns a block's all-null column into NaN floats: text or None
        self.window.captions.append(caption if isinstance(caption, str) else None)
        if row.get("ocr_text") is not None:
            for line in row["ocr_text"]:
                if len(self.window.screen) < MAX_SCREEN_LINES and line.strip():
                    self.window.screen.setdefault(" ".join(line.split()), None)

    def _speech(self, utterances: list[Row], error: Any) -> None:
        self.speech_error = error if isinstance(error, str) else ""
        rows = speech_rows(self.video_id, utterances)
        self.emit(SPEECH, rows)
        self.counts[SPEECH] += len(rows)
        self.spoken = SegmentWords(utterances)

    def _track(self, row: Row, fid: str, w: int, h: int) -> list[Row]:
        assert self.tracker is not None and self.detect is not None
        boxes = np.asarray(row["det_boxes"], dtype=np.float32).reshape(-1, 4)
        conf = np.asarray(row["det_conf"], dtype=np.float32)
        names = json.loads(row["det_names"])
        image = _thumb_image(row["thumb"]) if self.tracker.needs_image else None  # decoding costs ~1.5 ms
        ids = self.tracker.update(boxes * np.array([w, h, w, h], np.float32), conf, names, image)
        masks = row.get("det_masks")
        regions = row.get("region_emb")
        out = []
        for j, tid in enumerate(ids):
            x1, y1, x2, y2 = (float(v) for v in boxes[j])
            out.append(
                {
                    "track_id": self._track_id(int(tid)) if tid >= 0 else "",
                    "class_name": names[j],
                    "conf": float(conf[j]),
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                }
            )
            if tid < 0:
                continue
            tube = self.tubes.setdefault(int(tid), _Tube())
            mask_area = float(np.asarray(masks[j]).mean()) if masks is not None and len(masks) > j else -1.0
            tube.traj.append(
                {
                    "t": float(row["t"]),
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "conf": float(conf[j]),
                    "mask_area": mask_area,
                }
            )
            tube.scores.append(float((boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])) * float(conf[j]))
            tube.names.append(names[j])
            tube.frame_ids.append(fid)
            if regions is not None and len(regions) > j:
                tube.embs.append(normalise(np.asarray(regions[j], dtype=np.float32)))
            else:  # no region features: the frame's embedding stands in
                tube.embs.append(np.asarray(row["embedding"], dtype=np.float32))
        live = self.tracker.live_ids()
        for tid in [t for t in self.tubes if t not in live]:  # dropped for good: it can never come back
            self._close_tube(tid)
        return out

    def _window_of(self, t: float) -> int:
        """The segment window of time ``t``: fixed ``window_s`` windows, or the shot-aligned ones."""
        if self.windows is None:
            return int(np.floor(t / self.window_s))
        return max(int(np.searchsorted(self.windows[:, 0], t, side="right")) - 1, 0)

    def _track_id(self, tid: int) -> str:
        """Tracker ids restart with the tracker at each cut, so with shots the shot is part of the id."""
        if self.windows is None:
            return make_id(self.video_id, "track", tid)
        return make_id(self.video_id, "track", self.shot, tid)

    # -- closing rows ---------------------------------------------------------------------------------------
    def _close_window(self) -> None:
        win, self.window = self.window, None
        if win is None:
            return
        w = self.window_s
        t = np.asarray(win.t)
        video_end = self.duration_s if self.duration_s > 0 else t[-1] + 1.0 / self.sample_fps
        if self.windows is not None:  # the window inside its shot
            start, end = float(self.windows[win.k, 0]), float(max(min(self.windows[win.k, 1], video_end), t[-1]))
        else:
            start = float(win.k * w)
            end = float(max(min((win.k + 1) * w, video_end), t[-1]))  # never past the video's end
        # the keyframe (thumbnail, caption): chosen as the caption stage chose it, from the sampling grid
        grid = SampleGrid.of(self.sample_fps, float(self.meta.get("source_fps", 0.0)), self.duration_s)
        middle = keyframe_index(t, start, end, grid)
        self.emit(
            SEGMENTS,
            [
                {
                    "segment_id": make_id(self.video_id, "segment", f"{start:.3f}"),
                    "video_id": self.video_id,
                    "start_s": start,
                    "end_s": end,
                    "n_frames": len(t),
                    "embedding": normalise(np.stack(win.emb).mean(axis=0)),
                    "thumb_id": win.frame_ids[middle],
                    "class_names": sorted(win.classes),
                    **self._shot_columns(win.k, start, end, video_end),
                    "caption": win.captions[middle],
                    "screen_text": "\n".join(win.screen) or None,
                    "speech": self.spoken.take(start, end),
                    SPEECH_CONTEXT: self.spoken.around(start, end),  # embedded, not stored
                }
            ],
        )
        self.counts[SEGMENTS] += 1

    def _shot_columns(self, k: int, start: float, end: float, video_end: float) -> Row:
        """The shot of segment window ``k`` (spanning ``start``..``end``) and the shot's span, clamped to the
        video like the window; without shots index 0 and no span."""
        if self.windows is None or self.shot_spans is None:
            return {"shot_idx": 0, "shot_start_s": None, "shot_end_s": None}
        shot = int(self.windows[k, 2])
        s0, s1 = (float(v) for v in self.shot_spans[shot])
        return {"shot_idx": shot, "shot_start_s": min(s0, start), "shot_end_s": max(min(s1, video_end), end)}

    def _close_tube(self, tid: int) -> None:
        tube = self.tubes.pop(tid)
        assert self.detect is not None
        if len(tube.traj) < self.detect.min_track_obs:
            return
        best = int(np.argmax(tube.scores))
        b = tube.traj[best]
        t_first, t_last = tube.traj[0]["t"], tube.traj[-1]["t"]
        self.emit(
            TRACKS,
            [
                {
                    "track_id": self._track_id(tid),
                    "video_id": self.video_id,
                    "tracker_id": tid,
                    "class_name": max(set(tube.names), key=tube.names.count),
                    "conf_mean": float(np.mean([o["conf"] for o in tube.traj])),
                    "t_first": t_first,
                    "t_last": t_last,
                    "duration_s": t_last - t_first,
                    "n_obs": len(tube.traj),
                    "trajectory": tube.traj,
                    "embedding": normalise(np.stack(tube.embs).mean(axis=0)),
                    "best_t": b["t"],
                    "best_box": [b["x1"], b["y1"], b["x2"], b["y2"]],
                    "thumb_id": tube.frame_ids[best],
                }
            ],
        )
        self.counts[TRACKS] += 1

    def _finish(self) -> None:
        self._close_window()
        for tid in sorted(self.tubes):
            self._close_tube(tid)
        if any(r[2] for r in self.readings):
            t, idx, texts, boxes, confs = (list(c) for c in zip(*self.readings, strict=True))
            step = 1.0 / self.sample_fps if self.sample_fps > 0 else None
            rows = text_spans(self.video_id, t, idx, texts, boxes, confs, self.spans, step, self.duration_s or None)
            self.emit(TEXTS, rows)
            self.counts[TEXTS] += len(rows)


def assemble_video(
    video_id: str,
    rows: Batch,
    segments: SegmentConfig,
    detect: DetectConfig | None,
    sample_fps: float,
    spans: SpanConfig | None = None,
) -> dict[str, list[Row]]:
    """All of one video's frame rows at once -> ``{table: rows}`` (the sequential path and tests)."""
    out: dict[str, list[Row]] = {FRAMES: [], SEGMENTS: [], TRACKS: [], THUMBNAILS: [], TEXTS: [], SPEECH: []}
    va = VideoAssembler(video_id, segments, detect, sample_fps, lambda table, rows: out[table].extend(rows), spans)
    va.add(rows)
    if not va.done:
        raise ValueError(f"video {video_id}: {va.next} of {va.n_samples} sampled frames given")
    return out
