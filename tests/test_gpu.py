"""CUDA paths of the model stages (marked ``gpu``; skipped without a CUDA device): the encoders under fp16
autocast and the detector with ``half`` give the same answers as fp32 on the CPU, within fp16 tolerance."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def frames(testdata):
    from operators.decode import Decode, DecodeConfig

    chunk = next(Decode(DecodeConfig(max_side=320)).iter_video("gpu", str(testdata / "mmaction2" / "test.mp4")))
    return list(chunk["frame"][:4])


def _encoder(device: str):
    from operators.encoders import EncoderConfig, OpenClipEncoder

    enc = OpenClipEncoder(EncoderConfig(model="ViT-B-32", pretrained=None, device=device, batch_size=4))
    enc.setup()
    return enc


def test_image_and_text_encoders_on_cuda_match_cpu(frames):
    cpu, gpu = _encoder("cpu"), _encoder("cuda")
    assert next(gpu.model.parameters()).is_cuda
    pixels = cpu.preprocess_frames(frames)
    e_cpu, grid_cpu = cpu.encode_pixels(pixels)
    e_gpu, grid_gpu = gpu.encode_pixels(pixels)
    assert e_gpu.dtype == np.float32 and e_gpu.shape == e_cpu.shape == (4, 512)
    assert np.allclose(np.linalg.norm(e_gpu, axis=1), 1.0, atol=1e-3)
    assert np.min(np.sum(e_cpu * e_gpu, axis=1)) > 0.99  # same weights (seeded), fp16 vs fp32
    assert grid_gpu.shape == grid_cpu.shape == (4, 7, 7, 768)
    t_cpu = cpu.encode_text(["a dog on a sofa", "a swimming pool"])
    t_gpu = gpu.encode_text(["a dog on a sofa", "a swimming pool"])
    assert np.min(np.sum(t_cpu * t_gpu, axis=1)) > 0.99
    tok = gpu.encode_text_tokens("a dog on a sofa")
    assert tok.shape[1] == 512 and np.allclose(np.linalg.norm(tok, axis=1), 1.0, atol=1e-3)


def test_embed_operator_with_regions_on_cuda(frames):
    from operators.embed import Embed
    from operators.encoders import EncoderConfig
    from operators.regions import RegionConfig

    cfg = EncoderConfig(model="ViT-B-32", pretrained=None, device="cuda")
    op = Embed(cfg, RegionConfig(mode="roi"))
    op.setup()
    pixels = _encoder("cpu").preprocess_frames(frames)
    boxes = np.empty(len(frames), dtype=object)
    boxes[:] = [np.array([[0.1, 0.1, 0.5, 0.6], [0.4, 0.2, 0.9, 0.9]], np.float32)] * len(frames)
    out = op({"pixels": pixels, "frame": np.stack(frames), "error": np.full(len(frames), ""), "det_boxes": boxes})
    assert out["embedding"].shape == (4, 512)
    assert all(r.shape == (2, 512) and np.isfinite(r).all() for r in out["region_emb"])


def test_detector_half_on_cuda_matches_cpu(frames):
    from operators.detect_track import DetectConfig, YoloPredictor

    cfg = dict(model="yolo11n.yaml", conf=0.0001, max_det=20, imgsz=320)
    cpu = YoloPredictor(DetectConfig(device="cpu", **cfg), "yolo11n.yaml")
    gpu = YoloPredictor(DetectConfig(device="cuda", half=True, **cfg), "yolo11n.yaml")
    d_cpu, d_gpu = cpu(frames), gpu(frames)
    assert len(d_gpu) == len(frames)
    for a, b in zip(d_cpu, d_gpu, strict=True):
        assert b.boxes.dtype == np.float32 and b.boxes.shape[1] == 4
        assert len(b.boxes) > 0 and np.all((b.boxes >= 0) & (b.boxes <= 1))
        # Random weights score every box alike, so which boxes survive can differ in fp16; the scores cannot.
        assert abs(float(a.conf.max()) - float(b.conf.max())) < 1e-3
