"""The data contract between stages, declared once: deterministic ids, table names, and the columns a frame
row carries from stage to stage.

``pipeline/store/schema.py`` builds the Arrow schemas of the tables on top of this module; operators read it
directly, so ``operators/`` never imports ``pipeline/``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Literal, get_args

NAMESPACE = uuid.UUID("6f1d2f1c-3a57-4a38-9c1e-5b1c0f7d2a90")

VIDEOS = "videos"
FRAMES = "frames"
SEGMENTS = "segments"
TRACKS = "tracks"
THUMBNAILS = "thumbnails"
TEXTS = "texts"  # on-screen text spans
SPEECH = "speech"  # transcribed utterances

#: Tables that hold a video's indexed rows; all of them are written before the video is marked complete.
CONTENT_TABLES = (FRAMES, SEGMENTS, TRACKS, THUMBNAILS, TEXTS, SPEECH)

#: Tables searchable by vector, and so valid search ``level`` values.
Level = Literal["segments", "frames", "tracks"]
LEVELS: tuple[str, ...] = get_args(Level)
assert LEVELS == (SEGMENTS, FRAMES, TRACKS)

#: The ``rerank`` argument's sentinels: the config's re-ranker, or none at all (stage-1 order).
RERANK_DEFAULT = "default"
RERANK_NONE = "none"


def rerank_choice(value: str | None, configured: str | None) -> str | None:
    """The re-ranker a request names: ``None`` / "none" -> no re-ranking; "default" -> ``configured``."""
    if value is None or value == RERANK_NONE:
        return None
    return configured if value == RERANK_DEFAULT else value


def make_id(*parts: object) -> str:
    """A deterministic id from the given parts (uuid5 in the project's namespace)."""
    return str(uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts)))


# -- content fingerprint (what "the same file" means; video_id = make_id of it) ---------------------------------
HEAD = TAIL = 64 * 1024
MIDDLE, N_MIDDLE = 16 * 1024, 8


def fingerprint(path: str) -> tuple[int, str]:
    """(size, SHA-256 over the size, the first and last 64 KiB and eight 16 KiB ranges spread between them)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        offsets = (
            [0]
            if size <= HEAD + TAIL
            else [0, *(HEAD + (size - HEAD - TAIL) * k // (N_MIDDLE + 1) for k in range(1, N_MIDDLE + 1)), size - TAIL]
        )
        for off in offsets:
            f.seek(off)
            h.update(f.read(HEAD if off in (0, size - TAIL) else MIDDLE) if size > HEAD + TAIL else f.read())
    return size, h.hexdigest()


# -- the frame row: one sampled frame as it travels decode -> detect -> embed -> assembly ----------------------
# Each operator declares the columns it reads and writes with these names (``Operator.reads`` / ``writes``), and
# ``pipeline/index/graph.check_columns`` checks every configured graph against those declarations.

#: The planner's video rows, what the graph starts from (``pipeline/index/ingest.py``).
VIDEO_ID = "video_id"
PATH = "path"
FINGERPRINT = "fingerprint"  # the catalog's content fingerprint, checked again by decode
VIDEO_ROW_COLUMNS = (VIDEO_ID, PATH, FINGERPRINT)

#: Per-video columns repeated on each of its frame rows (written by decode).
DURATION_S = "duration_s"
SOURCE_FPS = "source_fps"
N_FRAMES = "n_frames"
WIDTH = "width"
HEIGHT = "height"
ROTATION = "rotation"
BACKEND = "backend"
CODEC = "codec"
VIDEO_META_COLUMNS = (DURATION_S, SOURCE_FPS, N_FRAMES, WIDTH, HEIGHT, ROTATION, BACKEND, CODEC)

T = "t"  # seconds, the frame's presentation time
FRAME_IDX = "frame_idx"  # index of the frame in the source
SAMPLE_IDX = "sample_idx"  # 0..n_samples-1 in time order
N_SAMPLES = "n_samples"  # sampled frames planned for the video
FRAME = "frame"  # uint8 HxWx3, upright, working size
THUMB = "thumb"  # JPEG bytes
ERROR = "error"  # "" when fine; a failed video is one row with its reason
#: Written by decode (``frame`` is dropped by embed, so pixels never travel past it).
DECODE_COLUMNS = (VIDEO_ID, PATH, T, FRAME_IDX, SAMPLE_IDX, N_SAMPLES, FRAME, THUMB, ERROR, *VIDEO_META_COLUMNS)

#: Written by the shot detector on the video row, repeated by decode on each of its frames: the shots' start
#: times (float64 array, first 0.0). Absent without a shot detector.
SHOT_BOUNDS = "shot_bounds"
SHOT_COLUMNS = (SHOT_BOUNDS,)
#: Also written by the shot detector on the video row: why its shots could not be found ("" when fine; the video
#: then counts as one shot and is still indexed). Decode hands it on to the video's first frame row only, the
#: assembler reports it with the video's result and the driver records it as a failure of stage ``shots``.
SHOTS_ERROR = "shots_error"

#: Written by the detector: per frame, boxes (K x 4, normalised xyxy), confidences (K), class names (JSON list)
#: and, for segmentation models only, masks (K x h x w).
DET_BOXES = "det_boxes"
DET_CONF = "det_conf"
DET_NAMES = "det_names"
DET_MASKS = "det_masks"
DETECT_COLUMNS = (DET_BOXES, DET_CONF, DET_NAMES, DET_MASKS)

#: Written by preprocess and read (then dropped) by embed: float32 [3, S, S], the encoder's eval transform.
PIXELS = "pixels"
#: Written by embed: the frame embedding (D) and, when detection ran and regions are on, one region embedding per
#: box (K x D).
EMBEDDING = "embedding"
REGION_EMB = "region_emb"
EMBED_COLUMNS = (EMBEDDING, REGION_EMB)

#: Written by OCR: per frame, text lines (list of str), their boxes (N x 4, normalised xyxy), confidences (N);
#: ``ocr_reused`` (the last reading kept: the frame barely changed) is for reports and not stored.
OCR_TEXT = "ocr_text"
OCR_BOXES = "ocr_boxes"
OCR_CONF = "ocr_conf"
OCR_REUSED = "ocr_reused"
OCR_COLUMNS = (OCR_TEXT, OCR_BOXES, OCR_CONF)

#: Written by the caption stage: the caption (str) of each segment's keyframe on that frame's row, null on others.
CAPTION = "caption"
CAPTION_COLUMNS = (CAPTION,)

#: Written by the speech stage on the video row (operators/transcript.py): the video's utterances as one JSON
#: string (a list of utterance dicts, ``SPEECH_COLUMNS`` less the ids) and why its audio could not be transcribed
#: ("" when fine). Decode hands them on to the video's first frame row only (null on the others): a transcript
#: travels once per video, never once per frame. Absent with ``speech.model: none``.
TRANSCRIPT = "speech"
SPEECH_ERROR = "speech_error"
TRANSCRIPT_COLUMNS = (TRANSCRIPT, SPEECH_ERROR)
#: On a segment row the assembler emits (not stored): the whole utterances its span overlaps, what its speech
#: vector embeds (``pipeline/store/schema.py``, ``TEXT_VECTORS``).
SPEECH_CONTEXT = "speech_context"

#: What the per-video assembly reads; every other column is dropped before rows leave the embed stage.
ASSEMBLY_COLUMNS = (
    VIDEO_ID,
    PATH,
    T,
    FRAME_IDX,
    SAMPLE_IDX,
    N_SAMPLES,
    THUMB,
    ERROR,
    *VIDEO_META_COLUMNS,
    *DETECT_COLUMNS,
    *EMBED_COLUMNS,
    *OCR_COLUMNS,
    *SHOT_COLUMNS,
    SHOTS_ERROR,
    *CAPTION_COLUMNS,
    *TRANSCRIPT_COLUMNS,
)
#: What the assembler needs on every frame row (the others of ``ASSEMBLY_COLUMNS`` are read when present) ...
ASSEMBLY_REQUIRED = (
    VIDEO_ID,
    T,
    FRAME_IDX,
    SAMPLE_IDX,
    N_SAMPLES,
    THUMB,
    ERROR,
    *(c for c in VIDEO_META_COLUMNS if c != CODEC),
    EMBEDDING,
)
#: ... and, with detection on (it tracks the boxes), these.
ASSEMBLY_TRACKED = (DET_BOXES, DET_CONF, DET_NAMES)

# -- the utterance row: one stretch of transcribed speech of a video (operators/speech.py, 1 video : N rows) --
#: Keys of each entry of an utterance's ``words`` list.
WORD_FIELDS = ("word", "start_s", "end_s", "probability")
#: Written by the speech stage, one row per utterance; a video whose audio failed is one row with ``error`` set.
SPEECH_COLUMNS = (
    "utterance_id",  # make_id(video_id, SPEECH, utterance_idx), or make_id(video_id, SPEECH, "error")
    "video_id",
    "path",
    "utterance_idx",  # 0..N-1 in time order
    "start_s",  # seconds on the video clock (from the first video frame), like a frame row's ``t``
    "end_s",
    "text",
    "words",  # list of {word, start_s, end_s, probability} (WORD_FIELDS), video clock
    "language",  # the model's language code ("en" for English-only models)
    "avg_logprob",
    "no_speech_prob",
    "error",  # "" when fine
)
