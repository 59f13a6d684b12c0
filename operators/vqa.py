"""Visual question answering behind a registry (name -> builder): one RGB frame and a question in, ranked
answers out.

``vilt`` - single-stream: image patches and question tokens in one transformer (``ViltForQuestionAnswering``,
production checkpoint ``dandelin/vilt-b32-finetuned-vqa``). The answer is a classification over the fixed
answer vocabulary of the checkpoint (``config.id2label``, 3,129 VQAv2 answers); each answer's score is the
sigmoid of its logit, as the model was trained with a binary cross-entropy per answer.

``blip`` - the question cross-attends to ViT features and a text decoder generates the answer
(``BlipForQuestionAnswering``, ``Salesforce/blip-vqa-base``). The top-k answers are the beams of a beam
search; each score is exp of the beam's length-normalised log-probability (the geometric mean of its tokens'
probabilities).

``VqaConfig.checkpoint`` is a Hugging Face hub id (read from the local cache; downloaded only where a network
exists) or a local directory written by ``save_pretrained`` with the processor; unset, the model's production
checkpoint above. ``VqaConfig.architecture`` instead builds the model with random weights from the
transformers config given for it (tests and offline smoke runs; their answers carry no meaning), with a
character-level WordPiece vocabulary so that any question tokenizes.
"""

from __future__ import annotations

import os
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import model_validator

from operators import weights
from operators.base import Batch, Operator, StrictModel, objects
from operators.weights import Device, pick_device

#: Answers a randomly initialised ViLT classifies into (a few of VQAv2's most frequent answers).
RANDOM_ANSWERS = ("yes", "no", "1", "2", "3", "white", "black", "red", "blue", "green", "person", "dog", "none")
RANDOM_NOTICE = "NOTE: the VQA model has random weights; its answers carry no meaning."


class VqaConfig(StrictModel):
    """``vqa:`` in the config."""

    model: str = "vilt"  # a name in VQA_MODELS
    #: Hub id or ``save_pretrained`` directory (model + processor); None: the model's production checkpoint.
    checkpoint: str | None = None
    #: Random weights instead of a checkpoint: per model name, the transformers config to build (``ViltConfig`` /
    #: ``BlipConfig`` keyword arguments; ``{}`` is the released base architecture).
    architecture: dict[str, dict[str, Any]] | None = None
    answers: list[str] | None = None  # random ViLT only: its answer vocabulary (default RANDOM_ANSWERS)
    seed: int = 0  # random weights are drawn from this seed: the same model in every process
    device: Device = "auto"
    top_k: int = 5
    max_question_chars: int = 200
    max_answer_tokens: int = 10  # blip: generated answer length
    #: A stored thumbnail is used when one lies this close to the asked time; otherwise the frame is decoded.
    thumb_tolerance_s: float = 0.25
    decode_max_side: int = 640  # a decoded frame is scaled in the decoder to at most this (models resize anyway)
    decode_timeout_s: float = 60.0
    local_files_only: bool = False  # never touch the network; also HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _check(self) -> VqaConfig:
        if self.model not in VQA_MODELS:
            raise ValueError(f"vqa.model '{self.model}' is not one of {sorted(VQA_MODELS)}")
        if self.checkpoint is not None and self.architecture is not None:
            raise ValueError("vqa.checkpoint and vqa.architecture exclude each other (weights or a random build)")
        if self.architecture is not None and self.model not in self.architecture:
            raise ValueError(f"vqa.architecture (random weights) has no entry for model '{self.model}'")
        if not 1 <= self.top_k <= 50 or self.max_question_chars < 1 or self.max_answer_tokens < 1:
            raise ValueError("vqa.top_k must be 1-50; max_question_chars and max_answer_tokens positive")
        return self

    @property
    def random_weights(self) -> bool:
        return self.architecture is not None


@dataclass(frozen=True)
class Answer:
    answer: str
    score: float


class QuestionError(ValueError):
    """A question the model cannot take (empty, or longer than its text positions); safe to show."""


def load_checkpoint(name: str, ckpt: str, cfg: VqaConfig, model_cls: Any, processor_cls: Any) -> tuple[Any, Any]:
    """(model, processor) with ``from_pretrained`` (``operators/weights.py``: the local cache first, a download
    only where a network exists); otherwise ``MissingCheckpointError`` with one actionable sentence."""

    def load(path: str, local_only: bool) -> tuple[Any, Any]:
        processor = processor_cls.from_pretrained(path, local_files_only=local_only, cache_dir=cfg.cache_dir)
        model = model_cls.from_pretrained(path, local_files_only=local_only, cache_dir=cfg.cache_dir)
        return model, processor

    return weights.load_checkpoint(
        f"VQA model '{name}'",
        "vqa.checkpoint",
        ckpt,
        load,
        holds=f"a saved {model_cls.__name__} with its processor",
        local_files_only=cfg.local_files_only,
        cache_dir=cfg.cache_dir,
    )


def char_tokenizer() -> Any:
    """A WordPiece tokenizer whose vocabulary is single characters (and their ``##`` continuations): every
    ASCII question tokenizes without unknown tokens. Special tokens take ids 0-4 ([PAD] [UNK] [CLS] [SEP]
    [MASK])."""
    from transformers import BertTokenizer

    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *string.punctuation, *(f"##{c}" for c in chars)]
    with tempfile.TemporaryDirectory(prefix="vidsearch-vqa-vocab-") as folder:
        path = os.path.join(folder, "vocab.txt")
        with open(path, "w") as f:
            f.write("\n".join(vocab) + "\n")
        return BertTokenizer(path)  # positional: `vocab` in transformers 5, `vocab_file` in 4


class VqaModel(Operator):
    """Answers questions about frames. Batch form: reads ``frame`` (uint8 HxWx3) and ``question``, writes
    ``answers`` (top-k answer strings, best first) and ``scores`` (their scores in [0, 1])."""

    name: ClassVar[str]
    production: ClassVar[str]  # the checkpoint used when vqa.checkpoint is unset
    model_class: ClassVar[str]
    processor_class: ClassVar[str]

    def __init__(self, cfg: VqaConfig) -> None:
        self.cfg = cfg
        self.model: Any = None
        self.processor: Any = None
        self.device = "cpu"

    @property
    def checkpoint(self) -> str | None:
        return None if self.cfg.random_weights else self.cfg.checkpoint or self.production

    def setup(self) -> None:
        if self.model is not None:
            return
        import torch
        import transformers

        if self.cfg.random_weights:
            torch.manual_seed(self.cfg.seed)
            model, self.processor = self.build_random(dict((self.cfg.architecture or {})[self.name]))
        else:
            model_cls = getattr(transformers, self.model_class)
            processor_cls = getattr(transformers, self.processor_class)
            model, self.processor = load_checkpoint(self.name, str(self.checkpoint), self.cfg, model_cls, processor_cls)
        self.device = pick_device(self.cfg.device)
        self.model = model.to(self.device).eval()

    def teardown(self) -> None:
        self.model = self.processor = None

    def __call__(self, batch: Batch) -> Batch:
        found = [self.answer(f, q) for f, q in zip(batch["frame"], batch["question"], strict=True)]
        return {
            **batch,
            "answers": objects([a.answer for a in ans] for ans in found),
            "scores": objects(np.array([a.score for a in ans], np.float32) for ans in found),
        }

    def answer(self, frame: npt.NDArray[np.uint8], question: str, top_k: int | None = None) -> list[Answer]:
        """The ``top_k`` (default ``vqa.top_k``) best answers to ``question`` about the RGB ``frame``."""
        import torch
        from PIL import Image

        assert self.model is not None, "call setup() first"
        if not question.strip():
            raise QuestionError("the question is empty")
        n_tokens = len(self.processor.tokenizer(question)["input_ids"])
        if n_tokens > self.max_text_tokens():
            raise QuestionError(
                f"the question is {n_tokens} tokens long; {self.name} reads at most {self.max_text_tokens()}"
            )
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        inputs = self.processor(images=image, text=question, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return self.rank(inputs, top_k or self.cfg.top_k)

    def max_text_tokens(self) -> int:
        raise NotImplementedError

    def build_random(self, arch: dict[str, Any]) -> tuple[Any, Any]:
        raise NotImplementedError

    def rank(self, inputs: Any, top_k: int) -> list[Answer]:
        raise NotImplementedError


class ViltVqa(VqaModel):
    """ViLT: one transformer over patches and tokens, a classifier over the answer vocabulary."""

    name = "vilt"
    production = "dandelin/vilt-b32-finetuned-vqa"
    model_class = "ViltForQuestionAnswering"
    processor_class = "ViltProcessor"

    def max_text_tokens(self) -> int:
        return int(self.model.config.max_position_embeddings)  # 40 in the released model

    def build_random(self, arch: dict[str, Any]) -> tuple[Any, Any]:
        from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor, ViltProcessor

        tok = char_tokenizer()
        answers = list(self.cfg.answers or RANDOM_ANSWERS)
        labels: dict[str, Any] = {
            "num_labels": len(answers),
            "id2label": dict(enumerate(answers)),
            "label2id": {a: i for i, a in enumerate(answers)},
        }
        config: Any = ViltConfig(**{**arch, "vocab_size": len(tok), **labels})
        size: dict[str, Any] = {"shortest_edge": config.image_size}
        return ViltForQuestionAnswering(config), ViltProcessor(ViltImageProcessor(size=size), tok)

    def rank(self, inputs: Any, top_k: int) -> list[Answer]:
        probs = self.model(**inputs).logits[0].float().sigmoid()
        top = probs.topk(min(top_k, probs.numel()))
        labels = self.model.config.id2label
        return [Answer(str(labels[int(i)]), float(p)) for p, i in zip(top.values, top.indices, strict=True)]


class BlipVqa(VqaModel):
    """BLIP: text encoder cross-attending to ViT features, answer generated by the text decoder (beam search)."""

    name = "blip"
    production = "Salesforce/blip-vqa-base"
    model_class = "BlipForQuestionAnswering"
    processor_class = "BlipProcessor"

    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def build_random(self, arch: dict[str, Any]) -> tuple[Any, Any]:
        from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

        tok = char_tokenizer()
        ids = {"vocab_size": len(tok), "pad_token_id": 0, "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3}
        config: Any = BlipConfig(**{**arch, "text_config": {**arch.get("text_config", {}), **ids}})
        side = config.vision_config.image_size
        processor = BlipProcessor(BlipImageProcessor(size={"height": side, "width": side}), tok)
        return BlipForQuestionAnswering(config), processor

    def rank(self, inputs: Any, top_k: int) -> list[Answer]:
        beams = max(top_k, 3)
        out = self.model.generate(
            **inputs,
            num_beams=beams,
            num_return_sequences=beams,
            max_new_tokens=self.cfg.max_answer_tokens,
            output_scores=True,
            return_dict_in_generate=True,
        )
        texts = self.processor.batch_decode(out.sequences, skip_special_tokens=True)
        found: dict[str, float] = {}
        for text, logp in zip(texts, out.sequences_scores.float().exp().tolist(), strict=True):
            found.setdefault(text.strip(), float(logp))  # beams are best first; keep each answer's best
        return [Answer(t, s) for t, s in list(found.items())[:top_k]]


VQA_MODELS: dict[str, Callable[[VqaConfig], VqaModel]] = {"vilt": ViltVqa, "blip": BlipVqa}


def build_vqa(cfg: VqaConfig) -> VqaModel:
    return VQA_MODELS[cfg.model](cfg)
