"""The download path of Hugging Face checkpoints (``operators/weights.py``), against a local server on 127.0.0.1
that speaks the hub's file API (``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit``,
``ETag`` and ``Content-Length``; ``X-Error-Code`` on a 404) and serves a tiny random ViLT-VQA the test saved with
``save_pretrained``, in the repository's layout: a download, the cache reused with the server gone, a repository
that is not there, a file cut short mid-download, and a server that went away. The user gets one sentence
(``MissingCheckpointError``) and never a half-written cache entry.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from operators.base import MissingCheckpointError

REPO = "vidsearch-test/tiny-vilt-vqa"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ARCH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
        "image_size": 64, "patch_size": 16, "max_position_embeddings": 128}  # fmt: skip


class Hub:
    """The hub's file API over the files of ``root`` (one repository, ``REPO``); ``truncate`` names a file whose
    body stops halfway (the connection closes, Content-Length promised the whole file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.truncate: str | None = None
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                    return self._tree("/".join(parts[2:4]), "/".join(parts[6:]))
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._missing("RepoNotFound")
                repo, rel = "/".join(parts[:2]), "/".join(parts[4:])
                path = hub.root / rel
                if repo != REPO:
                    return self._missing("RepoNotFound")
                if not path.is_file():
                    return self._missing("EntryNotFound")
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    cut = len(data) // 2 if rel == hub.truncate else len(data)
                    self.wfile.write(data[:cut])
                    if cut < len(data):
                        self.close_connection = True

            def _tree(self, repo: str, rel: str) -> None:
                """``/api/models/{repo}/tree/{revision}/{path}``: the files under a folder (transformers lists
                ``additional_chat_templates``)."""
                folder = hub.root / rel
                if repo != REPO:
                    return self._missing("RepoNotFound")
                if not folder.is_dir():
                    return self._missing("EntryNotFound")
                items = [{"type": "file", "path": str(p.relative_to(hub.root)), "size": p.stat().st_size}
                         for p in sorted(folder.iterdir()) if p.is_file()]  # fmt: skip
                data = json.dumps(items).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _missing(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", f"{code} (vidsearch test hub)")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory) -> Path:
    """A tiny random ViLT-VQA and its processor, saved as its repository holds them."""
    from operators.vqa import ViltVqa, VqaConfig

    root = tmp_path_factory.mktemp("hub") / "tiny-vilt-vqa"
    model, processor = ViltVqa(VqaConfig(model="vilt", architecture={"vilt": ARCH})).build_random(ARCH)
    model.save_pretrained(root)
    processor.save_pretrained(root)
    assert (root / "model.safetensors").is_file() and (root / "config.json").is_file()
    return root


@pytest.fixture
def hub(repo_files, monkeypatch, tmp_path) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    """The server, with HF_ENDPOINT pointing at it (also in huggingface_hub's constants, read at import) and a
    cache of the test's own."""
    import huggingface_hub.constants as constants

    server = Hub(repo_files)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    # huggingface_hub retries a failed request 5 times with backoff (1 to 8 s) and a cut-short file in place;
    # the waits only slow the test down (the tries still happen): time.sleep is a no-op for the test's length
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda s: None)
    monkeypatch.setattr(huggingface_hub.file_download.time, "sleep", lambda s: None)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    yield server
    server.stop()


def _load(cache: Path, ckpt: str = REPO) -> tuple[Any, Any]:
    from transformers import ViltForQuestionAnswering, ViltProcessor

    from operators.vqa import VqaConfig, load_checkpoint

    cfg = VqaConfig(model="vilt", checkpoint=ckpt, cache_dir=str(cache), device="cpu")
    return load_checkpoint("vilt", ckpt, cfg, ViltForQuestionAnswering, ViltProcessor)


def _one_sentence(exc: pytest.ExceptionInfo[MissingCheckpointError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.endswith("."), text
    return text


def test_download_then_the_cache_is_reused_with_the_server_gone(hub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    model, processor = _load(cache)
    assert model.config.hidden_size == 32 and processor is not None
    got = {p for m, p in hub.requests if m == "GET"}
    assert any(p.endswith("/model.safetensors") for p in got), hub.requests
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").is_file()
    hub.stop()  # the second load needs nothing from the network
    hub.requests.clear()
    model, _ = _load(cache)
    assert model.config.hidden_size == 32 and hub.requests == []


def test_a_repository_that_is_not_there_is_one_sentence(hub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MissingCheckpointError) as exc:
        _load(tmp_path / "cache", "vidsearch-test/no-such-model")
    text = _one_sentence(exc)
    assert "vidsearch-test/no-such-model" in text and "vqa.checkpoint" in text
    assert any(p.startswith("/vidsearch-test/no-such-model/") for _, p in hub.requests)  # it did ask the server


def test_a_file_cut_short_mid_download_leaves_no_cache_entry(hub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub.truncate = "model.safetensors"
    cache = tmp_path / "cache"
    with pytest.raises(MissingCheckpointError) as exc:
        _load(cache)
    assert REPO in _one_sentence(exc)
    blobs = cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    whole = hashlib.sha256((hub.root / "model.safetensors").read_bytes()).hexdigest()
    assert not (blobs / whole).exists(), "a cut-short file must never become a cache entry"
    assert not list(cache.rglob("snapshots/*/model.safetensors"))
    hub.truncate = None  # the next run downloads it whole
    model, _ = _load(cache)
    assert model.config.hidden_size == 32


def test_a_server_that_went_away_is_one_sentence(hub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub.stop()
    with pytest.raises(MissingCheckpointError) as exc:
        _load(tmp_path / "cache")
    assert REPO in _one_sentence(exc)
    assert not list((tmp_path / "cache").rglob("snapshots/*/*"))
