"""Detection scoring: the matching and AP arithmetic on hand-made cases, and the trained YOLO11n against the real
MOT17 ground truth through ``evaluate --manifest eval/detection.yaml``."""

from __future__ import annotations

import json

import pytest

from pipeline.evaluation.detection import average_precision, match_frame
from tests.helpers import ROOT, TESTDATA


def test_matching_counts_each_object_once_and_ignores_ignore_regions() -> None:
    gt = [(0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 30.0, 30.0)]
    ignore = [(50.0, 50.0, 60.0, 60.0)]
    dets = [
        (0.9, (0.0, 0.0, 10.0, 10.0)),  # the first object
        (0.8, (0.5, 0.5, 10.0, 10.0)),  # the same object again: a false positive
        (0.7, (50.0, 50.0, 60.0, 60.0)),  # on an ignore region: not counted at all
        (0.6, (21.0, 21.0, 30.0, 30.0)),  # the second object (IoU 0.81)
        (0.5, (70.0, 70.0, 80.0, 80.0)),  # nothing there: a false positive
    ]
    assert match_frame(dets, gt, ignore, 0.5) == [(0.9, 1), (0.8, 0), (0.6, 1), (0.5, 0)]


def test_average_precision_is_the_area_under_the_precision_envelope() -> None:
    assert average_precision([(0.9, 1), (0.8, 1)], 2) == pytest.approx(1.0)
    assert average_precision([(0.9, 1), (0.8, 0)], 2) == pytest.approx(0.5)  # half the objects, found first
    # TP, FP, TP of 2 objects: precision 1 up to recall 0.5, then 2/3 up to recall 1
    assert average_precision([(0.9, 1), (0.8, 0), (0.7, 1)], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([], 3) == 0.0


def test_trained_yolo11n_finds_the_mot17_pedestrians(tmp_path, capsys) -> None:
    from operators.model_catalog import CATALOG, bundled_dir

    if not (TESTDATA / "mot17_mini").is_dir():
        pytest.skip("../shared/testdata/mot17_mini is not in this checkout")
    if bundled_dir(CATALOG["yolo11n"]) is None:
        pytest.skip("the trained YOLO11n is not installed (pip install 'vidsearch[models]')")
    from pipeline.cli import main

    out = tmp_path / "det.json"
    args = ["evaluate", "--manifest", str(ROOT / "eval" / "detection.yaml"), "--config", "default"]
    assert main([*args, "--set", "detect.backend=torch", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    at = {k.rsplit("@ ", 1)[1]: v["summary"] for k, v in res.items()}
    assert set(at) == {"320", "640", "1280"} and all(s["objects"] == 424 for s in at.values())
    assert at["640"]["P@0.25"] > 0.8 and 0.25 < at["640"]["R@0.25"] < 0.45  # measured 0.883 / 0.321
    assert at["1280"]["R@0.25"] > at["640"]["R@0.25"] > at["320"]["R@0.25"]  # small people need large inputs
    assert at["1280"]["AP50"] > 0.55  # measured 0.660
    assert "AP50" in capsys.readouterr().out


def test_random_weights_score_nothing(tmp_path) -> None:
    if not (TESTDATA / "mot17_mini").is_dir():
        pytest.skip("../shared/testdata/mot17_mini is not in this checkout")
    from pipeline.cli import main

    out = tmp_path / "det.json"
    args = ["evaluate", "--manifest", str(ROOT / "eval" / "detection.yaml"), "--config", "default", "--json", str(out)]
    assert main([*args, "--set", "detect.model=yolo11n.yaml", "--set", "detect.backend=torch"]) == 0
    assert all(v["summary"]["R@0.25"] == 0.0 for v in json.loads(out.read_text()).values())
