"""Speech cost and accuracy: CPU seconds per audio second of the ``Transcribe`` operator (audio decode, VAD and
Whisper together) per model and compute type, one CTranslate2 thread, on the real recordings in
``testdata/speech/``, and the word error rate on the one with reference text.

Inputs: each recording as it is (WAV) and the Dickens reading muxed as AAC into a real clip (built with ffmpeg
in a temporary folder). CPU time is ``time.process_time`` of this process (the decoder and the VAD run in it),
so the numbers are CPU seconds, not wall time on a shared machine. Model load is timed separately; a first
call warms each model up before it is measured.

    python benchmarks/speech.py [--repeat 2] [--compute-types int8 float32] [--beam-size 5]
    python benchmarks/speech.py --share [--beam-size 5] [--export-cache /tmp/exports]

``--share``: speech's share of the pipeline's CPU on speech-heavy video, in one run: the reading muxed into a
real clip (44 s of speech in 50 s), transcribed by the default config's speech settings, and the same clip
through the default config's other stages (shot detection, decode, the trained YOLO11n, on-screen text, the
encoder with its region features; onnx, one thread; ``benchmarks/realtime.py stage_cpu``), with the encoder's
random weights (same compute). Share = speech CPU / (speech + the other stages' CPU).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from _common import TESTDATA, clip, header, table

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tiny.en comes from the pinned wheel; never the hub

READING, REFERENCE = "speech/two_cities.wav", "speech/two_cities.txt"
SHORT = "speech/clone-test.wav"
VIDEO = "intel_sample_videos/one-by-one-person-detection.mp4"


def words_of(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def inputs(work: Path) -> list[tuple[str, str]]:
    """(label, path): the recordings as they are, and the reading as AAC in a real clip."""
    muxed = work / "reading_aac.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", clip(VIDEO), "-i", clip(READING), "-map", "0:v", "-map", "1:a"]
        + ["-c:v", "copy", "-c:a", "aac", "-t", "50", str(muxed)],
        check=True,
    )
    return [("two_cities.wav", clip(READING)), ("two_cities AAC in mp4", str(muxed)), ("clone-test.wav", clip(SHORT))]


def audio_seconds(path: str) -> float:
    from operators.audio import SAMPLE_RATE, read_audio

    return sum(len(c) for _, c in read_audio(path)) / SAMPLE_RATE


def main() -> None:
    from operators.speech import SpeechConfig, Transcribe
    from pipeline.evaluation.metrics import wer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--compute-types", nargs="+", default=["int8", "float32"])
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs per input")
    ap.add_argument("--share", action="store_true", help="speech's share of pipeline CPU (see the docstring)")
    ap.add_argument("--export-cache", default=None, help="--share: export cache of the onnx models")
    args = ap.parse_args()
    if args.share:
        share(args)
        return
    header(f"speech: CPU s per audio s, {args.model}, one thread, beam {args.beam_size} ({TESTDATA})")
    reference = words_of((TESTDATA / REFERENCE).read_text())
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = inputs(Path(tmp))
        seconds = {path: audio_seconds(path) for _, path in files}
        for compute in args.compute_types:
            cfg = SpeechConfig(
                model=args.model, device="cpu", compute_type=compute, cpu_threads=1, beam_size=args.beam_size
            )
            op = Transcribe(cfg)
            c = time.process_time()
            op.setup()
            load_s = time.process_time() - c
            op.utterances(files[-1][1])  # warm-up
            for label, path in files:
                best, utterances = float("inf"), []
                for _ in range(args.repeat):
                    c = time.process_time()
                    utterances = op.utterances(path)
                    best = min(best, time.process_time() - c)
                said = words_of(" ".join(u["text"] for u in utterances))
                rows.append(
                    {
                        "model": args.model,
                        "compute": compute,
                        "input": label,
                        "audio s": round(seconds[path], 2),
                        "CPU s": round(best, 2),
                        "CPU s / audio s": round(best / seconds[path], 4),
                        "utterances": len(utterances),
                        "WER": round(wer(reference, said), 4) if "two_cities" in label else "",
                        "load CPU s": round(load_s, 2),
                    }
                )
                print(rows[-1], flush=True)
    print(table(rows))


def share(args: argparse.Namespace) -> None:
    import torch
    from realtime import stage_cpu

    from operators.speech import Transcribe
    from pipeline.config import load_config

    header(f"speech share of pipeline CPU on speech-heavy video, beam {args.beam_size}, one thread")
    torch.set_num_threads(1)
    cache = [f"{s}.export_cache={args.export_cache}" for s in ("encoder", "detect") if args.export_cache]
    cfg = load_config("default", ["encoder.pretrained=null", "encoder.device=cpu", "detect.device=cpu", *cache])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _, muxed = inputs(Path(tmp))[1]
        visual = stage_cpu(cfg, [muxed], every_stage=True)
        op = Transcribe(cfg.speech.model_copy(update={"cpu_threads": 1, "beam_size": args.beam_size}))
        op.setup()
        op.utterances(clip(SHORT))  # warm-up
        c = time.process_time()
        op.utterances(muxed)
        speech_cpu = time.process_time() - c
    work = {k: v for k, v in visual["cpu"].items() if k != "setup"}
    total = sum(work.values()) + speech_cpu
    for k, v in [*work.items(), ("speech", speech_cpu)]:
        rows.append({"stage": k, "CPU s": round(v, 2), "share": f"{100 * v / total:.1f}%"})
    rows.append({"stage": f"all ({visual['video_s']:.0f} s of video)", "CPU s": round(total, 2), "share": "100%"})
    print(table(rows))


if __name__ == "__main__":
    main()
