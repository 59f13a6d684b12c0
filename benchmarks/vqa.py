"""Cost of one question (``run_pipeline.py ask``, ``POST /api/ask``) on CPU: the VQA models at production size,
and getting the frame (a stored thumbnail, or decoding at ``t`` from the original video).

The production architectures are built with random weights and saved with ``save_pretrained``, then loaded
through the same path as a real checkpoint (``vqa.checkpoint``): ViLT-B/32 (``ViltConfig()``: 12 layers, 768
wide, 384 px shortest edge, patches of 32, 3,129 answers like ``dandelin/vilt-b32-finetuned-vqa``) and BLIP-VQA
base (``BlipConfig()``: ViT-B/16 at 384x384, BERT-base question encoder and answer decoder, like
``Salesforce/blip-vqa-base``). Random weights cost the same compute as trained ones, with one exception: BLIP
generates until its end token or ``max_answer_tokens``, and random weights never stop early, so BLIP is timed
at 10 answer tokens (an upper bound, vqa.max_answer_tokens' default) and at 3 (a typical VQAv2 answer: one or
two words and the end token). The tokenizer is a WordPiece vocabulary of the questions' words, so a question
is as many tokens as with the real vocabulary.

Frames are real: flower.webm (960x540) decoded at 640x360, as ``ask`` decodes; the models resize them.

    python benchmarks/vqa.py                      # both models, 1 and 2 torch threads
    python benchmarks/vqa.py --models vilt --questions 10
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import clip, header, pct, table, timed

QUESTIONS = [
    "what color is the flower",
    "is there a person in the picture",
    "how many flowers are there",
    "what is in the background",
    "is it raining",
    "what is the weather like",
]


def save_production_random(folder: Path) -> dict[str, str]:
    """ViLT-VQA and BLIP-VQA at the released base sizes with random weights, saved with their processors."""
    import torch
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
    words = sorted({w for q in QUESTIONS for w in q.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    answers = [f"answer {i}" for i in range(3129)]  # the fine-tuned checkpoint's head size
    vilt_cfg = ViltConfig(num_labels=len(answers), id2label=dict(enumerate(answers)))
    models: dict[str, tuple[Any, Any]] = {
        "vilt": (ViltForQuestionAnswering(vilt_cfg), ViltProcessor(ViltImageProcessor(), tok)),  # 384 shortest edge
        "blip": (
            BlipForQuestionAnswering(BlipConfig()),
            BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tok),
        ),
    }
    out = {}
    for name, (model, processor) in models.items():
        out[name] = str(folder / name)
        model.save_pretrained(out[name])
        processor.save_pretrained(out[name])
        print(f"# {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters", flush=True)
    return out


def time_frames(path: str, thumbs: list[bytes], n: int) -> list[dict[str, object]]:
    """Getting the frame: JPEG thumbnail decode vs decoding at t from the original (probe + seek + decode)."""
    from operators.vqa import VqaConfig
    from pipeline.search.ask import decode_frame
    from pipeline.search.searcher import load_image

    rows = []
    cfg = VqaConfig()
    for name, fn in (
        ("stored thumbnail (JPEG decode)", lambda i: load_image(thumbs[i % len(thumbs)])),
        ("decoded at t from the video", lambda i: decode_frame(path, 0.37 + (i % 9) * 0.5, cfg)),
    ):
        fn(0)
        wall, cpu = timed(fn, n)
        rows.append({"step": name, "n": n, "wall p50 ms": pct(wall, 50), "cpu p50 ms": pct(cpu, 50)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vilt", "blip"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch intra-op threads")
    ap.add_argument("--questions", type=int, default=12, help="timed questions per setting (after 2 warm-up)")
    args = ap.parse_args()
    header("VQA: cost of one question on CPU (production architectures, random weights)")

    import torch

    from operators.decode import encode_jpeg
    from operators.vqa import VqaConfig, build_vqa
    from pipeline.search.ask import decode_frame

    path = clip("mdn/flower.webm")
    images = [decode_frame(path, t, VqaConfig())[1] for t in (0.5, 1.5, 2.5, 3.5, 4.5)]
    thumbs = [encode_jpeg(f, 320, 80) for f in images]  # as stored with decode.thumb_side 320 (default config)
    work = Path(tempfile.mkdtemp(prefix="vidsearch-vqa-"))
    try:
        ckpts = save_production_random(work)
        rows: list[dict[str, object]] = []
        settings = [(m, k) for m in args.models for k in ((10, 3) if m == "blip" else (10,))]
        for name, max_tokens in settings:
            cfg = VqaConfig(model=name, checkpoint=ckpts[name], device="cpu", max_answer_tokens=max_tokens)
            vqa = build_vqa(cfg)
            t0, c0 = time.perf_counter(), time.process_time()
            vqa.setup()
            load = (time.perf_counter() - t0, time.process_time() - c0)
            for threads in args.threads:
                torch.set_num_threads(threads)
                for i in range(2):
                    vqa.answer(images[i], QUESTIONS[i])
                wall, cpu = timed(
                    lambda i, vqa=vqa: vqa.answer(images[i % len(images)], QUESTIONS[i % len(QUESTIONS)]),
                    args.questions,
                )
                rows.append(
                    {
                        "model": name if name == "vilt" else f"blip ({max_tokens} answer tokens)",
                        "threads": threads,
                        "questions": len(wall),
                        "wall p50 ms": pct(wall, 50),
                        "wall p95 ms": pct(wall, 95),
                        "cpu p50 ms": pct(cpu, 50),  # CPU time of this process, all threads
                        "load s (wall/cpu)": f"{load[0]:.1f}/{load[1]:.1f}",
                    }
                )
                print(table(rows[-1:], floatfmt=".0f").splitlines()[-1], flush=True)
            vqa.teardown()
        print()
        print(table(rows, floatfmt=".0f"))
        torch.set_num_threads(1)
        print()
        print(table(time_frames(path, thumbs, args.questions), floatfmt=".1f"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
