"""Sentence-embedding cost: CPU milliseconds per embedded row and per query of the default text embedder
(all-MiniLM-L6-v2 from the pinned wheel, one torch thread), and its share of the pipeline's CPU on
speech-heavy video.

Rows are the real ones of the Dickens reading muxed into a real clip (built with ffmpeg in a temporary folder):
its utterances as the default config's Whisper writes them, and each 4 s segment's speech context (the whole
utterances it overlaps, ``SegmentWords.around``), embedded as the assembler does (one batch per table flush; a
text as its whole and its sentences, each piece once per video: the contexts reuse the utterances' sentences).
Queries: distinct short sentences, each embedded once (uncached), then again (cached). Share: the embedding CPU
/ (the other stages of the default config on the same clip, measured in the same run as
``benchmarks/speech.py --share`` does: ``realtime.stage_cpu`` with every stage, plus speech, plus the
embedding). CPU time is ``time.process_time`` of this process.

    python benchmarks/text_embed.py [--repeat 3] [--export-cache /tmp/exports]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import header, table

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models come from the pinned wheels; never the hub

QUERIES = [
    "are you listening to me", "an age of faith and of doubt", "the United States handles it well",
    "a man opens a car door", "where is the exit", "the loudest experts", "heading straight for paradise",
    "trains leaving from track nine", "the river crossing opens again", "a terrible period to live through",
    "optimism in the warm months", "we had everything", "the fastest you may drive here", "a dog on a beach",
    "someone is speaking about the weather", "the meeting starts at noon",
]  # fmt: skip


def main() -> None:
    import torch
    from realtime import stage_cpu
    from speech import inputs

    from operators.speech import Transcribe
    from operators.text_embed import TextEmbedder
    from operators.transcript import SegmentWords
    from pipeline.config import load_config

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--export-cache")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = [f"{s}.export_cache={args.export_cache}" for s in ("encoder", "detect") if args.export_cache]
    cfg = load_config("default", ["encoder.pretrained=null", "encoder.device=cpu", "detect.device=cpu", *cache])
    header(f"sentence embeddings ({cfg.text_embed.model}), one thread: CPU per row, per query, share of the pipeline")
    embedder = TextEmbedder(cfg.text_embed)
    c = time.process_time()
    embedder.setup()
    load_s = time.process_time() - c
    with tempfile.TemporaryDirectory() as tmp:
        _, muxed = inputs(Path(tmp))[1]
        visual = stage_cpu(cfg, [muxed], every_stage=True)
        speech = Transcribe(cfg.speech.model_copy(update={"cpu_threads": 1}))
        speech.setup()
        c = time.process_time()
        utterances = speech.utterances(muxed)
        speech_cpu = time.process_time() - c
    video_s = visual["video_s"]
    spoken = SegmentWords(utterances)
    window = cfg.segments.window_s
    contexts = [spoken.around(i * window, (i + 1) * window) for i in range(int(video_s // window) + 1)]
    texts = [u["text"] for u in utterances]
    embedder.passages(texts[:2])  # warm-up
    c = time.process_time()
    for _ in range(args.repeat):
        embedder._pieces.clear()  # each repeat as a new video: nothing of it embedded before
        embedder.passages(texts)
        embedder.passages(contexts)
    embed_cpu = (time.process_time() - c) / args.repeat
    rows_embedded = len(set(texts)) + len({" ".join(x.split()) for x in contexts if x})
    c = time.process_time()
    for q in QUERIES:
        embedder.query(q)
    query_ms = 1000 * (time.process_time() - c) / len(QUERIES)
    c = time.process_time()
    for _ in range(10):
        for q in QUERIES:
            embedder.query(q)
    cached_ms = 1000 * (time.process_time() - c) / (10 * len(QUERIES))
    print(
        table(
            [
                {"what": "model load", "CPU ms": round(1000 * load_s)},
                {
                    "what": f"per embedded row ({rows_embedded} rows of {video_s:.0f} s of speech-heavy video)",
                    "CPU ms": round(1000 * embed_cpu / max(1, rows_embedded), 2),
                },
                {"what": "per query (first time)", "CPU ms": round(query_ms, 2)},
                {"what": "per query (repeated: cached)", "CPU ms": round(cached_ms, 4)},
            ]  # fmt: skip
        )
    )
    work = {k: v for k, v in visual["cpu"].items() if k != "setup"}
    total = sum(work.values()) + speech_cpu + embed_cpu
    shares = [*work.items(), ("speech", speech_cpu), ("text vectors", embed_cpu)]
    out = [{"stage": k, "CPU s": round(v, 3), "share": f"{100 * v / total:.1f}%"} for k, v in shares]
    out.append({"stage": f"all ({video_s:.0f} s of video)", "CPU s": round(total, 2), "share": "100%"})
    print(table(out))


if __name__ == "__main__":
    main()
