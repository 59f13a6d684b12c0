"""The stage-to-stage column contract: every configured graph's stages read only columns that the video rows or
an earlier enabled stage write (``pipeline.index.graph.check_columns``, declared by each operator's ``reads`` /
``writes``). Ray-free."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators import contract as C
from operators.decode import Decode
from operators.embed import Embed
from pipeline.config import load_config
from pipeline.index.graph import STAGES, MissingColumnError, check_columns
from tests.helpers import ROOT

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


def test_every_config_is_checked():
    assert {"default", "tiny", "cluster-gpu"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_configured_graph_fits_together(name):
    cfg = load_config(name)
    check_columns(cfg)
    enabled = [s for s in STAGES if s.enabled(cfg)]
    assert enabled[-1].name == "route" and all(s.operator.reads for s in enabled), "every stage declares its reads"


def test_every_stage_with_detection_shots_ocr_and_captions_fits(tmp_path: Path):
    """The graph with every optional stage on: each stage's reads are met."""
    cfg = load_config(
        "tiny",
        [
            "detect.enabled=true",
            "ocr.engine=rapidocr",
            "segments.shots=content",
            "captions.model=blip",
            "captions.architecture={}",
        ],
    )
    assert all(s.enabled(cfg) for s in STAGES)
    check_columns(cfg)


def test_a_column_an_upstream_stage_no_longer_writes_is_named(monkeypatch):
    cfg = load_config("tiny")
    monkeypatch.setattr(Decode, "writes", tuple(c for c in Decode.writes if c != C.FRAME))
    first_reader = next(s.name for s in STAGES if s.enabled(cfg) and C.FRAME in s.reads(cfg))
    with pytest.raises(MissingColumnError, match=rf"stage '{first_reader}' reads column 'frame'"):
        check_columns(cfg)


def test_a_dropped_column_is_missing_downstream(monkeypatch):
    """Embed drops the frame: a stage placed after it that reads the frame fails the check."""
    cfg = load_config("tiny")
    monkeypatch.setattr(Embed, "writes", ())  # the embedding is gone: route, which needs it, is named
    with pytest.raises(MissingColumnError, match=r"stage 'route' reads column 'embedding'"):
        check_columns(cfg)
    monkeypatch.undo()
    ocr = next(s for s in STAGES if s.name == "ocr")
    after_embed = tuple(s for s in STAGES if s.name != "ocr")
    after_embed = (*after_embed[:-1], ocr, after_embed[-1])  # ocr moved behind embed
    with pytest.raises(MissingColumnError, match=r"stage 'ocr' reads column 'frame'"):
        check_columns(load_config("tiny", ["ocr.engine=rapidocr"]), after_embed)


def test_detection_makes_the_assembler_need_boxes(monkeypatch):
    from operators.detect_track import Detector

    cfg = load_config("tiny", ["detect.enabled=true"])
    monkeypatch.setattr(Detector, "writes", (C.DET_BOXES, C.DET_CONF))
    with pytest.raises(MissingColumnError, match=r"stage 'route' reads column 'det_names'"):
        check_columns(cfg)
    check_columns(load_config("tiny", ["detect.enabled=false"]))  # without detection nothing reads them


def test_the_graph_builder_checks_before_ray(monkeypatch):
    """``frame_dataset`` runs the check before it imports or starts Ray."""
    from pipeline.index import graph

    monkeypatch.setattr(Decode, "writes", tuple(c for c in Decode.writes if c != C.ERROR))
    with pytest.raises(MissingColumnError, match=r"column 'error'"):
        graph.frame_dataset(load_config("tiny"), [], None)
