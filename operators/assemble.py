"""Per-video assembly: all encoded frame rows of one video -> the Arrow rows of every table.

Runs once per video, in time order: tracking (stateful, see ``detect_track.VideoTracker``), time segments
(fixed windows, mean-pooled and re-normalised), track tubes (mean of L2-normalised region embeddings,
re-normalised; best observation = largest area x confidence) and thumbnails.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from operators.base import Batch, StrictModel
from operators.detect_track import DetectConfig, VideoTracker
from pipeline import schema as S


class SegmentConfig(StrictModel):
    window_s: float = 4.0  # fixed segment length


def _normalise(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def _thumb_image(jpeg: bytes) -> Any:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[..., ::-1]  # BGR, as trackers expect


class Assembler:
    """Turns one video's rows (``Batch`` of frame rows, any order) into table rows.

    ``detect`` is None when the object path is off. Returns ``{table: pa.Table}`` for every content table.
    """

    def __init__(self, segments: SegmentConfig, detect: DetectConfig | None, sample_fps: float, dim: int) -> None:
        self.segments = segments
        self.detect = detect
        self.sample_fps = sample_fps
        self.dim = dim

    def __call__(self, video_id: str, rows: Batch, duration_s: float) -> dict[str, pa.Table]:
        order = np.argsort(rows["t"], kind="stable")
        rows = {k: (v[order] if isinstance(v, np.ndarray) and len(v) == len(order) else v) for k, v in rows.items()}
        t = rows["t"].astype(np.float64)
        frame_ids = [S.make_id(video_id, "frame", int(i)) for i in rows["frame_idx"]]
        emb = np.stack(rows["embedding"]).astype(np.float32)
        boxes_per_frame, tracks = self._track(video_id, rows, frame_ids) if self.detect else ([[] for _ in t], [])
        frames = pa.Table.from_pylist(
            [
                {
                    "frame_id": fid,
                    "video_id": video_id,
                    "t": float(t[i]),
                    "frame_idx": int(rows["frame_idx"][i]),
                    "embedding": emb[i].tolist(),
                    "boxes": boxes_per_frame[i],
                    "class_names": sorted({b["class_name"] for b in boxes_per_frame[i]}),
                }
                for i, fid in enumerate(frame_ids)
            ],
            schema=S.frames_schema(self.dim),
        )
        thumbs = pa.Table.from_pylist(
            [
                {"thumb_id": fid, "video_id": video_id, "t": float(t[i]), "width": w, "height": h, "jpeg": jpeg}
                for i, (fid, jpeg) in enumerate(zip(frame_ids, rows["thumb"], strict=True))
                for w, h in [_jpeg_size(jpeg)]
            ],
            schema=S.thumbnails_schema(),
        )
        return {
            S.FRAMES: frames,
            S.SEGMENTS: self._segments(video_id, t, emb, frame_ids, boxes_per_frame, duration_s),
            S.TRACKS: pa.Table.from_pylist(tracks, schema=S.tracks_schema(self.dim)),
            S.THUMBNAILS: thumbs,
        }

    def _segments(
        self,
        video_id: str,
        t: npt.NDArray[np.float64],
        emb: npt.NDArray[np.float32],
        frame_ids: list[str],
        boxes: list[list[dict[str, Any]]],
        duration_s: float,
    ) -> pa.Table:
        w = self.segments.window_s
        window = np.floor(t / w).astype(np.int64)
        out = []
        for k in np.unique(window):
            idx = np.flatnonzero(window == k)
            start = float(k * w)
            video_end = duration_s if duration_s > 0 else t[idx[-1]] + 1.0 / self.sample_fps
            end = float(max(min((k + 1) * w, video_end), t[idx[-1]]))  # never past the video's end
            middle = idx[np.argmin(np.abs(t[idx] - (start + end) / 2))]
            out.append(
                {
                    "segment_id": S.make_id(video_id, "segment", f"{start:.3f}"),
                    "video_id": video_id,
                    "start_s": start,
                    "end_s": end,
                    "n_frames": len(idx),
                    "embedding": _normalise(emb[idx].mean(axis=0)).tolist(),
                    "thumb_id": frame_ids[middle],
                    "class_names": sorted({b["class_name"] for i in idx for b in boxes[i]}),
                }
            )
        return pa.Table.from_pylist(out, schema=S.segments_schema(self.dim))

    def _track(
        self, video_id: str, rows: Batch, frame_ids: list[str]
    ) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
        assert self.detect is not None
        tracker = VideoTracker(self.detect, self.sample_fps)  # fresh state for this video
        boxes_per_frame: list[list[dict[str, Any]]] = []
        obs: dict[int, list[tuple[int, int]]] = {}  # tracker id -> [(frame row, detection index)]
        for i in range(len(rows["t"])):
            boxes = np.asarray(rows["det_boxes"][i], dtype=np.float32).reshape(-1, 4)
            conf = np.asarray(rows["det_conf"][i], dtype=np.float32)
            names = json.loads(rows["det_names"][i])
            image = _thumb_image(rows["thumb"][i])
            h, w = image.shape[:2]
            ids = tracker.update(boxes * np.array([w, h, w, h], np.float32), conf, names, image)
            frame_boxes = []
            for j, tid in enumerate(ids):
                track_id = S.make_id(video_id, "track", int(tid)) if tid >= 0 else ""
                if tid >= 0:
                    obs.setdefault(int(tid), []).append((i, j))
                x1, y1, x2, y2 = (float(v) for v in boxes[j])
                frame_boxes.append(
                    {
                        "track_id": track_id,
                        "class_name": names[j],
                        "conf": float(conf[j]),
                        "x1": x1,
                        "y1": y1,
                        "x2": x2,
                        "y2": y2,
                    }
                )
            boxes_per_frame.append(frame_boxes)
        tracks = []
        has_regions = "region_emb" in rows
        for tid, seen in sorted(obs.items()):
            if len(seen) < self.detect.min_track_obs:
                continue
            tracks.append(self._tube(video_id, tid, seen, rows, frame_ids, has_regions))
        return boxes_per_frame, tracks

    def _tube(
        self, video_id: str, tid: int, seen: list[tuple[int, int]], rows: Batch, frame_ids: list[str], has_regions: bool
    ) -> dict[str, Any]:
        traj, scores, embs, names = [], [], [], []
        for i, j in seen:
            box = np.asarray(rows["det_boxes"][i], dtype=np.float32).reshape(-1, 4)[j]
            conf = float(np.asarray(rows["det_conf"][i])[j])
            mask_area = -1.0
            if "det_masks" in rows and rows["det_masks"][i] is not None and len(rows["det_masks"][i]) > j:
                mask_area = float(np.asarray(rows["det_masks"][i][j]).mean())
            traj.append(
                {
                    "t": float(rows["t"][i]),
                    "x1": float(box[0]),
                    "y1": float(box[1]),
                    "x2": float(box[2]),
                    "y2": float(box[3]),
                    "conf": conf,
                    "mask_area": mask_area,
                }
            )
            scores.append(float((box[2] - box[0]) * (box[3] - box[1])) * conf)
            names.append(json.loads(rows["det_names"][i])[j])
            if has_regions and len(rows["region_emb"][i]) > j:
                embs.append(np.asarray(rows["region_emb"][i][j], dtype=np.float32))
        best = int(np.argmax(scores))
        i_best = seen[best][0]
        if embs:
            emb = _normalise(_normalise(np.stack(embs)).mean(axis=0))
        else:  # no region features: the frames' embeddings stand in
            emb = _normalise(np.stack([rows["embedding"][i] for i, _ in seen]).mean(axis=0))
        t_first, t_last = traj[0]["t"], traj[-1]["t"]
        b = traj[best]
        return {
            "track_id": S.make_id(video_id, "track", tid),
            "video_id": video_id,
            "tracker_id": tid,
            "class_name": max(set(names), key=names.count),
            "conf_mean": float(np.mean([o["conf"] for o in traj])),
            "t_first": t_first,
            "t_last": t_last,
            "duration_s": t_last - t_first,
            "n_obs": len(traj),
            "trajectory": traj,
            "embedding": emb.tolist(),
            "best_t": b["t"],
            "best_box": [b["x1"], b["y1"], b["x2"], b["y2"]],
            "thumb_id": frame_ids[i_best],
        }


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return im.size
