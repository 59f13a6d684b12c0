"""Search by meaning, done as the evaluation does it: ``evaluate --manifest eval/semantic.yaml`` through the real
pipeline (Whisper tiny.en, PP-OCRv4 and all-MiniLM-L6-v2, all trained, from the pinned wheels), on the recordings of
``../shared/testdata/speech`` muxed into real clips and text drawn into real clips at test time. Paraphrases written
without the words they paraphrase are found at the moment those words are said or shown; the words themselves
still rank first in hybrid; the clip without speech or text gives nothing at those levels."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, TESTDATA


@pytest.mark.slow  # builds 6 clips and indexes them through Ray with speech and OCR on (~3 min on 2 cores)
def test_paraphrases_are_found_by_meaning_in_vector_and_hybrid_mode(tmp_path: Path, ray_session: Any) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is needed to build the clips")
    from pipeline.evaluation.semantic import load_semantic_manifest, run_semantic_configs

    manifest = ROOT / "eval" / "semantic.yaml"
    results, notices = run_semantic_configs(manifest, ["tiny"], [], TESTDATA, tmp_path / "work", k=5)
    summary = results["tiny all-MiniLM-L6-v2"]["summary"]
    queries = load_semantic_manifest(manifest).queries
    assert summary["queries"] == len(queries) >= 15 and {q.level for q in queries} == {"speech", "texts"}
    for mode in ("vector", "hybrid"):
        assert summary[f"{mode} R@1"] >= 0.9, (mode, results)
        assert summary[f"{mode} R@5"] == 1.0 and summary[f"{mode} MRR"] >= 0.9
    assert summary["text R@1"] < 0.5  # the words alone cannot do it: the queries share none with what is said
    assert summary["exact phrase hybrid R@1"] == 1.0
    assert summary["hits on silent clips"] == 0
    assert summary["utterances"] >= 7 and summary["text spans"] >= 4 and "paraphrases" in notices[0]
