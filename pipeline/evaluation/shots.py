"""Shot-boundary evaluation: clips with known cuts built from real footage at run time, scored per detector.

A shots manifest (``kind: shots``, see ``eval/shots.yaml``) lists composites: parts of real clips (each a
single shot, checked by eye) joined by ffmpeg with hard cuts (``concat``), a dissolve (``xfade=dissolve``)
or a fade through black (``xfade=fadeblack``), all re-encoded at one frame rate and size; a clip of one part
has no cut. The ground truth follows from the recipe: a hard cut at the sum of the part durations, a gradual
transition over ``[offset, offset + transition_s]``. Composites are cached in the work folder under a hash of
their recipe, so nothing binary is committed.

Scoring: a detected shot start matches a true transition when it lies within ``tolerance_frames`` frames of
it (of the interval, for a gradual one); matches are one-to-one, closest first. Precision, recall and F1 are
reported per category (``hard``, ``jump``: a cut inside one scene, ``dissolve``, ``fade``); on ``none``
clips every detected cut is a false positive (reported as a count, and per minute of video).

Temporal IoU (clips of category ``hard``): a segments-level near-duplicate query for the sampled frame at
``t`` (the 1 fps grid) is answered by the segment holding ``t``; the relevant span is the true shot holding
``t``. Reported for fixed ``window_s`` windows, for shot-aligned windows (``shot_windows`` on the detected
shots, split at ``window_s``) and for the detected shot's whole span.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import model_validator

from operators.base import StrictModel
from operators.shots import ShotConfig, ShotDetect, shot_index, shot_windows
from pipeline.evaluation.manifests import default_media_root
from pipeline.evaluation.metrics import prf, temporal_iou

Category = Literal["hard", "jump", "dissolve", "fade", "none"]
CATEGORIES: tuple[Category, ...] = ("hard", "jump", "dissolve", "fade")


class Part(StrictModel):
    video: str  # relative to the media root
    start: float = 0.0
    duration: float


class ShotClip(StrictModel):
    id: str
    category: Category
    parts: list[Part]
    transition: Literal["cut", "dissolve", "fadeblack"] = "cut"
    transition_s: float = 1.0  # gradual transitions only

    def length(self) -> float:
        overlap = 0.0 if self.transition == "cut" else self.transition_s
        return sum(p.duration for p in self.parts) - overlap * (len(self.parts) - 1)

    def transitions(self) -> list[tuple[float, float]]:
        """True transitions as ``(start, end)`` seconds; a hard cut has start == end (the new shot's start)."""
        out, t = [], 0.0
        for p in self.parts[:-1]:
            if self.transition == "cut":
                t += p.duration
                out.append((t, t))
            else:
                t += p.duration - self.transition_s
                out.append((t, t + self.transition_s))
        return [(round(a, 6), round(b, 6)) for a, b in out]  # 7.2, not 7.199999999999999


class ShotManifest(StrictModel):
    name: str = ""
    description: str = ""
    kind: Literal["shots"] = "shots"
    fps: int = 25
    size: tuple[int, int] = (320, 180)
    tolerance_frames: int = 3
    window_s: float = 4.0
    detectors: list[str | dict[str, Any]] = ["transnetv2", "content", "none"]
    clips: list[ShotClip]

    @model_validator(mode="after")
    def _whole_frames(self) -> ShotManifest:
        # Ground truth is exact only when every part (and transition) lasts a whole number of frames.
        for c in self.clips:
            for x in [*(p.duration for p in c.parts), c.transition_s]:
                if abs(x * self.fps - round(x * self.fps)) > 1e-6:
                    raise ValueError(f"clip {c.id}: {x} s is not a whole number of frames at {self.fps} fps")
        return self


def load_shot_manifest(path: str | Path) -> ShotManifest:
    return ShotManifest.model_validate(yaml.safe_load(Path(path).read_text()))


def detector_label(cfg: ShotConfig) -> str:
    extra = cfg.model_dump(exclude_defaults=True, exclude={"detector"})
    return " ".join([cfg.detector, *(f"{k}={v}" for k, v in sorted(extra.items()))])


# -- composites ---------------------------------------------------------------------------------------------
def build_clip(clip: ShotClip, manifest: ShotManifest, media_root: Path, cache: Path) -> Path:
    """The composite for ``clip`` (made once with ffmpeg into ``cache``); its length is checked."""
    recipe = json.dumps([clip.model_dump(exclude={"id", "category"}), manifest.fps, manifest.size], sort_keys=True)
    path = cache / f"{clip.id}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.mp4"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    w, h = manifest.size
    cmd, chains = ["ffmpeg", "-v", "error", "-y"], []
    for i, p in enumerate(clip.parts):
        src = media_root / p.video
        if not src.exists():
            raise FileNotFoundError(f"manifest video {p.video} not under {media_root}")
        cmd += ["-ss", f"{p.start}", "-t", f"{p.duration + 1.0}", "-i", str(src)]
        chains.append(
            f"[{i}:v]fps={manifest.fps},scale={w}:{h},setsar=1,format=yuv420p,"
            f"trim=duration={p.duration},setpts=PTS-STARTPTS,settb=AVTB[p{i}]"
        )
    n = len(clip.parts)
    if n == 1:
        chains.append("[p0]null[v]")
    elif clip.transition == "cut":
        chains.append("".join(f"[p{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v]")
    else:
        prev, length = "[p0]", clip.parts[0].duration
        for i in range(1, n):
            out = "[v]" if i == n - 1 else f"[x{i}]"
            offset = length - clip.transition_s
            chains.append(
                f"{prev}[p{i}]xfade=transition={clip.transition}:duration={clip.transition_s}:offset={offset}{out}"
            )
            prev, length = out, length + clip.parts[i].duration - clip.transition_s
    tmp = path.with_suffix(".tmp.mp4")
    cmd += ["-filter_complex", ";".join(chains), "-map", "[v]", "-an", "-c:v", "libx264", "-preset", "veryfast"]
    subprocess.run([*cmd, "-crf", "20", str(tmp)], check=True, capture_output=True)
    frames = _frame_count(tmp)
    expected = round(clip.length() * manifest.fps)
    if abs(frames - expected) > 1:
        tmp.unlink()
        raise ValueError(f"composite {clip.id}: {frames} frames, expected {expected} (a part is shorter than asked)")
    tmp.rename(path)
    return path


def _frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.demux(c.streams.video[0]) if _.size)


# -- metrics (pure) -----------------------------------------------------------------------------------------
def match_boundaries(detected: list[float], truth: list[tuple[float, float]], tol: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): one-to-one matches, closest pairs first, of
    detected times within ``tol`` seconds of a true transition interval."""
    pairs = sorted(
        (max(0.0, a - t, t - b), i, j)
        for i, t in enumerate(detected)
        for j, (a, b) in enumerate(truth)
        if max(0.0, a - t, t - b) <= tol + 1e-9
    )
    used_d, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
    tp = len(used_d)
    return tp, len(detected) - tp, len(truth) - tp


def segment_tious(truth_starts: list[float], detected: list[float], duration: float, window_s: float) -> dict:
    """Mean tIoU of the segment holding each 1 fps sample with the true shot holding it: fixed windows,
    shot-aligned windows and whole detected shots."""
    t = np.arange(0.0, duration - 1e-9, 1.0)
    true_ends = [*truth_starts[1:], duration]
    det_ends = [*detected[1:], duration]
    wins = shot_windows(detected, duration, window_s)
    out: dict[str, list[float]] = {"fixed": [], "shot_windows": [], "shot_span": []}
    for x, ti, di in zip(t, shot_index(truth_starts, t), shot_index(detected, t), strict=True):
        true = (truth_starts[ti], true_ends[ti])
        k = math.floor(x / window_s)
        out["fixed"].append(temporal_iou((k * window_s, min((k + 1) * window_s, duration)), true))
        win = next(((s, e) for _, s, e in wins if s <= x < e), (wins[-1][1], wins[-1][2]))
        out["shot_windows"].append(temporal_iou(win, true))
        out["shot_span"].append(temporal_iou((detected[di], det_ends[di]), true))
    return {k: float(np.mean(v)) for k, v in out.items()}


# -- running ------------------------------------------------------------------------------------------------
def evaluate_shots(
    manifest: ShotManifest, media_root: str | Path, work_dir: str | Path, detectors: list[Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Score every detector of ``detectors`` (default: the manifest's) on the manifest's composites. Returns,
    per detector label, ``summary`` (metrics) and ``clips`` (what was found on each clip)."""
    cache = Path(work_dir) / "shot_clips"
    paths = {c.id: build_clip(c, manifest, Path(media_root), cache) for c in manifest.clips}
    tol = manifest.tolerance_frames / manifest.fps
    results: dict[str, dict[str, Any]] = {}
    for spec in detectors if detectors is not None else manifest.detectors:
        cfg = ShotConfig.model_validate(spec)
        op = ShotDetect(cfg)
        op.setup()
        counts = {c: [0, 0, 0] for c in CATEGORIES}
        none_fp, none_s, video_s, cpu_s = 0, 0.0, 0.0, 0.0
        tious: list[dict[str, float]] = []
        clips = []
        for clip in manifest.clips:
            t0 = time.process_time()
            out = op({"video_id": np.array([clip.id]), "path": np.array([str(paths[clip.id])])})
            cpu_s += time.process_time() - t0
            if out["shots_error"][0]:
                raise RuntimeError(f"{clip.id}: {out['shots_error'][0]}")
            starts = [float(x) for x in out["shot_bounds"][0]]
            video_s += clip.length()
            truth = clip.transitions()
            tp, fp, fn = match_boundaries(starts[1:], truth, tol)
            if clip.category == "none":
                none_fp += fp
                none_s += clip.length()
            else:
                counts[clip.category] = [a + b for a, b in zip(counts[clip.category], (tp, fp, fn), strict=True)]
            if clip.category == "hard":
                tious.append(segment_tious([0.0, *(a for a, _ in truth)], starts, clip.length(), manifest.window_s))
            clips.append({"id": clip.id, "category": clip.category, "found": starts[1:], "truth": truth})
        summary: dict[str, Any] = {}
        for cat, (tp, fp, fn) in counts.items():
            p, r, f1 = prf(tp, fp, fn)
            summary |= {f"{cat} P": p, f"{cat} R": r, f"{cat} F1": f1}
        summary["none: false cuts"] = none_fp
        summary["none: false cuts/min"] = 60.0 * none_fp / none_s if none_s else 0.0
        for key in ("fixed", "shot_windows", "shot_span"):
            summary[f"tIoU {key}"] = float(np.mean([t[key] for t in tious])) if tious else None
        summary["CPU ms per video s"] = 1000.0 * cpu_s / video_s if video_s else math.nan
        results[detector_label(cfg)] = {"summary": summary, "clips": clips}
    return results


def run_shots(
    manifest_path: str | Path, detectors: list[str] | None, media_root: str | Path | None, work_dir: str | Path
) -> dict[str, dict[str, Any]]:
    """Shot-boundary evaluation of a ``kind: shots`` manifest, one result per detector. ``detectors`` are YAML
    strings (a name, or a mapping of ``segments.shots`` options); None: the manifest's own list."""
    specs = [yaml.safe_load(d) for d in detectors] if detectors else None
    root = Path(media_root) if media_root else default_media_root()
    return evaluate_shots(load_shot_manifest(manifest_path), root, work_dir, specs)
