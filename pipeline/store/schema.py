"""Column names and Arrow schemas of every LanceDB table, declared once.

Coordinates: boxes are stored normalised to the upright frame, ``[x1, y1, x2, y2]`` in ``[0, 1]``, so they
overlay any thumbnail or player size without knowing the decode resolution.

Ids are deterministic (``uuid5``) so that a rerun or a retried commit produces the same keys:
``video_id`` from the content fingerprint, ``frame_id`` from (video, frame index), ``segment_id`` from
(video, start), ``track_id`` from (video, tracker id).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from operators.contract import (
    CONTENT_TABLES,
    FRAMES,
    LEVELS,
    RERANK_DEFAULT,
    RERANK_NONE,
    SEGMENTS,
    SPEECH,
    SPEECH_CONTEXT,
    TEXTS,
    THUMBNAILS,
    TRACKS,
    VIDEOS,
    Level,
    make_id,
    rerank_choice,
)

__all__ = [
    "CONTENT_TABLES",
    "FRAMES",
    "LEVELS",
    "RERANK_DEFAULT",
    "RERANK_NONE",
    "SEGMENTS",
    "SPEECH",
    "TEXTS",
    "THUMBNAILS",
    "TRACKS",
    "VIDEOS",
    "SPEECH_CONTEXT",
    "Level",
    "make_id",
    "rerank_choice",
]

FAILURES = "failures"
RUNS = "runs"
#: Tables searchable by vector, and so valid ``level`` values.


STATUS_STARTED = "started"
STATUS_COMPLETE = "complete"


BOX = pa.struct(
    [
        ("track_id", pa.string()),
        ("class_name", pa.string()),
        ("conf", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
    ]
)

#: One timed box of a trajectory (of a text span; a track's adds ``mask_area``).
TIMED_BOX = [
    ("t", pa.float64()),
    ("x1", pa.float32()),
    ("y1", pa.float32()),
    ("x2", pa.float32()),
    ("y2", pa.float32()),
    ("conf", pa.float32()),
]
# mask_area: the fraction of the frame covered by the mask; -1 without masks
OBSERVATION = pa.struct([*TIMED_BOX, ("mask_area", pa.float32())])

#: One line of on-screen text read on a frame: the recogniser's text and confidence, its box (normalised xyxy).
TEXT_LINE = pa.struct(
    [
        ("text", pa.string()),
        ("conf", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
    ]
)


def vector(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


# -- sentence embeddings of the text rows (operators/text_embed.py) -----------------------------------------------

TEXT_DIM = 384  # the default model's (all-MiniLM-L6-v2); a table's own width is read from it
#: The model that wrote a row's text vectors (``operators.text_embed.model_id``): search reads only its query
#: model's rows, so vectors of two models are never compared.
TEXT_MODEL = "text_model"


@dataclass(frozen=True)
class TextVector:
    """A sentence-embedding column: table ``table``'s ``column`` holds the vectors of the row's ``source`` text (a
    multivector: the whole text's, then its sentences'; null where that text is empty, or text embedding is off)."""

    table: str
    column: str
    source: str  # the row key embedded (a stored column, or a value the assembler hands on only for this)
    label: str  # what the searches call it


TEXT_VECTORS: tuple[TextVector, ...] = (
    TextVector(SPEECH, "text_vector", "text", "speech"),
    TextVector(TEXTS, "text_vector", "text", "on-screen text"),
    TextVector(SEGMENTS, "caption_vector", "caption", "captions"),
    TextVector(SEGMENTS, "screen_text_vector", "screen_text", "on-screen text"),
    # the whole utterances the segment's span overlaps: its ``speech`` column holds only the words inside it,
    # and a sentence cut at a segment boundary loses its meaning
    TextVector(SEGMENTS, "speech_vector", SPEECH_CONTEXT, "speech"),
)


def text_vectors(table: str) -> tuple[TextVector, ...]:
    return tuple(v for v in TEXT_VECTORS if v.table == table)


def multivector(dim: int) -> pa.DataType:
    """A row's sentence vectors: the whole text's, then its sentences' (``operators/text_embed.py``, ``pieces``)."""
    return pa.list_(vector(dim))


def text_vector_fields(table: str, text_dim: int) -> list[pa.Field]:
    """The sentence-embedding columns of ``table`` and the model column (added after the tables' first release)."""
    fields = [added(v.column, multivector(text_dim)) for v in text_vectors(table)]
    return [*fields, added(TEXT_MODEL, pa.string())] if fields else []


def videos_schema() -> pa.Schema:
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("fingerprint", pa.string()),
            ("path", pa.string()),
            ("size_bytes", pa.int64()),
            ("duration_s", pa.float64()),
            ("fps", pa.float64()),
            ("n_frames", pa.int64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("rotation", pa.int32()),
            ("backend", pa.string()),
            ("n_samples", pa.int32()),
            ("status", pa.string()),
            ("pipeline_version", pa.string()),
            ("run_id", pa.string()),
            ("indexed_at", pa.timestamp("us", tz="UTC")),
            added("mtime_ns", pa.int64()),  # the file's st_mtime_ns when it was listed; the server refuses another
        ]
    )


#: Marks a column added after a table's first release: ``Store.migrate`` adds it (all null) to older tables, and
#: rows may leave it out (``fragments.to_arrow`` fills null).
ADDED = {b"added": b"1"}


def added(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True, metadata=ADDED)


def is_added(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(b"added") == b"1"


def columns_table(columns: dict[str, object], schema: pa.Schema) -> pa.Table:
    """``pa.table(columns, schema=schema)`` where the columns added since a table's first release may be left
    out (they are null)."""
    n = len(next(iter(columns.values())))  # type: ignore[arg-type]
    full = {f.name: columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema}
    return pa.table(full, schema=schema)


def frames_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("frame_id", pa.string()),
            ("video_id", pa.string()),
            ("t", pa.float64()),
            ("frame_idx", pa.int64()),
            ("embedding", vector(dim)),
            ("boxes", pa.list_(BOX)),
            ("class_names", pa.list_(pa.string())),
            added("shot_idx", pa.int32()),  # index of the frame's shot in its video (0 without shot detection)
            # The lines of on-screen text read on the frame, as the OCR stage read them; null where OCR is off,
            # empty where it read nothing (the ``texts`` table joins them across frames into spans).
            added("text_lines", pa.list_(TEXT_LINE)),
        ]
    )


def segments_schema(dim: int, text_dim: int = TEXT_DIM) -> pa.Schema:
    return pa.schema(
        [
            ("segment_id", pa.string()),
            ("video_id", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("n_frames", pa.int32()),
            ("embedding", vector(dim)),
            ("thumb_id", pa.string()),
            ("class_names", pa.list_(pa.string())),
            # The shot the segment lies in: segments never cross a cut, so a hit can offer the whole shot.
            added("shot_idx", pa.int32()),
            added("shot_start_s", pa.float64()),
            added("shot_end_s", pa.float64()),
            added("caption", pa.string()),  # the captioner's description of the segment's keyframe; null if off
            # The on-screen text read on the segment's frames: its distinct lines in order of first appearance,
            # one per line; null where OCR is off or read nothing. Searched by words next to the caption.
            added("screen_text", pa.string()),
            # The words spoken inside the segment's span (a word belongs to the segment holding its midpoint), in
            # time order; null where speech is off or nobody spoke. Searched by words next to the caption.
            added("speech", pa.string()),
            *text_vector_fields(SEGMENTS, text_dim),
        ]
    )


def tracks_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("track_id", pa.string()),
            ("video_id", pa.string()),
            ("tracker_id", pa.int64()),
            ("class_name", pa.string()),
            ("conf_mean", pa.float32()),
            ("t_first", pa.float64()),
            ("t_last", pa.float64()),
            ("duration_s", pa.float64()),
            ("n_obs", pa.int32()),
            ("trajectory", pa.list_(OBSERVATION)),
            ("embedding", vector(dim)),
            ("best_t", pa.float64()),
            ("best_box", pa.list_(pa.float32(), 4)),
            ("thumb_id", pa.string()),
        ]
    )


def thumbnails_schema() -> pa.Schema:
    return pa.schema(
        [
            ("thumb_id", pa.string()),
            ("video_id", pa.string()),
            ("t", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("jpeg", pa.binary()),
        ]
    )


def failures_schema() -> pa.Schema:
    return pa.schema(
        [
            ("failure_id", pa.string()),
            ("path", pa.string()),
            ("video_id", pa.string()),
            ("stage", pa.string()),
            ("error_type", pa.string()),
            ("message", pa.string()),
            ("attempts", pa.int32()),
            ("quarantined", pa.bool_()),
            ("first_seen", pa.timestamp("us", tz="UTC")),
            ("last_seen", pa.timestamp("us", tz="UTC")),
        ]
    )


def runs_schema() -> pa.Schema:
    return pa.schema(
        [
            ("run_id", pa.string()),
            ("started_at", pa.timestamp("us", tz="UTC")),
            ("finished_at", pa.timestamp("us", tz="UTC")),
            ("pipeline_version", pa.string()),
            ("summary_json", pa.string()),
        ]
    )


#: Primary key of each table, used for idempotent ``merge_insert`` and for per-video deletes.
KEYS = {
    VIDEOS: "video_id",
    FRAMES: "frame_id",
    SEGMENTS: "segment_id",
    TRACKS: "track_id",
    THUMBNAILS: "thumb_id",
    FAILURES: "failure_id",
    RUNS: "run_id",
}


def table_schema(name: str, dim: int, text_dim: int = TEXT_DIM) -> pa.Schema:
    """The schema of table ``name`` for image/text embeddings of width ``dim`` and sentence embeddings of width
    ``text_dim``."""
    builders = {VIDEOS: videos_schema, THUMBNAILS: thumbnails_schema, FAILURES: failures_schema, RUNS: runs_schema}
    if name in builders:
        return builders[name]()
    if name in (TEXTS, SPEECH):
        return {TEXTS: texts_schema, SPEECH: speech_schema}[name](text_dim)
    if name == SEGMENTS:
        return segments_schema(dim, text_dim)
    return {FRAMES: frames_schema, TRACKS: tracks_schema}[name](dim)


# -- on-screen text (operators/ocr.py, operators/text_spans.py) ------------------------------------------------

TEXT_OBSERVATION = pa.struct(TIMED_BOX)


def texts_schema(text_dim: int = TEXT_DIM) -> pa.Schema:
    """One row per text span: the same on-screen text across consecutive sampled frames.

    ``start_s``/``end_s`` estimate when the text was on screen (half a sampling step beyond the first and last
    sampled frames that read it, ``t_first``/``t_last``); ``box`` is its box on the most confident frame
    (``best_t``, thumbnail ``thumb_id``); ``text_id`` is ``make_id(video_id, "text", f"{t_first:.3f}", key)``.
    """
    return pa.schema(
        [
            ("text_id", pa.string()),
            ("video_id", pa.string()),
            ("text", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("t_first", pa.float64()),
            ("t_last", pa.float64()),
            ("n_obs", pa.int32()),
            ("conf_mean", pa.float32()),
            ("best_t", pa.float64()),
            ("box", pa.list_(pa.float32(), 4)),
            ("thumb_id", pa.string()),
            ("trajectory", pa.list_(TEXT_OBSERVATION)),
            *text_vector_fields(TEXTS, text_dim),
        ]
    )


KEYS[TEXTS] = "text_id"


# -- speech (operators/speech.py, operators/transcript.py) ---------------------------------------------------------

#: One recognised word: its text as Whisper wrote it (punctuation attached), its span on the video clock, and
#: Whisper's probability for it.
WORD = pa.struct(
    [("word", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()), ("probability", pa.float32())]
)


def speech_schema(text_dim: int = TEXT_DIM) -> pa.Schema:
    """One row per utterance (a stretch of speech Whisper wrote as one segment), times on the video clock (seconds
    from the first video frame); ``utterance_id`` is ``make_id(video_id, "speech", utterance_idx)``."""
    return pa.schema(
        [
            ("utterance_id", pa.string()),
            ("video_id", pa.string()),
            ("utterance_idx", pa.int32()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("text", pa.string()),
            ("words", pa.list_(WORD)),
            ("language", pa.string()),
            ("avg_logprob", pa.float32()),
            ("no_speech_prob", pa.float32()),
            *text_vector_fields(SPEECH, text_dim),
        ]
    )


KEYS[SPEECH] = "utterance_id"
