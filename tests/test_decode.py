"""Decode against an independent reader (PyAV, decoding every frame) on real clips of different containers."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from operators.decode import Decode, DecodeConfig, sample_indices
from operators.readers import relabelled
from tests.helpers import clip

CLIPS = [
    "imageio_test_images/test.webm",  # H.264 in WebM, variable frame rate, no container duration
    "mmaction2/test.avi",  # MPEG-4 ASP in AVI
    "mdn/flower.webm",  # VP8
    "decord/flipping_a_pancake.mkv",  # H.264 in MKV
    "moviepy/fire2.mp4",  # rotation -180 + variable frame rate
    "intel_sample_videos/car-detection.mp4",  # 12.5 fps
    "intel_sample_videos/person-bicycle-car-detection.gif",  # GIF: decord cannot open it, PyAV can
]


def pyav_frames(path: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every frame's presentation time (from 0) and upright RGB image, read independently with PyAV."""
    times, images = [], []
    with av.open(path) as c:
        stream = c.streams.video[0]
        for frame in c.decode(video=0):
            times.append(float(frame.pts * stream.time_base))
            img = frame.to_ndarray(format="rgb24")
            images.append(np.rot90(img, (int(frame.rotation or 0) // 90) % 4))
    # The decoder emits frames in presentation order; only the labels can be out of order (packed B-frames in
    # mmaction2/test.avi, see test_packed_b_frames_come_out_at_their_own_times), so the k-th emitted picture is
    # the k-th time. On every other clip here the labels already increase.
    t = np.sort(np.asarray(times))
    return t - t[0], images


def decode_all(path: str, **cfg: object) -> dict[str, np.ndarray]:
    chunks = list(Decode(DecodeConfig(**cfg)).iter_video("vid", path))
    assert all(c["error"][0] == "" for c in chunks), chunks[0]["error"]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@pytest.mark.parametrize("rel", CLIPS)
def test_sampled_frames_match_independent_reader(rel: str) -> None:
    path = clip(rel)
    ref_t, ref_img = pyav_frames(path)
    out = decode_all(path, fps=1.0, max_side=10_000)
    # One sample per grid point 0, 1, 2 ... s up to the last frame's time.
    expected = len(np.arange(0.0, ref_t[-1] + 1e-9, 1.0))
    assert len(out["t"]) == expected
    assert (out["n_samples"] == expected).all()
    assert np.all(np.diff(out["t"]) > 0)
    for k, (t, frame) in enumerate(zip(out["t"], out["frame"], strict=True)):
        # The sample is the reference frame nearest to the grid point k seconds (the earlier one on a tie)...
        dist = np.abs(ref_t - k)
        nearest = int(np.flatnonzero(dist <= dist.min() + 1e-6)[0])
        assert abs(t - ref_t[nearest]) < 0.011, (k, t, ref_t[nearest])
        # ...and its pixels are that frame's (the reader picked the right frame, upright).
        ref = ref_img[nearest]
        assert frame.shape == ref.shape
        assert np.abs(frame.astype(float) - ref.astype(float)).mean() < 6.0


def test_variable_frame_rate_timestamps_are_real_frame_times() -> None:
    path = clip("imageio_test_images/test.webm")
    ref_t, _ = pyav_frames(path)
    assert np.ptp(np.diff(ref_t)) > 0.01  # the clip really is variable-frame-rate
    out = decode_all(path, fps=4.0)
    for t in out["t"]:
        assert np.min(np.abs(ref_t - t)) < 1e-3
    assert out["backend"][0] == "pyav"


@pytest.mark.parametrize("fps", [12.5, 24.0])
def test_packed_b_frames_come_out_at_their_own_times(fps: float) -> None:
    """An MPEG-4 ASP AVI with packed B-frames: the decoder emits frames in presentation order, but PyAV labels
    them 1, 2, 4, 3, 5, 7, 6 ... (ffprobe's best-effort timestamps and decord, which reads by decode position,
    both give the emitted order). At a rate that takes one frame of a swapped pair, each sample must still be
    the frame at its own index, not its neighbour."""
    import decord

    path = clip("mmaction2/test.avi")
    with av.open(path) as c:
        labels = [f.pts for f in c.decode(video=0)]
    assert any(b < a for a, b in zip(labels, labels[1:], strict=False))  # the clip really is mislabelled
    ref = decord.VideoReader(path, num_threads=1)
    ref_img = ref.get_batch(list(range(len(ref)))).asnumpy().astype(float)
    out = decode_all(path, fps=fps, max_side=10_000, backend="pyav")
    assert out["backend"][0] == "pyav" and len(out["frame"]) > 60
    for i, frame in zip(out["frame_idx"], out["frame"], strict=True):
        near = range(max(0, i - 1), min(len(ref_img), i + 2))
        diffs = {j: np.abs(frame.astype(float) - ref_img[j]).mean() for j in near}
        assert min(diffs, key=diffs.__getitem__) == i and diffs[i] < 0.01, (i, diffs)


def test_relabelling_hands_a_too_late_label_on_but_keeps_a_reset() -> None:
    def times(labels: list[float]) -> list[float]:
        return [t for t, _ in relabelled(iter([(t, i) for i, t in enumerate(labels)]))]

    assert times([1, 2, 4, 3, 5, 7, 6, 8]) == [1, 2, 3, 4, 5, 6, 7, 8]  # packed B-frames
    assert times([1, 2, 5, 3, 4, 6]) == [1, 2, 3, 4, 5, 6]  # a label two frames late travels on
    assert times([10, 11, 0, 1, 2]) == [10, 11, 0, 1, 2]  # a timestamp reset is not a mislabel
    assert times([0, 1, 1, 2]) == [0, 1, 1, 2]  # duplicate labels stay (the reader takes the first)
    assert [i for _, i in relabelled(iter([(1, "a"), (3, "b"), (2, "c")]))] == ["a", "b", "c"]  # order kept


def test_resize_happens_in_the_decoder_and_keeps_aspect() -> None:
    out = decode_all(clip("intel_sample_videos/car-detection.mp4"), max_side=320)
    assert out["frame"].shape[1:] == (180, 320, 3)  # 768x432 -> longest side 320
    assert (out["width"] == 768).all() and (out["height"] == 432).all()


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_clips_come_out_upright(rotation: int) -> None:
    ref = decode_all(clip("decord/video_0.mov"), max_side=10_000)
    out = decode_all(clip(f"decord/video_{rotation}.mov"), max_side=10_000)
    h0, w0 = ref["frame"].shape[1:3]
    # Display size: a quarter turn swaps the 0-degree clip's dimensions, a half turn keeps them.
    assert out["frame"].shape[1:3] == ((w0, h0) if rotation in (90, 270) else (h0, w0))
    assert abs(int(out["rotation"][0])) in (90, 180)
    # The two readers apply the display matrix independently (decord internally, PyAV via frame.rotation
    # in the fallback path); both must give the same upright picture.
    via_pyav = decode_all(clip(f"decord/video_{rotation}.mov"), max_side=10_000, backend="pyav")
    assert via_pyav["frame"].shape == out["frame"].shape
    assert np.abs(via_pyav["frame"].astype(float) - out["frame"].astype(float)).mean() < 3.0


def test_undecodable_file_becomes_a_failure_row(tmp_path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 50)
    chunks = list(Decode(DecodeConfig()).iter_video("vid", str(bad)))
    assert len(chunks) == 1
    assert chunks[0]["error"][0].startswith("cannot decode video")
    assert "decord" in chunks[0]["error"][0] and "pyav" in chunks[0]["error"][0]


def test_sample_indices_pick_nearest_frame_per_grid_point() -> None:
    ts = np.array([0.0, 0.4, 0.9, 1.2, 2.6, 3.05])
    assert sample_indices(ts, 1.0).tolist() == [0, 2, 4, 5]  # grid 0,1,2,3 -> 0.0, 0.9, 2.6 (tie->earlier), 3.05


def test_thumbnails_are_jpegs_of_the_frame() -> None:
    import io

    out = decode_all(clip("mdn/flower.webm"), thumb_side=160)
    img = Image.open(io.BytesIO(out["thumb"][0]))
    assert img.format == "JPEG" and max(img.size) == 160


KEYFRAME_CLIPS = [
    "decord/flipping_a_pancake.mkv",  # H.264, keyframes every 5 s
    "mdn/flower.webm",  # VP8, irregular keyframes
    "intel_sample_videos/car-detection.mp4",  # H.264 at 12.5 fps
    "moviepy/fire2.mp4",  # rotated, variable frame rate
]


@pytest.mark.parametrize("rel", KEYFRAME_CLIPS)
def test_keyframe_mode_gives_one_frame_per_gop_at_its_own_time(rel: str) -> None:
    path = clip(rel)
    ref_t, ref_img = pyav_frames(path)
    key_t = []  # the keyframes' times, read independently (every frame decoded, key_frame flag)
    with av.open(path) as c:
        stream = c.streams.video[0]
        times = [(float(f.pts * stream.time_base), bool(f.key_frame)) for f in c.decode(video=0)]
    t0 = min(t for t, _ in times)
    key_t = sorted(t - t0 for t, key in times if key)
    out = decode_all(path, mode="keyframes", max_side=10_000)
    np.testing.assert_allclose(out["t"], key_t, atol=1e-6)
    assert (out["n_samples"] == len(key_t)).all() and out["sample_idx"].tolist() == list(range(len(key_t)))
    for t, idx, frame in zip(out["t"], out["frame_idx"], out["frame"], strict=True):
        assert abs(ref_t[idx] - t) < 1e-6  # frame_idx indexes the video's frames, as in sampling mode
        ref = ref_img[idx]
        assert frame.shape == ref.shape and np.abs(frame.astype(float) - ref.astype(float)).mean() < 6.0


def test_keyframe_mode_rows_have_the_sampling_columns(tmp_path) -> None:
    path = clip("intel_sample_videos/car-detection.mp4")
    sampled = list(Decode(DecodeConfig(max_side=320)).iter_video("vid", path))
    keyed = list(Decode(DecodeConfig(max_side=320, mode="keyframes")).iter_video("vid", path))
    assert len(keyed[0]["t"]) < len(sampled[0]["t"]) or len(keyed) < len(sampled)  # fewer frames than 1 fps here
    for chunk in keyed:
        assert list(chunk) == list(sampled[0])
        for k, v in chunk.items():
            ref = np.asarray(sampled[0][k]).dtype
            assert np.asarray(v).dtype == ref or np.asarray(v).dtype.kind == ref.kind == "U", k  # str width varies
            assert np.asarray(v).shape[1:] == np.asarray(sampled[0][k]).shape[1:], k
    # A file that is no video is still one failure row in keyframe mode.
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video " * 500)
    (row,) = list(Decode(DecodeConfig(mode="keyframes")).iter_video("vid", str(junk)))
    assert row["error"][0].startswith("cannot decode video")
