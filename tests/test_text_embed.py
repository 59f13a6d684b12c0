"""The sentence embedder (``operators/text_embed.py``) with the trained all-MiniLM-L6-v2 from the pinned wheel, and the
writer's fill of the text rows (``pipeline/index/assembly.py``, ``TextVectorFill``): pieces, unit vectors, empty text,
repeated text embedded once, model labels, prefixes, offline errors, the pipeline version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.base import MissingCheckpointError
from operators.text_embed import TextEmbedConfig, TextEmbedder, model_id, model_path, pieces, text_dim
from pipeline.config import load_config
from pipeline.index.assembly import TextVectorFill
from pipeline.store import schema as S
from pipeline.store.fragments import to_arrow

MINILM = "sentence-transformers/all-MiniLM-L6-v2@1110a243fdf4706b3f48f1d95db1a4f5529b4d41"


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    e = TextEmbedder(TextEmbedConfig(device="cpu"))
    e.setup()
    return e


class Counting:
    """Wraps a model's ``encode`` to record what it was asked to embed."""

    def __init__(self, model: Any) -> None:
        self.model, self.seen = model, []

    def encode(self, texts: list[str], **kw: Any) -> Any:
        self.seen += list(texts)
        return self.model.encode(texts, **kw)

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())


def test_a_text_is_embedded_whole_and_by_sentence() -> None:
    assert pieces("It was the best of times. It was the worst of times.") == [
        "It was the best of times. It was the worst of times.", "It was the best of times.",
        "It was the worst of times.",
    ]  # fmt: skip
    assert pieces("GATE 7 CLOSED") == ["GATE 7 CLOSED"]
    assert pieces("PLATFORM 9\nDEPARTURES") == ["PLATFORM 9 DEPARTURES", "PLATFORM 9", "DEPARTURES"]  # lines
    assert pieces("  \n ") == [] and pieces("Yes. Yes.") == ["Yes. Yes."]


def test_passages_are_unit_vectors_none_for_empty_text_and_each_piece_embedded_once(embedder: TextEmbedder) -> None:
    counting = TextEmbedder(TextEmbedConfig(), model=Counting(embedder.model))
    texts = ["Do you hear me? Are you there?", None, "   ", "Do you hear me? Are you there?", "Are you there?"]
    out = counting.passages(texts)
    assert out[1] is None and out[2] is None
    assert out[0] is not None and out[0].shape == (3, 384) and np.allclose(np.linalg.norm(out[0], axis=1), 1, atol=1e-5)
    assert out[3] is not None and np.array_equal(out[0], out[3])
    assert out[4] is not None and np.allclose(out[4][0], out[0][2], atol=1e-6)  # the same sentence, one vector
    assert sorted(counting.model.seen) == sorted(
        ["Do you hear me? Are you there?", "Do you hear me?", "Are you there?"]
    )
    assert counting.passages([None, ""]) == [None, None] and len(counting.model.seen) == 3  # no model call


def test_a_paraphrase_is_nearer_its_sentence_than_the_others(embedder: TextEmbedder) -> None:
    said = ["Do you hear me?", "It was the epoch of belief.", "I think that America do it very well."]
    vecs = np.stack([v[0] for v in embedder.passages(said)])  # type: ignore[index]
    for query, right in [("are you listening to me", 0), ("an age of faith", 1), ("the USA is doing fine", 2)]:
        assert int(np.argmax(vecs @ embedder.query(query))) == right, query


def test_repeated_queries_come_from_the_cache(embedder: TextEmbedder) -> None:
    counting = TextEmbedder(TextEmbedConfig(query_cache=2), model=Counting(embedder.model))
    a = counting.query("where is the exit")
    assert np.array_equal(counting.query(" where  is the exit "), a) and counting.model.seen == ["where is the exit"]
    counting.query("b")
    counting.query("c")  # the cache holds two: "where is the exit" was the least recently used
    counting.query("where is the exit")
    assert counting.model.seen.count("where is the exit") == 2


def test_models_are_labelled_by_name_and_revision_or_weights(tmp_path: Path) -> None:
    from operators.model_catalog import resolve

    assert model_id(TextEmbedConfig()) == MINILM
    local = tmp_path / "mine"
    import shutil

    shutil.copytree(resolve("all-MiniLM-L6-v2").path, local)
    label = model_id(TextEmbedConfig(model=str(local)))
    assert label.startswith("mine@sha256:") and label == model_id(TextEmbedConfig(model=str(local)))
    (local / "model.safetensors").write_bytes(b"other weights")
    assert model_id(TextEmbedConfig(model=str(local))) != label  # other weights, another label
    e5 = TextEmbedConfig(model="intfloat/multilingual-e5-small", revision="abc")
    assert e5.prefixes() == ("query: ", "passage: ")
    assert model_id(e5) == "intfloat/multilingual-e5-small@abc|q='query: '|p='passage: '"
    assert text_dim(e5) == 384 and text_dim(TextEmbedConfig(model="none")) == S.TEXT_DIM


def test_a_model_that_is_not_here_is_one_sentence_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSEARCH_OFFLINE", "1")
    with pytest.raises(MissingCheckpointError, match="not a local folder and downloads are off"):
        model_path(TextEmbedConfig(model="BAAI/bge-small-en-v1.5"))
    assert os.path.isdir(model_path(TextEmbedConfig()))  # the bundled copy needs no network


def test_the_writer_fills_each_text_rows_vectors_and_labels_them(embedder: TextEmbedder) -> None:
    fill = TextVectorFill(TextEmbedConfig(), embedder)
    speech = [
        {"utterance_id": "u0", "video_id": "v", "utterance_idx": 0, "start_s": 0.0, "end_s": 2.0,
         "text": "Hello there.", "words": [], "language": "en", "avg_logprob": -0.1, "no_speech_prob": 0.0},
        {"utterance_id": "u1", "video_id": "v", "utterance_idx": 1, "start_s": 2.0, "end_s": 3.0, "text": " ",
         "words": [], "language": "en", "avg_logprob": -0.1, "no_speech_prob": 0.0},
    ]  # fmt: skip
    fill(S.SPEECH, speech)
    assert speech[0][S.TEXT_MODEL] == MINILM and speech[0]["text_vector"].shape == (1, 384)
    assert speech[1]["text_vector"] is None and speech[1][S.TEXT_MODEL] is None
    table = to_arrow(speech, S.speech_schema())
    assert table.column("text_vector").null_count == 1
    segment = {"caption": None, "screen_text": "EXIT\nRoom 214", S.SPEECH_CONTEXT: None}
    fill(S.SEGMENTS, [segment])
    assert segment["caption_vector"] is None and segment["speech_vector"] is None
    assert segment["screen_text_vector"].shape == (3, 384) and segment[S.TEXT_MODEL] == MINILM
    frames = [{"frame_id": "f"}]
    fill(S.FRAMES, frames)  # frames have no text vectors: untouched
    assert frames == [{"frame_id": "f"}]


def test_the_text_model_is_part_of_the_pipeline_version() -> None:
    base = load_config("tiny")
    assert base.text_embed.model == "all-MiniLM-L6-v2"
    other = load_config("tiny", ["text_embed.model=BAAI/bge-small-en-v1.5"])
    prefixed = load_config("tiny", ["text_embed.query_prefix='query '"])
    faster = load_config("tiny", ["text_embed.batch_size=8", "text_embed.threads=2"])
    off = load_config("tiny", ["text_embed=none"])
    versions = {c.pipeline_version() for c in (base, other, prefixed, off)}
    assert len(versions) == 4 and faster.pipeline_version() == base.pipeline_version()
