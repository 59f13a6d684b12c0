"""The run configuration: YAML validated into typed sections, with ``--set section.key=value`` overrides.

Each section's model lives beside the code that reads it; this module only composes them. Unknown keys are
errors naming the key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from configs import names, shipped
from operators.assemble import SegmentConfig
from operators.base import StageResources, StrictModel
from operators.captions import CaptionConfig
from operators.decode import DecodeConfig
from operators.detect_track import DetectConfig
from operators.encoders import EncoderConfig
from operators.ocr import OcrConfig
from operators.regions import RegionConfig
from operators.speech import SpeechConfig
from operators.text_embed import TextEmbedConfig
from operators.text_spans import SpanConfig
from operators.vqa import VqaConfig
from pipeline.errors import ConfigError


class RayConfig(StrictModel):
    address: str | None = None  # None: start a local Ray; "auto" or ray://...: join a cluster
    num_cpus: int | None = None  # for a local Ray only
    # Passed to ray.init when joining a cluster without `ray job submit` (e.g. {"working_dir": "."} to ship the
    # code, {"env_vars": {...}}); a submitted job already carries its own runtime_env.
    runtime_env: dict[str, Any] | None = None
    # Fractional CPU requests so every stage can run at once on a 2-core machine (actors hold their CPU for
    # their lifetime; whole-CPU actors would starve the decode tasks). Each worker caps torch at one thread
    # per whole CPU it asked for (at least one). Measured on 2 cores (benchmarks/pipeline_vs_sequential.py,
    # BENCHMARKS.md): the requests must add up to at most the 2 CPUs (they were 2.25: tasks queued behind the
    # actors), and preprocess asks exactly what embed asks (same CPUs, pool size, batch size) so that Ray Data
    # fuses it into the embed actor on CPU: one worker process fewer and no float32 pixel hop, which cut the
    # pipeline's CPU seconds from 48 to 38 for the same work. With num_gpus on embed the two stay separate.
    decode: StageResources = StageResources(num_cpus=0.25, concurrency=2, batch_size=1)
    detect: StageResources = StageResources(num_cpus=0.5, concurrency=1, batch_size=8)
    preprocess: StageResources = StageResources(num_cpus=0.5, concurrency=1, batch_size=16)
    embed: StageResources = StageResources(num_cpus=0.5, concurrency=1, batch_size=16)
    ocr: StageResources = StageResources(num_cpus=0.25, concurrency=1, batch_size=8)  # when ocr.engine is not none
    shots: StageResources = StageResources(num_cpus=0.25, concurrency=1, batch_size=1)  # when segments.shots is set
    captions: StageResources = StageResources(num_cpus=0.25, concurrency=1, batch_size=16)  # when captions.model set
    # when speech.model is set: one video per batch (a transcript is a whole video's work); tiny.en int8 costs
    # ~0.06 CPU s per audio second on one thread (benchmarks/speech.py), so a quarter CPU keeps up with decode
    speech: StageResources = StageResources(num_cpus=0.25, concurrency=1, batch_size=1)
    # Routing is a hand-off (a few ms per batch) and assembly + fragment writes cost ~1-2 ms per frame, so both
    # ask little; give a cluster one assembler per few nodes' worth of frames (see BENCHMARKS.md, driver).
    route: StageResources = StageResources(num_cpus=0.05, concurrency=1, batch_size=0)
    assemble: StageResources = StageResources(num_cpus=0.2, concurrency=1, batch_size=0)

    @model_validator(mode="before")
    @classmethod
    def _partial_stages(cls, data: Any) -> Any:
        """A stage given in part (``--set ray.embed.concurrency=8``) keeps this stage's defaults for the rest,
        not ``StageResources``' (which would silently reset num_cpus to 1 and num_gpus to 0)."""
        if isinstance(data, dict):
            data = dict(data)
            for name, field in cls.model_fields.items():
                if isinstance(field.default, StageResources) and isinstance(data.get(name), dict):
                    data[name] = {**cls.model_fields[name].default.model_dump(), **data[name]}
        return data


class DbConfig(StrictModel):
    path: str = "./vidsearch_db"
    # Finished videos are committed together: one Lance commit per table per group, so larger groups cost the
    # driver less per video (BENCHMARKS.md, driver); a group is committed after this many videos or seconds.
    commit_every_videos: int = 64
    commit_every_s: float = 30.0
    fragment_rows: int = 4096  # an assembler writes a table's buffered rows of a video as a fragment at this many
    # Where the write lock of an object-store database lives (local disk of the driver); a local database keeps
    # its lock inside its own directory. See pipeline/store/lock.py.
    lock_dir: str | None = None


class MaintenanceConfig(StrictModel):
    """Index maintenance after ingest (pipeline/store/maintenance.py); the vector-index parameters need measured
    recall before they are trusted (benchmarks/)."""

    vector_index_min_rows: int = 50_000  # below this, exact search is fast and exact
    index_type: Literal["IVF_PQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ", "IVF_SQ", "IVF_FLAT"] = "IVF_HNSW_SQ"
    num_partitions: int | None = None  # None: about sqrt(rows)
    num_sub_vectors: int | None = None  # PQ only; None: dim / 8 (a divisor of dim)
    hnsw_m: int = 20  # HNSW graph degree (IVF_HNSW_*)
    hnsw_ef_construction: int = 300
    # Measured (benchmarks/vector_search.py, BENCHMARKS.md item 4): 1M x 512 clustered vectors, IVF_HNSW_SQ with
    # 1000 partitions, 2 cores, fetching 50 rows as a re-ranked search does: nprobes 8 without refine gives
    # recall@10 0.987 (0.97-0.98 under a prefilter keeping 10% of rows) at about the per-query floor of LanceDB
    # (nprobes 1 costs as much CPU); refine 5 adds 0.01 recall for twice the CPU per query.
    nprobes: int = 8
    refine_factor: int | None = None
    ef: int | None = None  # HNSW search breadth per probed partition (IVF_HNSW_*); None: LanceDB's default
    retrain_growth: float = 2.0  # rebuild the vector index when a table grew this many times since it was built
    scalar_index_min_rows: int = 10_000
    fts: bool = True  # full-text indexes on class names and paths
    compact_min_fragments: int = 16  # compact (optimize) a table once it has this many small fragments
    keep_versions_s: float = 7 * 24 * 3600.0  # optimize() removes table versions older than this
    after_index: bool = True  # run the needed maintenance at the end of every `index` that changed rows


class FailureConfig(StrictModel):
    quarantine_after: int = 3  # attempts failing the same way before a video is skipped by later runs


class SearchConfig(StrictModel):
    overfetch: int = 5  # stage 1 fetches k * overfetch candidates for re-ranking
    max_query_chars: int = 1000
    max_k: int = 1000
    rerank: str | None = "attention"
    rerank_weight: float = 0.5
    rrf_k: int = Field(default=60, gt=0)  # reciprocal-rank fusion constant of hybrid search (pipeline/search/hybrid.py)
    rerankers: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Config(StrictModel):
    decode: DecodeConfig = DecodeConfig()
    encoder: EncoderConfig = EncoderConfig()
    detect: DetectConfig = DetectConfig()
    regions: RegionConfig = RegionConfig()
    segments: SegmentConfig = SegmentConfig()
    ocr: OcrConfig = OcrConfig()
    spans: SpanConfig = SpanConfig()  # on-screen text readings -> spans
    captions: CaptionConfig = CaptionConfig()  # segment captions (operators/captions.py); model none: off
    # what is said (operators/speech.py); none here so a config written before speech existed keeps working
    speech: SpeechConfig = SpeechConfig(model="none")
    # sentence embeddings of what is said, read and captioned (operators/text_embed.py); none here, as speech
    text_embed: TextEmbedConfig = TextEmbedConfig(model="none")

    ray: RayConfig = RayConfig()
    db: DbConfig = DbConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    failures: FailureConfig = FailureConfig()
    search: SearchConfig = SearchConfig()
    vqa: VqaConfig = VqaConfig()  # questions about a frame (pipeline/search/ask.py); not part of the index

    def random_models(self) -> list[str]:
        """The models this config builds with random weights (from an architecture, no trained checkpoint), as
        the loaders decide it: an open_clip encoder with ``pretrained: null``, a YOLO architecture YAML, a
        captioner built from ``captions.architecture``. What the random-weights notice names."""
        out = []
        if self.encoder.pretrained is None:
            out.append(f"the image/text encoder ({self.encoder.model})")
        if self.detect.enabled and self.detect.model.endswith((".yaml", ".yml")):
            out.append(f"the detector ({self.detect.model})")
        if self.captions.model != "none" and self.captions.random_weights:
            out.append(f"the captioner ({self.captions.model})")
        return out

    def random_notice(self) -> str | None:
        """One line naming the randomly initialised models of this run, or None when every model is trained."""
        random = self.random_models()
        if not random:
            return None
        return (
            f"NOTE: randomly initialised in this run: {', '.join(random)}; results that depend on "
            f"{'it' if len(random) == 1 else 'them'} carry no meaning."
        )

    @property
    def random_weights(self) -> bool:
        """Whether any model of the index or its searches is randomly initialised."""
        return bool(self.random_models())

    def pipeline_version(self) -> str:
        """Hash of everything that changes the rows a video produces (models, sampling, segmenting, regions)."""
        # The fp32 runtimes (encoder/detect ``backend``) give the torch outputs to parity tolerance
        # (tests/test_backends.py), so switching backend keeps the version and the stored rows; bf16 does not.
        runtime = {"backend", "export_cache", "precision"}
        parts: dict[str, Any] = {
            "encoder": self.encoder.model_dump(exclude={"device", "batch_size", "cache_dir", *runtime}),
            "decode": self.decode.model_dump(include={"fps", "max_side"})
            | ({"mode": "keyframes"} if self.decode.mode == "keyframes" else {}),
            "segments": self._segments_version(),
            "detect": self.detect.model_dump(exclude={"device", "half", *runtime}) if self.detect.enabled else None,
            "regions": self.regions.model_dump() if self.detect.enabled else None,
        }
        if self.ocr.engine != "none":  # absent otherwise, so databases indexed before OCR existed keep their version
            parts["ocr"] = {**self.ocr.model_dump(exclude={"device", "threads"}), "spans": self.spans.model_dump()}
        if self.captions.model != "none":  # absent otherwise, so databases indexed before captions keep their version
            rows = {"model", "checkpoint", "max_new_tokens", "num_beams", "prompt"}
            random = {"architecture", "seed"} if self.captions.random_weights else set()
            parts["captions"] = self.captions.model_dump(include=rows | random)
        if self.speech.model != "none":  # absent otherwise, so databases indexed before speech keep their version
            # device, threads, batch size and the time limit change how fast, not which words
            parts["speech"] = self.speech.model_dump(exclude={"device", "cpu_threads", "batch_size", "timeout_s"})
        if self.text_embed.enabled:  # absent otherwise, so databases indexed before text vectors keep their version
            which = {"model", "revision", "query_prefix", "passage_prefix"}
            parts["text_embed"] = self.text_embed.model_dump(include=which)
        bf16 = [s for s in ("encoder", "detect") if getattr(self, s).precision == "bf16"]
        if bf16:
            parts["bf16"] = bf16
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _segments_version(self) -> dict[str, Any]:
        if self.segments.shots.detector == "none":  # as before shots existed: fixed windows keep their version
            return self.segments.model_dump(exclude={"shots"})
        shots = self.segments.shots.model_dump(exclude={"device", "batch_windows", "decode_threads", "timeout_s"})
        return {**self.segments.model_dump(exclude={"shots"}), "shots": shots}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[keys[-1]] = value


def resolve_config_path(name: str | Path) -> Path:
    """A YAML path as given, else a shipped config by name (``tiny``), read from the installed package."""
    path = Path(name)
    if not path.exists():
        path = shipped(f"{name}.yaml") or path
    if not path.exists():
        raise ConfigError(f"config file '{name}' not found (give a path or one of: {', '.join(names())})")
    return path


def load_config(name: str | Path = "default", overrides: list[str] | None = None) -> Config:
    """Load ``name`` (a path, or a name in ``configs/`` without .yaml) and apply ``section.key=value`` overrides."""
    path = resolve_config_path(name)
    tree = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got '{item}'")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid config {path}: {problems}") from None
