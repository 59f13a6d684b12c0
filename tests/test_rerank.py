"""Stage-2 re-rankers: the attention maths, ViLT and BLIP-ITM loaded through the production path from tiny
random checkpoints the tests save themselves, the missing-checkpoint sentence, and re-ranking end to end on
the indexed sample videos."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from operators.base import MissingCheckpointError
from operators.rerank import (
    AttentionReranker,
    PairReranker,
    Query,
    RerankInput,
    build_reranker,
    scaled_dot_product_attention,
)
from pipeline.search.searcher import Searcher, load_image
from tests.helpers import tiny_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"a the of person dog cat flower book car red on in".split()]


def _tokenizer(folder: Path):
    from transformers import BertTokenizer

    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(vocab_file))  # positional: `vocab` in transformers 5, `vocab_file` in 4


def save_tiny_checkpoints(folder: Path) -> dict[str, Path]:
    """Tiny random ViLT-retrieval and BLIP-ITM models with their processors, saved with ``save_pretrained``.

    A large ``initializer_range`` makes random models give clearly different scores to different images.
    """
    from transformers import (
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
        ViltConfig,
        ViltForImageAndTextRetrieval,
        ViltImageProcessor,
        ViltProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(folder)
    small: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
    }
    torch.manual_seed(0)
    vilt = ViltForImageAndTextRetrieval(
        ViltConfig(
            vocab_size=len(VOCAB),
            image_size=64,
            patch_size=16,
            max_position_embeddings=40,
            initializer_range=0.5,
            **small,
        )
    )
    vilt_processor = ViltProcessor(ViltImageProcessor(size={"shortest_edge": 64}), tok)
    text = {"vocab_size": len(VOCAB), "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 2}
    blip = BlipForImageTextRetrieval(
        BlipConfig(
            text_config={**small, **text, "sep_token_id": 3, "initializer_range": 0.5},
            vision_config={**small, "image_size": 64, "patch_size": 16, "initializer_range": 0.5},
            projection_dim=16,
            image_text_hidden_size=16,
            initializer_range=0.5,
        )
    )
    blip_processor = BlipProcessor(BlipImageProcessor(size={"height": 64, "width": 64}), tok)
    out = {}
    for name, model, processor in (("vilt", vilt, vilt_processor), ("blip-itm", blip, blip_processor)):
        out[name] = folder / name
        model.save_pretrained(out[name])
        processor.save_pretrained(out[name])
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("rerank-ckpt"))


# -- attention -------------------------------------------------------------------------------------------------

Q = [[0.1, 0.2, -0.1, 0.3], [0.4, -0.3, 0.2, 0.1], [-0.2, 0.1, 0.4, -0.3]]
K = [[0.2, 0.1, -0.3, 0.4], [-0.1, 0.3, 0.2, 0.1], [0.4, -0.2, 0.1, -0.1], [0.3, 0.1, -0.2, 0.4], [-0.2, 0.3, 0.1, 0.2]]
V = [[0.3, -0.1, 0.2, 0.4], [0.1, 0.2, -0.3, 0.1], [-0.2, 0.4, 0.1, 0.3], [0.2, -0.3, 0.1, -0.2], [0.4, 0.1, 0.2, 0.3]]


def test_scaled_dot_product_attention_matches_the_worked_example() -> None:
    out, weights = scaled_dot_product_attention(np.array(Q), np.array(K), np.array(V))

    # Independent computation, one element at a time: w_ij = exp(q_i.k_j / 2) / sum_j exp(...), out = w V.
    ref_w = np.zeros((3, 5))
    for i in range(3):
        logits = [sum(Q[i][d] * K[j][d] for d in range(4)) / math.sqrt(4) for j in range(5)]
        z = sum(math.exp(x) for x in logits)
        ref_w[i] = [math.exp(x) / z for x in logits]
    ref_out = np.array([[sum(ref_w[i][j] * V[j][d] for j in range(5)) for d in range(4)] for i in range(3)])

    np.testing.assert_allclose(weights, ref_w, rtol=1e-12)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out, weights @ np.array(V), rtol=1e-12)
    # By hand, the first query's logits: q0.k_j / sqrt(4) = [0.19, 0.06, -0.04, 0.19, 0.09] / 2.
    np.testing.assert_allclose(np.log(weights[0] / weights[0, 0]), (np.array([19, 6, -4, 19, 9]) - 19) / 200)
    q_t, k_t, v_t = (torch.tensor(x, dtype=torch.float64)[None] for x in (Q, K, V))
    ref_torch = torch.nn.functional.scaled_dot_product_attention(q_t, k_t, v_t)[0]
    np.testing.assert_allclose(out, ref_torch.numpy(), rtol=1e-10)


def test_attention_reranker_prefers_the_candidate_whose_context_matches_the_query() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal(8)
    q /= np.linalg.norm(q)
    near = np.stack([q + 0.05 * rng.standard_normal(8) for _ in range(3)])
    far = rng.standard_normal((3, 8))
    rr = build_reranker("attention")
    assert isinstance(rr, AttentionReranker)
    query = Query(q.astype(np.float32), q[None].astype(np.float32), text="x")
    empty = np.zeros((0, 8), np.float32)
    s_far, s_near, s_empty = rr.score(
        query,
        [RerankInput(0.9, far.astype(np.float32)), RerankInput(0.1, near.astype(np.float32)), RerankInput(0.42, empty)],
    )
    assert s_near > 0.95 > s_far
    assert s_empty == 0.42  # nothing to attend over: the stage-1 score stands

    # One matching region among many unrelated ones: attention picks it out, where a plain mean would not.
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    mixed = unit(np.vstack([near[:1], rng.standard_normal((12, 8))]))
    (s_mixed,) = rr.score(query, [RerankInput(0.0, mixed.astype(np.float32))])
    assert s_mixed > 0.95 and float(unit(mixed.mean(axis=0)) @ q) < 0.6


def test_production_config_names_valid_reranker_options() -> None:
    from pipeline.config import load_config

    options = load_config("default").search.rerankers
    assert set(options) == {"vilt", "blip-itm"}
    for name, opts in options.items():
        rr = build_reranker(name, opts)  # validated, nothing loaded yet
        assert isinstance(rr, PairReranker)
        assert rr.cfg.checkpoint == opts["checkpoint"] and rr.model is None


def test_unknown_reranker_and_unknown_options_are_errors(checkpoints) -> None:
    with pytest.raises(ValueError, match="unknown re-ranker 'nope'"):
        build_reranker("nope")
    with pytest.raises(ValueError, match="search.rerankers.vilt"):
        build_reranker("vilt", {"checkpoint": str(checkpoints["vilt"]), "chekpoint": "x"})
    with pytest.raises(ValueError, match="search.rerankers.attention"):
        build_reranker("attention", {"temprature": 2})


# -- ViLT / BLIP-ITM ---------------------------------------------------------------------------------------------


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [
        np.zeros((48, 64, 3), np.uint8),
        np.full((60, 80, 3), 255, np.uint8),
        rng.integers(0, 255, (90, 120, 3), dtype=np.uint8),
    ]


def _direct_scores(name: str, folder: Path, text: str, images: list[np.ndarray]) -> np.ndarray:
    """Reference scores straight from transformers, independent of the re-ranker's own code."""
    from PIL import Image
    from transformers import BlipForImageTextRetrieval, BlipProcessor, ViltForImageAndTextRetrieval, ViltProcessor

    pil = [Image.fromarray(im) for im in images]
    with torch.no_grad():
        if name == "vilt":
            model = ViltForImageAndTextRetrieval.from_pretrained(folder).eval()
            inputs = ViltProcessor.from_pretrained(folder)(images=pil, text=[text] * len(pil), return_tensors="pt")
            return torch.sigmoid(model(**inputs).logits[:, 0]).numpy()
        model = BlipForImageTextRetrieval.from_pretrained(folder).eval()
        inputs = BlipProcessor.from_pretrained(folder)(images=pil, text=[text] * len(pil), return_tensors="pt")
        return model(**inputs).itm_score.softmax(-1)[:, 1].numpy()


@pytest.mark.parametrize("name", ["vilt", "blip-itm"])
def test_pair_reranker_scores_text_against_keyframes(name, checkpoints) -> None:
    rr = build_reranker(name, {"checkpoint": str(checkpoints[name]), "device": "cpu", "batch_size": 2})
    rr.setup()
    images = _images()
    loads: list[int] = []

    def loader(i: int):
        def load():
            loads.append(i)
            return images[i]

        return load

    cands = [RerankInput(0.1 * i, np.zeros((0, 4), np.float32), keyframe=loader(i)) for i in range(3)]
    cands.append(RerankInput(0.77, np.zeros((0, 4), np.float32), keyframe=lambda: None))  # no thumbnail
    query = Query(np.zeros(4, np.float32), np.zeros((1, 4), np.float32), text="a red flower")
    scores = rr.score(query, cands)

    expected = _direct_scores(name, checkpoints[name], "a red flower", images)
    np.testing.assert_allclose(scores[:3], expected, rtol=1e-4, atol=1e-6)
    assert max(expected) - min(expected) > 1e-3  # the images really are told apart
    assert all(0.0 <= s <= 1.0 for s in scores[:3])
    assert scores[3] == 0.77  # no keyframe: the stage-1 score stands
    assert sorted(loads) == [0, 1, 2]  # each keyframe loaded once

    image_query = Query(np.zeros(4, np.float32), np.zeros((1, 4), np.float32), image=images[0])
    assert rr.score(image_query, cands) == [0.0, 0.1, 0.2, 0.77]  # no text to match: stage-1 order kept


def test_missing_checkpoints_raise_one_sentence_naming_the_key(tmp_path, monkeypatch) -> None:
    for options, needle in [
        ({}, "has no checkpoint: set search.rerankers.vilt.checkpoint"),
        ({"checkpoint": str(tmp_path / "nowhere")}, "checkpoint directory '.*nowhere' does not exist"),
    ]:
        rr = build_reranker("vilt", options)
        with pytest.raises(MissingCheckpointError, match=needle):
            rr.setup()

    (tmp_path / "empty").mkdir()
    rr = build_reranker("blip-itm", {"checkpoint": str(tmp_path / "empty")})
    with pytest.raises(MissingCheckpointError, match="does not hold a saved BlipForImageTextRetrieval"):
        rr.setup()

    # A hub id that is not cached, with networking switched off: fails at once, saying how to supply it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rr = build_reranker("vilt", {"checkpoint": "dandelin/vilt-b32-finetuned-coco", "cache_dir": str(tmp_path)})
    with pytest.raises(MissingCheckpointError) as err:
        rr.setup()
    msg = str(err.value)
    assert "'dandelin/vilt-b32-finetuned-coco' is not in the Hugging Face cache" in msg
    assert "offline mode is on" in msg and "search.rerankers.vilt.checkpoint" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence


# -- end to end on the indexed sample videos ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vilt", "blip-itm"])
def test_rerank_end_to_end_on_the_tiny_index(name, indexed_db, checkpoints) -> None:
    cfg, _ = indexed_db
    cfg = tiny_config(cfg.db.path, f"search.rerankers.{name}.checkpoint={checkpoints[name]}")
    searcher = Searcher(cfg.db.path, cfg)
    plain = searcher.search(text="a red flower", k=50, level="frames", rerank=None)
    results = searcher.search(text="a red flower", k=50, level="frames", rerank=name)

    assert {r.id for r in results} == {r.id for r in plain}  # k covers every frame: same set, re-ordered
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    thumbs = [load_image(searcher.thumbnail(r.thumb_id)) for r in results]
    model_scores = _direct_scores(name, checkpoints[name], "a red flower", thumbs)
    w = cfg.search.rerank_weight
    expected = [(1 - w) * r.stage1_score + w * float(s) for r, s in zip(results, model_scores, strict=True)]
    np.testing.assert_allclose([r.score for r in results], expected, rtol=1e-4, atol=1e-6)
    assert len({round(float(s), 4) for s in model_scores}) > 1  # different keyframes, different scores
