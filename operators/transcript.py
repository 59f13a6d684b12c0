"""A video's transcript as it travels the frame graph: the speech stage on the video rows (1 video : 1 row),
the JSON that carries it, and what the assembler makes of it (``speech`` table rows, each segment's words).

The speech stage runs before decode, like the shot detector, so the transcript rides on the video row and
decode hands it on to the video's first frame row only (``operators/decode.py``): one JSON string per video,
whatever its length, instead of a copy on every frame row. The assembler reads it from that row (the first in
``sample_idx`` order, so it is known before any segment closes) and writes one ``speech`` row per utterance.

Audio that cannot be decoded (``AudioDecodeError``, a file that went away) is not a failure of the video: its
pictures are still indexed, and ``speech_error`` says why it has no transcript (the driver records it in
``failures`` under the stage ``speech``). A video without an audio stream, or with no speech in it, has an
empty transcript and no error.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from operators import contract as C
from operators.audio import AudioDecodeError
from operators.base import Batch, Operator
from operators.media_probe import short_error
from operators.speech import SpeechConfig, Transcribe

__all__ = ["SegmentWords", "TranscribeVideos", "decode_transcript", "speech_rows"]

Row = dict[str, Any]
#: The keys of one utterance in the transcript JSON (``SPEECH_COLUMNS`` without ids, path, index and error).
UTTERANCE_KEYS = ("start_s", "end_s", "text", "words", "language", "avg_logprob", "no_speech_prob")


class TranscribeVideos(Operator):
    """Video rows in, the same rows out (1:1) with ``speech`` (the utterances as one JSON list, see
    ``Transcribe.utterances``; "[]" without audio or speech) and ``speech_error`` ("" when fine, else why the
    audio could not be transcribed: ``speech`` is then "[]"). Reads ``path``; a row whose ``shots_error`` is set
    (the shot detector could not read it) is still transcribed: the two read different streams."""

    reads = (C.PATH,)
    writes = C.TRANSCRIPT_COLUMNS

    def __init__(self, cfg: SpeechConfig, transcriber: Transcribe | None = None) -> None:
        self.cfg = cfg
        self.transcriber = transcriber or Transcribe(cfg)

    def setup(self) -> None:
        self.transcriber.setup()

    def transcript(self, path: str) -> tuple[str, str]:
        """(the utterances of ``path`` as JSON, the error or "")."""
        try:
            rows = self.transcriber.utterances(path)
        except AudioDecodeError as exc:
            return "[]", f"speech failed: {exc}"
        except OSError as exc:  # the file went away or cannot be read
            return "[]", f"speech failed: {short_error(exc, path)}"
        return json.dumps([{k: r[k] for k in UTTERANCE_KEYS} for r in rows]), ""

    def __call__(self, batch: Batch) -> Batch:
        """Reads ``path``; writes ``speech`` and ``speech_error`` (see the class docstring)."""
        done = [self.transcript(str(p)) for p in batch[C.PATH]]
        out = dict(batch)
        out[C.TRANSCRIPT] = np.array([t for t, _ in done], dtype=object)
        out[C.SPEECH_ERROR] = np.array([e for _, e in done], dtype=object)
        return out


def decode_transcript(value: Any) -> list[Row]:
    """The utterances of a frame row's ``speech`` value: a JSON string on the video's first row; null, or the NaN
    Ray Data makes of an all-null column, elsewhere."""
    return json.loads(value) if isinstance(value, str) and value else []


def speech_rows(video_id: str, utterances: list[Row]) -> list[Row]:
    """The ``speech`` table rows of a video's utterances (ids as ``Transcribe``'s: ``make_id(video, SPEECH, i)``)."""
    return [
        {
            "utterance_id": C.make_id(video_id, C.SPEECH, i),
            "video_id": video_id,
            "utterance_idx": i,
            **{k: u[k] for k in UTTERANCE_KEYS},
        }
        for i, u in enumerate(utterances)
    ]


class SegmentWords:
    """The words spoken inside each segment, for segments closed in time order: a word belongs to the segment
    that holds its midpoint (so a word on a boundary is in exactly one). Words are dropped once a segment
    ending after them has closed, so it holds only the words not yet handed out; ``around`` gives the whole
    utterances a segment overlaps."""

    def __init__(self, utterances: Iterable[Row] = ()) -> None:
        utterances = list(utterances)
        found = [
            (0.5 * (float(w["start_s"]) + float(w["end_s"])), str(w["word"]))
            for u in utterances
            for w in u.get("words") or []
            if str(w["word"]).strip()
        ]
        self.words: deque[tuple[float, str]] = deque(sorted(found, key=lambda x: x[0]))
        spoken = [
            (float(u["start_s"]), float(u["end_s"]), " ".join(str(u["text"]).split()))
            for u in utterances
            if u.get("text") and u.get("start_s") is not None and u.get("end_s") is not None
        ]
        self.utterances: deque[tuple[float, float, str]] = deque(sorted(u for u in spoken if u[2]))

    def take(self, start_s: float, end_s: float) -> str | None:
        """The words with a midpoint in ``[start_s, end_s)``, joined by spaces; those before ``start_s`` (in a gap
        between segments) are dropped unsaid. None when no word was spoken there."""
        out = []
        while self.words and self.words[0][0] < end_s:
            t, word = self.words.popleft()
            if t >= start_s:
                out.append(word)
        return " ".join(out) or None

    def around(self, start_s: float, end_s: float) -> str | None:
        """The whole utterances that overlap ``[start_s, end_s)``, in time order (what a segment's speech vector
        embeds: a sentence cut at the segment's edge keeps its meaning); None when none does. Call it for
        segments in time order: utterances that ended before ``start_s`` are dropped."""
        while self.utterances and self.utterances[0][1] <= start_s:
            self.utterances.popleft()
        out = []
        for s, e, text in self.utterances:
            if s >= end_s:
                break
            if e > start_s:
                out.append(text)
        return " ".join(out) or None
