"""Segment captions without Ray: the keyframe choice shared by the caption stage and the assembler, the captioner
registry loading tiny random BLIP and vision-encoder-decoder checkpoints the tests save themselves with
``save_pretrained`` (the production loading path), the missing-checkpoint sentences, and the caption stage on
real frames."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from operators.assemble import SegmentConfig, assemble_video
from operators.base import MissingCheckpointError
from operators.captions import RANDOM_CAPTIONS_NOTICE, CaptionConfig, Captions, HFCaptioner, build_captioner
from operators.decode import Decode, DecodeConfig, sample_indices
from operators.keyframes import SampleGrid, is_keyframe, keyframe_index, shot_segment_windows, window_bounds
from operators.weights import resolve_caption_checkpoint, save_random_blip
from pipeline.config import load_config
from pipeline.errors import ConfigError
from tests.helpers import clip

# -- the keyframe function ------------------------------------------------------------------------------------


def _samples(
    source_fps: float, duration: float, fps: float, jitter: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Sample times as decode takes them (the source frame nearest each point of the ``fps`` grid, up to the last
    frame) and the duration decode reports (the last frame's time plus one frame)."""
    rng = np.random.default_rng(seed)
    times = np.arange(0.0, duration, 1.0 / source_fps)
    times[1:] += rng.uniform(-jitter, jitter, len(times) - 1) / source_fps  # a little VFR noise
    times = np.sort(times)
    return times[sample_indices(times, fps)], float(times[-1] + 1.0 / source_fps)


def _windows(t: np.ndarray, window_s: float, duration: float, shots: np.ndarray | None) -> dict:
    win = None if shots is None else shot_segment_windows(shots, duration, window_s)
    out: dict = {}
    for x in t:
        out.setdefault(window_bounds(float(x), window_s, duration, win), []).append(float(x))
    return out


@pytest.mark.parametrize(
    ("source_fps", "fps", "window_s", "shots"),
    [
        (30.0, 1.0, 4.0, None),
        (25.0, 2.0, 4.0, None),
        (29.97, 1.0, 3.0, None),
        (24.0, 3.0, 2.5, None),
        (30.0, 1.0, 4.0, [0.0, 2.3, 2.9, 7.71, 13.0]),  # shot-aligned windows, one shorter than a step
        (0.5, 1.0, 8.0, None),  # fewer source frames than the sampling rate: every frame is sampled
    ],
)
def test_exactly_one_keyframe_per_window_and_it_is_the_sample_nearest_the_middle(
    source_fps: float, fps: float, window_s: float, shots: list[float] | None
) -> None:
    t, duration = _samples(source_fps, 19.0, fps, jitter=0.3)
    grid = SampleGrid.of(fps, source_fps, duration)
    assert grid.step == pytest.approx(max(1 / fps, 1 / source_fps))
    windows = _windows(t, window_s, duration, None if shots is None else np.asarray(shots))
    assert len(windows) >= 3
    for (start, end), times in windows.items():
        marked = [x for x in times if is_keyframe(x, start, end, grid)]
        assert len(marked) == 1, (start, end, times, marked)
        k = keyframe_index(times, start, end, grid)
        assert times[k] == marked[0]
        # the choice the assembler made before it was shared: the sample nearest the window's middle
        nearest = times[int(np.argmin(np.abs(np.asarray(times) - (start + end) / 2)))]
        assert abs(marked[0] - (start + end) / 2) <= abs(nearest - (start + end) / 2) + grid.step / 2


def test_the_last_window_has_a_keyframe_though_the_grid_stops_at_the_last_frame() -> None:
    """flower.webm: 29.97 fps, last frame 4.971 s, duration 5.005 s; 1 fps samples 0.0 .. 4.004. The last window
    [4, 5.005) holds grid point 5.0 nearer its middle, but no frame is sampled for it (past the last frame)."""
    t, duration = _samples(30000 / 1001, 5.0, 1.0)
    assert duration == pytest.approx(5.005, abs=1e-3) and t[-1] == pytest.approx(4.004, abs=1e-3)
    grid = SampleGrid.of(1.0, 30000 / 1001, duration)
    start, end = window_bounds(float(t[-1]), 4.0, duration)
    assert (start, end) == (4.0, pytest.approx(5.005, abs=1e-3))
    assert is_keyframe(float(t[-1]), start, end, grid)


def test_keyframe_without_a_grid_is_the_sample_nearest_the_middle() -> None:
    t = [8.2, 9.9, 11.4]  # decode.mode keyframes: GOP times, no grid
    assert all(is_keyframe(x, 8.0, 12.0, SampleGrid(0.0)) for x in t)
    assert keyframe_index(t, 8.0, 12.0, SampleGrid(0.0)) == 1
    # a grid that marks nothing (irregular times): still the sample nearest the middle
    assert keyframe_index([8.45, 9.45, 11.45], 8.0, 12.0, SampleGrid(1.0)) == 1


def test_window_bounds_follow_the_assembler() -> None:
    assert window_bounds(5.5, 4.0, 10.0) == (4.0, 8.0)
    assert window_bounds(9.0, 4.0, 10.0) == (8.0, 10.0)  # never past the video's end
    win = shot_segment_windows([0.0, 3.0], 12.0, 4.0)  # shot 2 (9 s) split into 3 windows of 3 s
    assert [window_bounds(x, 4.0, 12.0, win) for x in (1.0, 3.0, 7.0, 11.9)] == [
        (0.0, 3.0),
        (3.0, 6.0),
        (6.0, 9.0),
        (9.0, 12.0),
    ]


@pytest.mark.parametrize(
    ("shots", "windows", "keyframes"),
    [
        (None, [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)], [2, 6, 9]),
        ([0.0, 3.0], [(0.0, 3.0), (3.0, 6.5), (6.5, 10.0)], [1, 5, 8]),  # a 7 s shot split in two windows
    ],
)
def test_stage_marks_what_the_assembler_picks_and_the_caption_reaches_the_segment(
    shots: list[float] | None, windows: list[tuple[float, float]], keyframes: list[int]
) -> None:
    """The stage marks frames from their own rows; the assembler, seeing whole windows, picks the same frames as
    thumbnails and puts their captions on the segments (fixed and shot-aligned windows)."""
    from operators.base import objects
    from operators.contract import make_id

    n, fps = 10, 1.0
    t = np.arange(n, dtype=np.float64)
    rows = {
        "video_id": np.full(n, "v"),
        "error": np.full(n, ""),
        "t": t,
        "frame_idx": (t * 30).astype(np.int64),
        "sample_idx": np.arange(n),
        "n_samples": np.full(n, n),
        "duration_s": np.full(n, 10.0),
        "source_fps": np.full(n, 30.0),
        "n_frames": np.full(n, 300),
        "width": np.full(n, 64),
        "height": np.full(n, 48),
        "rotation": np.zeros(n, int),
        "backend": np.full(n, "test"),
        "thumb": np.array([_jpeg()] * n, dtype=object),
        "embedding": np.eye(n, 8, dtype=np.float32),
    }
    if shots is not None:
        rows["shot_bounds"] = objects([np.asarray(shots)] * n)
    marked = Captions(CaptionConfig(), window_s=4.0, sample_fps=fps).keyframes(rows)
    assert t[marked].astype(int).tolist() == keyframes
    # what Ray Data delivers: null on other frames, or NaN where a whole block had no caption
    rows["caption"] = np.array(
        [f"caption {x:g}" if m else (None if x < 5 else np.float32("nan")) for x, m in zip(t, marked, strict=True)],
        dtype=object,
    )
    vid = make_id("video", "captions")
    segs = assemble_video(vid, rows, SegmentConfig(window_s=4.0), None, fps)["segments"]
    assert [(s["start_s"], s["end_s"]) for s in segs] == windows
    assert [s["caption"] for s in segs] == [f"caption {k}" for k in keyframes]
    assert [s["thumb_id"] for s in segs] == [make_id(vid, "frame", k * 30) for k in keyframes]


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, format="JPEG")
    return buf.getvalue()


# -- captioners on checkpoints saved here -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """The tiny config's random BLIP, written with save_pretrained (model, BLIP processor, tokenizer)."""
    folder = tmp_path_factory.mktemp("blip") / "tiny-blip"
    return Path(save_random_blip(str(folder), load_config("tiny").captions.architecture or {}))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Four real frames: two sampled frames from each of two clips."""
    out = []
    for rel in ("mmaction2/test.mp4", "intel_sample_videos/car-detection.mp4"):
        chunk = next(Decode(DecodeConfig(max_side=320)).iter_video("v", clip(rel)))
        out += [chunk["frame"][0], chunk["frame"][5]]
    return out


def test_blip_captions_a_batch_of_real_frames(tiny_blip: Path, frames: list[np.ndarray]) -> None:
    cap = build_captioner(CaptionConfig(model="blip", checkpoint=str(tiny_blip), device="cpu", max_new_tokens=6))
    cap.setup()
    assert type(cap.model).__name__ == "BlipForConditionalGeneration"
    texts = cap.caption(frames)
    assert len(texts) == len(frames)
    assert all(isinstance(x, str) and 1 <= len(x.split()) <= 6 for x in texts), texts
    one_by_one = build_captioner(cap.cfg.model_copy(update={"batch_size": 1}), str(tiny_blip))
    one_by_one.setup()
    assert one_by_one.caption(frames) == texts  # batched generation gives each frame its own caption


def test_hf_loads_a_vision_encoder_decoder_and_blip_through_auto_classes(
    tmp_path: Path, tiny_blip: Path, frames: list[np.ndarray]
) -> None:
    from transformers import (
        BertConfig,
        BertTokenizer,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "car", "on", "the", "road", "man"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(**small, image_size=32, patch_size=8),
        BertConfig(**small, vocab_size=len(vocab), is_decoder=True, add_cross_attention=True),
    )
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 2, 0, 3
    folder = tmp_path / "vit-bert"
    VisionEncoderDecoderModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for ckpt, model_type in ((folder, "VisionEncoderDecoderModel"), (tiny_blip, "BlipForConditionalGeneration")):
        cap = build_captioner(CaptionConfig(model="hf", checkpoint=str(ckpt), device="cpu", max_new_tokens=5))
        assert isinstance(cap, HFCaptioner)
        cap.setup()
        assert type(cap.model).__name__ == model_type
        texts = cap.caption(frames[:3])
        assert len(texts) == 3 and all(isinstance(x, str) and len(x.split()) <= 5 for x in texts), texts


def test_missing_checkpoints_stop_with_one_actionable_sentence(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(MissingCheckpointError, match=r"does not exist: set captions\.checkpoint"):
        resolve_caption_checkpoint(CaptionConfig(model="blip", checkpoint=str(tmp_path / "nope")))
    with pytest.raises(MissingCheckpointError, match="does not hold a saved model and its processor"):
        resolve_caption_checkpoint(CaptionConfig(model="blip", checkpoint=str(tmp_path)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingCheckpointError, match=r"not in the Hugging Face cache .*offline mode is on"):
        resolve_caption_checkpoint(CaptionConfig(model="blip", checkpoint="Salesforce/blip-image-captioning-base"))


def test_caption_config_is_typed_and_strict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"captions\.max_tokens: unknown key"):
        load_config("tiny", ["captions.max_tokens=3"])
    with pytest.raises(ConfigError, match="unknown captioner 'git'"):
        load_config("tiny", ["captions.model=git"])
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        load_config("tiny", ["captions.model=hf"])
    base = load_config("tiny")
    assert base.captions.model == "blip" and base.captions.random_weights
    off = load_config("tiny", ["captions.model=none"])
    assert off.pipeline_version() != base.pipeline_version()
    assert (
        off.pipeline_version()
        == load_config("tiny", ["captions.model=none", "captions.max_new_tokens=3"]).pipeline_version()
    )
    assert base.pipeline_version() != load_config("tiny", ["captions.max_new_tokens=3"]).pipeline_version()
    assert load_config("default").captions.checkpoint == "Salesforce/blip-image-captioning-base"


# -- the stage ------------------------------------------------------------------------------------------------


def test_stage_captions_only_keyframes_and_says_random_weights_are_meaningless(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config("tiny").captions.model_copy(update={"cache_dir": str(tmp_path)})
    batches = list(Decode(DecodeConfig(max_side=320)).iter_video("v", clip("mmaction2/test.mp4")))
    batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    batch["error"][3] = "a failure row is never captioned"
    stage = Captions(cfg, window_s=4.0, sample_fps=1.0)
    with caplog.at_level(logging.WARNING):
        stage.setup()
    assert RANDOM_CAPTIONS_NOTICE in caplog.text and "meaningless text" in RANDOM_CAPTIONS_NOTICE
    out = stage(dict(batch))
    captioned = [float(t) for t, c in zip(out["t"], out["caption"], strict=True) if c is not None]
    assert len(out["caption"]) == len(batch["t"]) == 10
    assert captioned == pytest.approx([2.0, 6.0, 9.0], abs=0.05)  # windows [0,4), [4,8), [8,10): their keyframes
    assert all(isinstance(c, str) for c in out["caption"] if c is not None)
    every = Captions(cfg, window_s=4.0, sample_fps=1.0, every_frame=True, captioner=stage.captioner)
    assert sum(c is not None for c in every(dict(batch))["caption"]) == 9  # all but the failure row
