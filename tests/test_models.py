"""Configuration, checkpoint loading through the production path, and the missing-checkpoint sentence."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from operators.base import MissingCheckpointError
from operators.detect_track import DetectConfig, YoloPredictor, resolve_yolo
from operators.encoders import EncoderConfig, build_encoder, resolve_checkpoint
from pipeline.config import load_config
from pipeline.errors import ConfigError
from tests.helpers import ROOT, clip, tiny_config


def test_unknown_key_is_an_error_naming_it(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder:\n  modle: ViT-B-32\n")
    with pytest.raises(ConfigError, match=r"encoder\.modle: unknown key"):
        load_config(bad)


def test_set_overrides_are_typed_and_validated(tmp_path) -> None:
    cfg = load_config("tiny", ["decode.fps=2", "segments.window_s=8", f"db.path={tmp_path}"])
    assert cfg.decode.fps == 2.0 and cfg.segments.window_s == 8.0 and cfg.db.path == str(tmp_path)
    with pytest.raises(ConfigError, match="decode.fps"):
        load_config("tiny", ["decode.fps=fast"])
    with pytest.raises(ConfigError, match="nosuch"):
        load_config("tiny", ["nosuch.key=1"])


def test_pipeline_version_changes_with_what_changes_rows(tmp_path) -> None:
    base = tiny_config(tmp_path)
    assert base.pipeline_version() == tiny_config(tmp_path / "other").pipeline_version()  # db path is irrelevant
    assert base.pipeline_version() != tiny_config(tmp_path, "decode.fps=2").pipeline_version()
    assert base.pipeline_version() != tiny_config(tmp_path, "encoder.seed=1").pipeline_version()


def test_default_config_names_real_checkpoints() -> None:
    cfg = load_config("default")
    import open_clip

    assert cfg.encoder.pretrained in open_clip.list_pretrained_tags_by_model(cfg.encoder.model)
    assert cfg.detect.model == "yolo11n.pt"
    assert not cfg.random_weights and load_config("tiny").random_weights


def test_encoder_checkpoint_from_a_local_file_gives_identical_embeddings(tmp_path) -> None:
    enc_cfg = tiny_config(tmp_path).encoder
    random_enc = build_encoder(enc_cfg)
    random_enc.setup()
    # Perturb the weights so that loading them cannot coincide with the seeded random init.
    with torch.no_grad():
        for p in random_enc.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "tiny-clip.pt"
    torch.save(random_enc.model.state_dict(), path)

    loaded = build_encoder(enc_cfg.model_copy(update={"pretrained": str(path)}))
    loaded.setup()  # the production path: resolve_checkpoint -> open_clip.create_model_and_transforms(pretrained=path)
    frames = [np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)]
    np.testing.assert_allclose(loaded.encode_images(frames), random_enc.encode_images(frames), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text(["a dog"]), random_enc.encode_text(["a dog"]), atol=1e-6)
    seeded = build_encoder(enc_cfg)
    seeded.setup()
    assert not np.allclose(seeded.encode_images(frames), loaded.encode_images(frames), atol=1e-4)


def test_missing_encoder_checkpoint_is_one_clear_sentence(tmp_path, monkeypatch) -> None:
    with pytest.raises(MissingCheckpointError, match=r"does not exist: set encoder.pretrained"):
        resolve_checkpoint(EncoderConfig(model="ViT-B-32", pretrained=str(tmp_path / "nope.pt")))
    # A pretrained tag that is not cached and cannot be fetched (hub offline) names the checkpoint and the fix.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingCheckpointError) as err:
        resolve_checkpoint(EncoderConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path)))
    msg = str(err.value)
    assert "ViT-B-32/laion2b_s34b_b79k" in msg and "set encoder.pretrained to the local file" in msg
    assert msg.count(". ") == 0  # one sentence


def test_cli_stops_before_work_when_a_checkpoint_is_missing(tmp_path) -> None:
    db = tmp_path / "db"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_pipeline.py"),
            "index",
            clip("mdn/flower.webm"),
            "--config",
            "tiny",
            "--db",
            str(db),
            "--set",
            f"encoder.pretrained={tmp_path / 'missing.pt'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "missing.pt' does not exist" in proc.stderr
    assert not (db / "videos.lance").exists()  # nothing was written


def test_yolo_checkpoint_from_a_local_file(tmp_path) -> None:
    from ultralytics import YOLO

    torch.manual_seed(1)
    model = YOLO("yolo11n.yaml")
    path = tmp_path / "tiny-yolo.pt"
    model.save(str(path))
    cfg = DetectConfig(model=str(path), conf=1e-4, imgsz=160, max_det=5, device="cpu")
    assert resolve_yolo(cfg.model) == str(path)
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    loaded = YoloPredictor(cfg, resolve_yolo(cfg.model))([frame])[0]
    direct = model.predict(frame[..., ::-1].copy(), conf=1e-4, imgsz=160, max_det=5, verbose=False)[0]
    np.testing.assert_allclose(loaded.boxes, direct.boxes.xyxyn.numpy(), atol=1e-5)
    assert len(loaded.names) == len(loaded.boxes)


def test_missing_yolo_checkpoint_is_one_clear_sentence(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(MissingCheckpointError, match=r"Detector checkpoint 'yolo-missing.pt' is not on disk"):
        resolve_yolo("yolo-missing.pt")


def test_query_text_pass_gives_the_pooled_embedding_and_tokens(tmp_path) -> None:
    enc = build_encoder(tiny_config(tmp_path).encoder)
    enc.setup()
    pooled, tokens = enc.encode_text_query("a man opens a car door")
    np.testing.assert_allclose(pooled, enc.encode_text(["a man opens a car door"])[0], atol=1e-5)
    assert tokens.shape == (8, enc.dim)  # start + 6 words + end
    np.testing.assert_allclose(np.linalg.norm(tokens, axis=1), 1.0, atol=1e-5)
    assert any(np.allclose(t, pooled, atol=1e-5) for t in tokens)  # the end-of-text token is the pooled one


def test_the_random_weights_notice_names_exactly_the_random_models() -> None:
    assert load_config("default").random_notice() is None  # every model trained: no notice
    # The default config with only the encoder's weights dropped used to run random weights silently.
    notice = load_config("default", ["encoder.pretrained=null"]).random_notice()
    assert notice is not None and "image/text encoder (ViT-B-32)" in notice and "detector" not in notice
    tiny = load_config("tiny", ["detect.model=yolo11n.yaml"]).random_models()
    want = ["the image/text encoder (vidsearch-tiny-vit)", "the detector (yolo11n.yaml)", "the captioner (blip)"]
    assert tiny == want
