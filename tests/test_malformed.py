"""The whole malformed-media corpus plus good clips, indexed in one run through the real runner on Ray.

The job must complete; every bad file is either indexed correctly or recorded in ``failures`` with its
specific one-sentence reason; every good file is indexed completely; the driver's memory stays bounded.
Decode-task memory is checked separately on the 8K case, in a fresh process.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

from operators.encoders import embedding_dim
from pipeline.store import schema as S
from pipeline.store.db import Store, quote
from tests.helpers import tiny_config
from tests.media_corpus import Case, build_corpus, decode_peak_rss, remove_corpus, replace_file

GOOD = ["intel_sample_videos/asl_gestures/book.mkv", "mdn/flower.webm", "moviepy/fire2.mp4"]

#: The driver's resident memory may grow by at most this much while it indexes the corpus (after the one-time
#: import of the model libraries). The driver only holds thumbnails, embeddings and boxes (frames stay in the
#: workers): three full-size 8K frames reaching it would pass this bound. Seen: about 50 MiB.
DRIVER_RSS_GROWTH_BOUND = 256 * 2**20
#: Decoding the 8K case may raise a decode process's peak RSS by at most this much over a 320x240 clip. A
#: single full-size 7680x4320 RGB frame is 95 MiB; decoding needs one or two full-size YUV frames (47 MiB each)
#: inside FFmpeg, which is what the bound leaves room for.
DECODE_8K_GROWTH_BOUND = 256 * 2**20


def _spawned(fn, *args):  # type: ignore[no-untyped-def]
    """Run ``fn(*args)`` in a fresh process (its memory never counts against this one)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def reference_samples(path: str) -> int:
    """Sampled frames at 1 fps, from every frame's presentation time read independently with PyAV."""
    with av.open(path) as c:
        stream = c.streams.video[0]
        times = sorted(float(f.pts * stream.time_base) for f in c.decode(video=0))
    return len(np.arange(0.0, times[-1] - times[0] + 1e-9, 1.0))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, testdata):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("malformed") / "inbox"
    cases: list[Case] = _spawned(build_corpus, str(folder))
    good = folder / "good"
    good.mkdir()
    for rel in GOOD:
        shutil.copy(testdata / rel, good / Path(rel).name)
    yield folder, cases
    remove_corpus(folder)


def test_corpus_has_the_promised_cases(corpus) -> None:  # type: ignore[no-untyped-def]
    folder, cases = corpus
    assert len(cases) >= 25
    assert len({c.fs_name for c in cases}) == len(cases)
    # Every file case holds its own content: equal bytes would be indexed once and hide a case.
    contents = [Path(c.path(folder)).read_bytes() for c in cases if _plain_readable_file(c.path(folder))]
    assert len(set(contents)) == len(contents)


def _plain_readable_file(path: str) -> bool:
    return os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) > 0


def test_corpus_indexes_or_fails_each_file_with_its_reason(corpus, ray_session, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pipeline.index.runner as runner

    folder, cases = corpus
    cfg = tiny_config(tmp_path / "db")

    listed = runner.list_videos

    def list_then_replace(inputs):  # type: ignore[no-untyped-def]
        found = listed(inputs)
        replace_file(folder)  # after the fingerprints are taken, before any decode task starts
        return found

    monkeypatch.setattr(runner, "list_videos", list_then_replace)

    peak = {"rss": 0}
    done = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        while not done.wait(0.05):
            peak["rss"] = max(peak["rss"], me.memory_info().rss)

    # The driver imports the model libraries lazily (about 1 GiB, once per process); import them first so
    # the bound measures the run, not the imports.
    import lancedb  # noqa: F401
    import open_clip  # noqa: F401
    import torch  # noqa: F401
    import ultralytics  # noqa: F401

    before = me.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        summary = runner.run_index(cfg, [str(folder)], progress=False)
    finally:
        done.set()
        sampler.join()
    growth = peak["rss"] - before
    print(f"driver RSS {before / 2**20:.0f} MiB before, peak {peak['rss'] / 2**20:.0f} MiB (+{growth / 2**20:.0f})")
    assert growth < DRIVER_RSS_GROWTH_BOUND

    store = Store(cfg.db.path, embedding_dim(cfg.encoder))
    videos = {r["path"]: r for r in store.rows(S.VIDEOS).to_pylist()}
    failures = {r["path"]: r for r in store.rows(S.FAILURES).to_pylist()}

    def failure_path(case: Case) -> str:  # how the catalog spells a path that is not valid UTF-8
        return os.fsencode(case.path(folder)).decode("utf-8", "replace")

    expected_failures = set()
    for case in cases:
        path = case.path(folder)
        if case.expect == "indexed":
            v = videos.get(path)
            assert v is not None and v["status"] == S.STATUS_COMPLETE, (case.label, failures.get(path))
            assert path not in failures, case.label
            frames = store.count(S.FRAMES, f"video_id = {quote(v['video_id'])}")
            assert frames == v["n_samples"] > 0, case.label
            if case.samples is not None:
                assert frames == case.samples, case.label
            for key, want in case.checks.items():
                assert v[key] == pytest.approx(want, rel=1e-3), (case.label, key)
            assert store.count(S.SEGMENTS, f"video_id = {quote(v['video_id'])}") >= 1, case.label
        elif case.expect == "failed":
            f = failures.get(failure_path(case))
            assert f is not None, f"{case.label}: not in failures"
            expected_failures.add(failure_path(case))
            assert f["stage"] == case.stage, (case.label, f["stage"], f["message"])
            assert case.reason.lower() in f["message"].lower(), (case.label, f["message"])
            _assert_one_sentence(f["message"], str(folder))
            assert path not in videos, f"{case.label}: failed, yet has a videos row"
        else:  # ignored: never listed as a video, never recorded
            assert path not in failures and path not in videos, case.label
    # The symlink loop was not followed: nothing under it was seen twice or at all.
    assert not [p for p in [*videos, *failures] if "/loop/" in p]
    assert set(failures) == expected_failures, set(failures) ^ expected_failures

    for rel in GOOD:
        path = str(folder / "good" / Path(rel).name)
        v = videos[path]
        assert v["status"] == S.STATUS_COMPLETE
        n = reference_samples(path)
        assert store.count(S.FRAMES, f"video_id = {quote(v['video_id'])}") == v["n_samples"] == n, rel

    n_indexed = sum(c.expect == "indexed" for c in cases) + len(GOOD)
    assert summary.indexed == n_indexed
    assert summary.failed == len(expected_failures)
    assert len(videos) == n_indexed  # failed files leave no videos row behind


_TRACE = re.compile(r"Traceback|File \"|\.cc:\d+|\.py:\d+|Errno|0x[0-9a-f]{6,}")


def _assert_one_sentence(message: str, folder: str) -> None:
    assert message and "\n" not in message and len(message) < 400, message
    assert not _TRACE.search(message), message
    assert folder not in message, message  # reasons name the problem, not the path (the row has the path)


def test_8k_decode_memory_is_bounded(corpus) -> None:  # type: ignore[no-untyped-def]
    folder, _ = corpus
    base, peak, shapes = _spawned(decode_peak_rss, str(folder / "uhd_8k.mp4"))
    assert shapes == "(3, 180, 320, 3)", shapes  # three samples, downscaled in the decoder
    print(f"8K decode: peak RSS {base / 2**20:.0f} -> {peak / 2**20:.0f} MiB")
    assert peak - base < DECODE_8K_GROWTH_BOUND


def test_replaced_file_is_refused_by_decode(corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file swapped while its frames are being read: the last chunk is withheld and an error row replaces it."""
    from operators.decode import Decode, DecodeConfig
    from pipeline.index.catalog import fingerprint

    folder, _ = corpus
    path = tmp_path / "moving.mp4"
    shutil.copy(folder / "good" / "book.mkv", path)
    fp = fingerprint(str(path))[1]
    out = []
    for chunk in Decode(DecodeConfig(chunk_frames=1)).iter_video("v", str(path), fp):
        out.append(chunk)
        if len(out) == 1:
            shutil.copy(folder / "vfr.mp4", path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
    assert out[-1]["error"][0].startswith("the file changed while it was being indexed")
    assert sum(len(c["t"]) for c in out[:-1]) < 4  # book.mkv has 4 samples: never all of them delivered
    # Replaced before decoding starts (after listing): refused at once.
    first = list(Decode(DecodeConfig()).iter_video("v", str(path), fp))
    assert len(first) == 1 and "changed while" in first[0]["error"][0]


@pytest.mark.parametrize(
    ("name", "override", "reason"),
    [
        ("fps240.mp4", {"max_frames": 100}, "more than 100 frames"),
        ("vfr.mp4", {"max_duration_s": 2.0}, "duration exceeds the limit of 2 s"),
        ("fps1.mp4", {"max_samples": 3}, "5 sampled frames exceed the limit of 3"),
        ("uhd_8k.mp4", {"max_source_pixels": 1920 * 1080}, "resolution 7680x4320 exceeds the limit"),
        ("fps240.mp4", {"timeout_s": 0.0}, "decode timed out after 0 s"),
    ],
)
def test_each_limit_refuses_with_its_reason(corpus, name, override, reason) -> None:  # type: ignore[no-untyped-def]
    from operators.decode import Decode, DecodeConfig

    folder, _ = corpus
    out = list(Decode(DecodeConfig(**override)).iter_video("v", str(folder / name)))
    assert len(out) == 1 and reason in out[0]["error"][0], out[0]["error"][0]
    # and the same file passes without the override
    ok = list(Decode(DecodeConfig()).iter_video("v", str(folder / name)))
    assert all(c["error"][0] == "" for c in ok)


def test_permission_denied_paths_as_a_user_who_cannot_read_them(tmp_path, testdata) -> None:  # type: ignore[no-untyped-def]
    """Root reads mode-000 files, so the corpus's ``no_permission`` case is indexed when the suite runs as root.
    Here ``index`` runs as root without the DAC capabilities (``setpriv``; what a plain user is): a mode-000 file
    and a mode-000 folder are failures of stage ``list`` saying permission denied, the good clip beside them is
    indexed, and the run exits ``EXIT_SOME_FAILED``."""
    import json
    import stat
    import subprocess
    import sys

    from pipeline.errors import EXIT_SOME_FAILED
    from tests.helpers import ROOT, TINY_DIM

    tool = shutil.which("setpriv")
    if os.geteuid() != 0 or tool is None:
        pytest.skip("runs as root without DAC capabilities through setpriv (util-linux)")
    folder = tmp_path / "inbox"
    (folder / "locked").mkdir(parents=True)
    shutil.copy(testdata / "mdn/flower.webm", folder / "flower.webm")
    shutil.copy(testdata / "intel_sample_videos/asl_gestures/book.mkv", folder / "no_permission.mkv")
    shutil.copy(testdata / "moviepy/fire2.mp4", folder / "locked" / "fire2.mp4")
    (folder / "no_permission.mkv").chmod(0)
    (folder / "locked").chmod(0)
    db = tmp_path / "db"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["VIDSEARCH_LOG_DIR"] = str(tmp_path / "logs")
    cmd = [tool, "--bounding-set", "-dac_override,-dac_read_search", "--", sys.executable,
           str(ROOT / "run_pipeline.py"), "index", str(folder), "--config", "tiny", "--db", str(db), "--no-progress",
           "--summary-json", "-"]  # fmt: skip
    try:
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        (folder / "locked").chmod(stat.S_IRWXU)
        (folder / "no_permission.mkv").chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert run.returncode == EXIT_SOME_FAILED, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert (summary["indexed"], summary["failed"]) == (1, 2), summary["failures"]
    failures = {Path(f["path"]).name: f for f in Store(str(db), TINY_DIM).rows(S.FAILURES).to_pylist()}
    assert set(failures) == {"no_permission.mkv", "locked"}, failures
    for f in failures.values():
        assert f["stage"] == "list" and "permission denied" in f["message"].lower(), f
