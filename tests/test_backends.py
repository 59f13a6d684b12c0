"""ONNX Runtime / OpenVINO backends against torch on real frames, and the export cache (miss, hit, corrupt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from operators.backends import ExportCache
from operators.decode import Decode, DecodeConfig
from operators.detect_track import DetectConfig, YoloPredictor
from operators.encoders import build_encoder
from operators.regions import roi_embeddings
from tests.helpers import clip, tiny_config

BACKENDS = ["onnx", "openvino"]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Real frames of two clips (different sizes and content)."""
    out = []
    for rel in ("mdn/flower.webm", "intel_sample_videos/car-detection.mp4"):
        chunk = next(Decode(DecodeConfig(max_side=320)).iter_video("v", clip(rel)))
        out.extend(chunk["frame"][:3])
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def torch_encoder(tmp_path_factory):
    enc = build_encoder(tiny_config(tmp_path_factory.mktemp("db")).encoder)
    enc.setup()
    return enc


def runtime_encoder(backend: str, cache: Path, **update: object):
    cfg = tiny_config(cache / "db").encoder
    enc = build_encoder(cfg.model_copy(update={"backend": backend, "export_cache": str(cache), **update}))
    enc.setup()
    return enc


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_export_matches_torch_on_real_frames(backend, frames, torch_encoder, cache_dir) -> None:
    enc = runtime_encoder(backend, cache_dir)
    assert enc.runtime is not None and enc.runtime.key.startswith(f"open_clip-{backend}-")
    pixels = torch_encoder.preprocess_frames(frames)
    ref_emb, ref_grid = torch_encoder.encode_pixels(pixels)
    emb, grid = enc.encode_pixels(pixels)
    assert emb.shape == ref_emb.shape and grid.shape == ref_grid.shape
    assert cosines(emb, ref_emb).min() >= 0.9999
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Region embeddings: RoIAlign over the exported patch-token grid, the frame's own size.
    boxes = np.array([[0.1, 0.1, 0.5, 0.6], [0.4, 0.2, 0.95, 0.9], [0.0, 0.0, 1.0, 1.0]], np.float32)
    for f, g, rg in zip(frames, grid, ref_grid, strict=True):
        size = (f.shape[1], f.shape[0])
        assert (
            cosines(roi_embeddings(enc, g, boxes, size), roi_embeddings(torch_encoder, rg, boxes, size)).min() >= 0.9999
        )
    # Text tower: pooled query embeddings and the per-token embeddings fusion re-ranking compares.
    texts = ["a red car on a road", "a flower", "people walking at night"]
    assert cosines(enc.encode_text(texts), torch_encoder.encode_text(texts)).min() >= 0.9999
    pooled, tokens = enc.encode_text_query(texts[0])
    ref_pooled, ref_tokens = torch_encoder.encode_text_query(texts[0])
    assert tokens.shape == ref_tokens.shape and cosines(tokens, ref_tokens).min() >= 0.9999
    assert cosines(pooled, ref_pooled) >= 0.9999


def test_export_cache_miss_builds_hit_reuses_corrupt_rebuilds(tmp_path) -> None:
    built: list[Path] = []

    def build(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.bin").write_bytes(bytes(range(256)) * 64)
        built.append(folder)

    def load(folder: Path) -> bytes:
        data = (folder / "model.bin").read_bytes()
        if data[:4] != bytes(range(4)):
            raise ValueError("bad file")
        return data

    cache = ExportCache(tmp_path)
    first = cache.get("k", build, load)
    assert cache.builds == 1 and (tmp_path / "k" / "manifest.json").is_file()
    assert cache.get("k", build, load) == first and cache.builds == 1  # hit: nothing rebuilt
    assert ExportCache(tmp_path).valid(tmp_path / "k")
    # A flipped byte in the middle (checksum no longer matches) is rebuilt, not loaded.
    f = tmp_path / "k" / "model.bin"
    data = bytearray(f.read_bytes())
    data[1000] ^= 0xFF
    f.write_bytes(bytes(data))
    assert not cache.valid(tmp_path / "k")
    assert cache.get("k", build, load) == first and cache.builds == 2
    # A missing file or a garbled manifest is rebuilt too; another key is another entry.
    (tmp_path / "k" / "model.bin").unlink()
    assert cache.get("k", build, load) == first and cache.builds == 3
    (tmp_path / "k" / "manifest.json").write_text("{not json")
    assert cache.get("k", build, load) == first and cache.builds == 4
    cache.get("other", build, load)
    assert cache.builds == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["k", "other"]  # no temp folders left


def test_encoder_export_is_reused_keyed_by_weights_and_rebuilt_when_corrupt(frames, tmp_path) -> None:
    first = runtime_encoder("onnx", tmp_path)
    entry = tmp_path / first.runtime.key
    files = json.loads((entry / "manifest.json").read_text())["files"]
    assert set(files) == {"image.onnx", "text.onnx"}
    mtime = (entry / "image.onnx").stat().st_mtime_ns
    again = runtime_encoder("onnx", tmp_path)
    assert again.runtime.key == first.runtime.key and (entry / "image.onnx").stat().st_mtime_ns == mtime  # reused
    # Other weights (another seed) are another entry.
    other = runtime_encoder("onnx", tmp_path, seed=1)
    assert other.runtime.key != first.runtime.key and (tmp_path / other.runtime.key).is_dir()
    # A truncated model file is rebuilt and gives the same embeddings as before.
    pixels = first.preprocess_frames(frames[:2])
    before = first.encode_pixels(pixels)[0]
    (entry / "image.onnx").write_bytes((entry / "image.onnx").read_bytes()[:1000])
    rebuilt = runtime_encoder("onnx", tmp_path)
    assert (entry / "image.onnx").stat().st_size > 1000
    np.testing.assert_allclose(rebuilt.encode_pixels(pixels)[0], before, atol=1e-6)


def yolo_checkpoint(path: Path) -> str:
    """A random YOLO11n saved as a local ``*.pt`` whose boxes are small and spread over the frame.

    With random weights every box spans the whole frame (the box distribution favours no bin), so parity on
    boxes would be empty; biasing each side's distribution towards its first bins makes boxes of about one
    stride around each anchor, ranked by the random class scores."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    head = model.model.model[-1]
    with torch.no_grad():
        for branch in head.cv2:
            branch[-1].bias.copy_(-torch.arange(16, dtype=torch.float32).repeat(4))
    model.save(str(path))
    return str(path)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


@pytest.mark.parametrize("backend", BACKENDS)
def test_yolo_export_matches_torch_on_real_frames(backend, frames, tmp_path_factory, cache_dir) -> None:
    ckpt = yolo_checkpoint(tmp_path_factory.mktemp("yolo") / "yolo-small-boxes.pt")
    cfg = DetectConfig(model=ckpt, imgsz=160, conf=1e-4, max_det=8, device="cpu", export_cache=str(cache_dir))
    ref = YoloPredictor(cfg, ckpt)(frames)
    out = YoloPredictor(cfg.model_copy(update={"backend": backend}), ckpt)(frames)
    sizes = set()
    for r, o in zip(ref, out, strict=True):
        assert len(r.boxes) == len(o.boxes) > 0
        iou = box_iou(r.boxes, o.boxes)
        match = iou.argmax(axis=1)
        assert iou.max(axis=1).min() >= 0.99 and len(set(match.tolist())) == len(match)
        assert np.abs(r.conf - o.conf[match]).max() <= 1e-3
        assert [r.names[i] for i in range(len(match))] == [o.names[j] for j in match]
        sizes.update(np.round(r.boxes[:, 2:] - r.boxes[:, :2], 2).ravel().tolist())
    assert max(sizes) < 0.9  # the boxes compared are real boxes, not the whole frame


def test_yolo_export_is_reused(tmp_path) -> None:
    cfg = DetectConfig(model="yolo11n.yaml", imgsz=160, conf=1e-4, max_det=4, device="cpu", backend="onnx")
    cfg = cfg.model_copy(update={"export_cache": str(tmp_path)})
    YoloPredictor(cfg, "yolo11n.yaml")
    (entry,) = list(tmp_path.iterdir())
    assert entry.name.startswith("yolo-onnx-") and (entry / "model.onnx").is_file()
    mtime = (entry / "model.onnx").stat().st_mtime_ns
    second = YoloPredictor(cfg, "yolo11n.yaml")
    assert (entry / "model.onnx").stat().st_mtime_ns == mtime and list(tmp_path.iterdir()) == [entry]
    assert second.model.predictor.model.format == "onnx"


def test_backend_keeps_the_pipeline_version_keyframes_change_it(tmp_path) -> None:
    base = tiny_config(tmp_path)
    same = tiny_config(tmp_path, "encoder.backend=openvino", "detect.backend=onnx", f"encoder.export_cache={tmp_path}")
    assert same.pipeline_version() == base.pipeline_version()
    assert tiny_config(tmp_path, "decode.mode=keyframes").pipeline_version() != base.pipeline_version()
    assert tiny_config(tmp_path, "decode.mode=sample").pipeline_version() == base.pipeline_version()


def test_bf16_is_openvino_only_and_changes_the_pipeline_version(frames, torch_encoder, cache_dir, tmp_path) -> None:
    base = tiny_config(tmp_path)
    bf16 = tiny_config(tmp_path, "encoder.backend=openvino", "encoder.precision=bf16")
    assert bf16.pipeline_version() != base.pipeline_version()
    with pytest.raises(ValueError, match="needs backend openvino"):
        build_encoder(base.encoder.model_copy(update={"backend": "onnx", "precision": "bf16"})).setup()
    # bf16 where the CPU has it (fp32 elsewhere): close to torch, though not to fp32 parity.
    enc = runtime_encoder("openvino", cache_dir, precision="bf16")
    pixels = torch_encoder.preprocess_frames(frames)
    assert cosines(enc.encode_pixels(pixels)[0], torch_encoder.encode_pixels(pixels)[0]).min() >= 0.99
