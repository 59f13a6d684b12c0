"""VQA operators: ViLT and BLIP question answering loaded through the production path (``from_pretrained``) from
tiny random checkpoints the tests save themselves, checked against the models called directly; the random
build of the tiny config; the missing-checkpoint sentences; the config section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from operators.base import MissingCheckpointError
from operators.vqa import QuestionError, VqaConfig, build_vqa
from tests.helpers import tiny_config

WORDS = "what colour is the a of flower dog how many are there ?"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]
ANSWERS = ["yes", "no", "2", "red", "white", "flower", "dog"]
SMALL: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}


def save_tiny_vqa(folder: Path) -> dict[str, Path]:
    """Tiny random ViLT-VQA (answer vocabulary in ``config.id2label``) and BLIP-VQA models with their
    processors, saved with ``save_pretrained``. A large ``initializer_range`` makes different images give
    clearly different outputs."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
        ViltConfig,
        ViltForQuestionAnswering,
        ViltImageProcessor,
        ViltProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    vilt = ViltForQuestionAnswering(
        ViltConfig(
            vocab_size=len(VOCAB),
            image_size=64,
            patch_size=16,
            max_position_embeddings=40,
            initializer_range=0.5,
            num_labels=len(ANSWERS),
            id2label=dict(enumerate(ANSWERS)),
            label2id={a: i for i, a in enumerate(ANSWERS)},
            **SMALL,
        )
    )
    ids = {"vocab_size": len(VOCAB), "pad_token_id": 0, "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3}
    blip = BlipForQuestionAnswering(
        BlipConfig(
            text_config={**SMALL, **ids, "max_position_embeddings": 64, "initializer_range": 0.5},
            vision_config={**SMALL, "image_size": 64, "patch_size": 16, "initializer_range": 0.5},
            initializer_range=0.5,
        )
    )
    out = {}
    for name, model, processor in (
        ("vilt", vilt, ViltProcessor(ViltImageProcessor(size={"shortest_edge": 64}), tok)),
        ("blip", blip, BlipProcessor(BlipImageProcessor(size={"height": 64, "width": 64}), tok)),
    ):
        out[name] = folder / name
        model.save_pretrained(out[name])
        processor.save_pretrained(out[name])
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_vqa(tmp_path_factory.mktemp("vqa-ckpt"))


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    gradient = np.linspace(0, 255, 96 * 128 * 3).reshape(96, 128, 3).astype(np.uint8)
    return [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8), gradient]


def loaded(name: str, ckpt: Path, **options: Any):  # type: ignore[no-untyped-def]
    model = build_vqa(VqaConfig(model=name, checkpoint=str(ckpt), device="cpu", **options))
    model.setup()
    return model


def test_vilt_answers_are_its_top_labels_by_sigmoid(checkpoints) -> None:
    from transformers import ViltForQuestionAnswering, ViltProcessor

    vqa = loaded("vilt", checkpoints["vilt"], top_k=3)
    assert vqa.checkpoint == str(checkpoints["vilt"])
    ref_model = ViltForQuestionAnswering.from_pretrained(checkpoints["vilt"]).eval()
    ref_proc = ViltProcessor.from_pretrained(checkpoints["vilt"])
    tops = []
    for image in images():
        got = vqa.answer(image, "what colour is the flower ?")
        with torch.no_grad():
            inputs = ref_proc(images=Image.fromarray(image), text="what colour is the flower ?", return_tensors="pt")
            probs = torch.sigmoid(ref_model(**inputs).logits[0]).numpy()
        order = np.argsort(-probs)[:3]
        assert [a.answer for a in got] == [ANSWERS[i] for i in order]  # labels from the saved config.id2label
        np.testing.assert_allclose([a.score for a in got], probs[order], rtol=1e-5)
        assert all(0 < a.score < 1 for a in got) and got[0].score >= got[1].score >= got[2].score
        tops.append([a.score for a in got])
    assert not np.allclose(tops[0], tops[1])  # the image matters
    batch = vqa({"frame": np.array(images(), dtype=object), "question": np.array(["how many dog ?"] * 2)})
    assert [len(a) for a in batch["answers"]] == [3, 3]
    assert list(batch["answers"][1]) == [a.answer for a in vqa.answer(images()[1], "how many dog ?")]


def test_blip_answers_are_its_beams(checkpoints) -> None:
    from transformers import BlipForQuestionAnswering, BlipProcessor

    vqa = loaded("blip", checkpoints["blip"], top_k=3, max_answer_tokens=4)
    ref_model = BlipForQuestionAnswering.from_pretrained(checkpoints["blip"]).eval()
    ref_proc = BlipProcessor.from_pretrained(checkpoints["blip"])
    image = images()[0]
    got = vqa.answer(image, "how many dog are there ?")
    with torch.no_grad():
        inputs = ref_proc(images=Image.fromarray(image), text="how many dog are there ?", return_tensors="pt")
        beams = {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 4}
        out = ref_model.generate(**inputs, **beams, output_scores=True, return_dict_in_generate=True)
    texts = [t.strip() for t in ref_proc.batch_decode(out.sequences, skip_special_tokens=True)]
    want: dict[str, float] = {}
    for text, s in zip(texts, out.sequences_scores.exp().tolist(), strict=True):
        want.setdefault(text, s)
    assert [a.answer for a in got] == list(want)[:3]
    np.testing.assert_allclose([a.score for a in got], list(want.values())[:3], rtol=1e-5)
    assert all(0 < a.score <= 1 for a in got)
    assert all(set(a.answer.split()) <= set(VOCAB) | {""} for a in got)  # words of the saved vocabulary


def test_questions_the_model_cannot_take(checkpoints) -> None:
    vqa = loaded("vilt", checkpoints["vilt"])
    with pytest.raises(QuestionError, match="empty"):
        vqa.answer(images()[0], "   ")
    with pytest.raises(QuestionError, match=r"is 52 tokens long; vilt reads at most 40"):
        vqa.answer(images()[0], " ".join(["flower"] * 50))


def test_the_tiny_config_builds_the_same_random_models_every_time() -> None:
    cfg = tiny_config("/unused").vqa
    assert cfg.random_weights and cfg.model == "vilt"
    frame = images()[1]
    for name in ("vilt", "blip"):
        a, b = (build_vqa(cfg.model_copy(update={"model": name})) for _ in range(2))
        a.setup()
        b.setup()
        assert a.checkpoint is None
        assert type(a.model).__name__ == {"vilt": "ViltForQuestionAnswering", "blip": "BlipForQuestionAnswering"}[name]
        assert sum(p.numel() for p in a.model.parameters()) < 2_000_000  # tiny, not the base architecture
        got = a.answer(frame, "What colour is the flower?")
        assert got == b.answer(frame, "What colour is the flower?")
        assert 1 <= len(got) <= 5
        if name == "vilt":
            assert len(got) == 5 and set(a.model.config.id2label.values()) >= {x.answer for x in got}


def test_missing_checkpoints_say_what_to_do(tmp_path, monkeypatch) -> None:
    with pytest.raises(MissingCheckpointError, match=r"does not exist: set vqa.checkpoint to a directory"):
        build_vqa(VqaConfig(checkpoint=str(tmp_path / "nowhere"))).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingCheckpointError, match=r"does not hold a saved ViltForQuestionAnswering"):
        build_vqa(VqaConfig(checkpoint=str(tmp_path / "empty"))).setup()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingCheckpointError, match=r"'Salesforce/blip-vqa-base' is not in the Hugging Face cache"):
        build_vqa(VqaConfig(model="blip", cache_dir=str(tmp_path / "cache"))).setup()


def test_config_section_is_typed() -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    assert load_config("default").vqa.model == "vilt" and load_config("default").vqa.checkpoint is None
    assert build_vqa(load_config("default").vqa).checkpoint == "dandelin/vilt-b32-finetuned-vqa"
    assert build_vqa(VqaConfig(model="blip")).checkpoint == "Salesforce/blip-vqa-base"
    with pytest.raises(ConfigError, match=r"vqa.colour: unknown key"):
        load_config("tiny", ["vqa.colour=red"])
    with pytest.raises(ConfigError, match=r"not one of \['blip', 'vilt'\]"):
        load_config("tiny", ["vqa.model=gpt"])
    with pytest.raises(ConfigError, match=r"exclude each other"):
        load_config("tiny", ["vqa.checkpoint=/x"])
    assert load_config("tiny", ["vqa.architecture=null", "vqa.checkpoint=/x"]).vqa.checkpoint == "/x"
