"""Inference backends for the model stages: torch, ONNX Runtime or OpenVINO, with an on-disk export cache.

An export is built at ``setup()`` from the weights actually loaded and cached under
``<cache>/<kind>-<key>/``, where ``key`` hashes the weights' content (so a random-weights model is keyed by
what its seed and architecture produced) and the export settings. Every cache entry carries a manifest with
the SHA-256 of each file; an entry whose files are missing or do not match, or that the runtime cannot load,
is rebuilt rather than trusted. Builds go to a temporary folder renamed into place, so concurrent workers
building the same entry never see half a file.

Runtimes run in fp32 (OpenVINO is pinned to f32: on CPUs with bf16 support it would otherwise pick bf16) with
``threads`` intra-op threads, by default torch's own thread count, which the pipeline caps at each worker's
CPU share. ``precision="bf16"`` (OpenVINO only) lets OpenVINO compute in bfloat16 where the CPU has it
(AVX512_BF16 / AMX; elsewhere it stays fp32): faster, but outputs differ from torch beyond fp32 parity, so
the pipeline version changes with it. The exported files are fp32 either way (the hint is a compile option).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from operators.model_catalog import sha256

Backend = Literal["torch", "onnx", "openvino"]
Precision = Literal["fp32", "bf16"]
CACHE_ENV = "VIDSEARCH_EXPORT_CACHE"
MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """``$VIDSEARCH_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/vidsearch/exports`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vidsearch" / "exports"


def weights_digest(module: Any) -> str:
    """SHA-256 of a torch module's state dict (names, dtypes, shapes and bytes, in order)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def settings_key(**settings: Any) -> str:
    """A short stable hash of export settings (and library versions that shape the exported graph)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ExportCache:
    """Folders of exported model files keyed by content; ``builds`` counts how many were (re)built here."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.builds = 0

    def valid(self, folder: Path) -> bool:
        """Every file the manifest lists is there with its checksum (and nothing the manifest lacks is needed)."""
        try:
            files = json.loads((folder / MANIFEST).read_text())["files"]
            return bool(files) and all(sha256(folder / name) == digest for name, digest in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def get(self, key: str, build: Callable[[Path], None], load: Callable[[Path], Any]) -> Any:
        """``load(folder)`` of the cached entry ``key``; ``build(folder)`` first when it is missing or corrupt."""
        folder = self.root / key
        if self.valid(folder):
            try:
                return load(folder)
            except Exception:  # checksums match what was written, but the runtime refuses it: rebuild
                pass
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            build(tmp)
            self.builds += 1
            files = {p.relative_to(tmp).as_posix(): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1))
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(tmp, folder)
            except OSError:  # another worker put a complete entry in place first: use it
                if not self.valid(folder):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return load(folder)


class Runtime(Protocol):
    def __call__(self, inputs: dict[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]: ...


def default_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def onnx_runtime(path: Path, threads: int | None = None) -> Runtime:
    """An ONNX Runtime CPU session as ``run(inputs) -> outputs`` in graph output order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda inputs: session.run(names, inputs)


def check_precision(backend: Backend, precision: Precision) -> None:
    if precision != "fp32" and backend != "openvino":
        raise ValueError(f"precision {precision} needs backend openvino (backend is {backend})")


def openvino_config(threads: int | None = None, precision: Precision = "fp32") -> dict[str, Any]:
    import openvino as ov

    return {
        "INFERENCE_NUM_THREADS": threads or default_threads(),
        "INFERENCE_PRECISION_HINT": ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
        "PERFORMANCE_HINT": "LATENCY",
    }


def openvino_runtime(path: Path, threads: int | None = None, precision: Precision = "fp32") -> Runtime:
    """An OpenVINO CPU compiled model as ``run(inputs) -> outputs`` in graph output order."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", openvino_config(threads, precision))
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: a server's worker threads take turns

    def run(inputs: dict[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        with lock:
            result = request.infer(inputs)
            return [np.array(result[out]) for out in compiled.outputs]

    return run


def export_onnx(
    module: Any, example: Sequence[Any], path: Path, inputs: list[str], outputs: list[str], dynamic: dict[str, Any]
) -> None:
    """``torch.onnx.export`` (TorchScript exporter: no onnxscript dependency) to ``path``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        _export(module, example, path, inputs, outputs, dynamic)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _export(
    module: Any, example: Sequence[Any], path: Path, inputs: list[str], outputs: list[str], dynamic: dict[str, Any]
) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(example),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def onnx_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """``openvino.convert_model`` of an ONNX file, saved as IR (.xml + .bin) in fp32 (no fp16 compression)."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def versions() -> dict[str, str]:
    """Library versions that shape an exported graph (part of every cache key)."""
    import torch

    out: dict[str, str] = {"torch": str(torch.__version__)}
    for name in ("onnx", "onnxruntime", "openvino"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "-"
    return out


def no_autoinstall() -> None:
    """Make ultralytics raise instead of pip-installing a missing requirement at run time."""
    os.environ["YOLO_AUTOINSTALL"] = "false"  # read when ultralytics is first imported
    import ultralytics.utils.checks as checks

    checks.AUTOINSTALL = False  # already imported: its module constant


def yolo_export(
    model: Any, backend: Backend, cache: ExportCache, imgsz: int, threads: int | None, precision: Precision = "fp32"
) -> Any:
    """An ultralytics ``YOLO`` on ``backend``'s export of ``model`` (ultralytics' own exporter, dynamic shapes so
    that letterboxing matches the torch path), cached by weights and settings; fp32, ``threads`` threads."""
    import ultralytics
    from ultralytics import YOLO

    no_autoinstall()
    task = model.task
    key = settings_key(
        export=1,
        weights=weights_digest(model.model),
        task=task,
        imgsz=imgsz,
        ultralytics=ultralytics.__version__,
        versions=versions(),
    )

    def build(folder: Path) -> None:
        folder.mkdir(parents=True)
        pt = folder / "model.pt"
        model.save(pt)
        YOLO(str(pt), task=task).export(
            format=backend,
            dynamic=True,
            imgsz=imgsz,
            half=False,
            int8=False,
            simplify=True,
            device="cpu",
            verbose=False,
        )
        pt.unlink()

    def load(folder: Path) -> Any:
        path = folder / ("model.onnx" if backend == "onnx" else "model_openvino_model")
        yolo = YOLO(str(path), task=task)
        # The first predict builds ultralytics' predictor and loads the runtime (and fails on a bad file).
        yolo.predict(np.zeros((32, 32, 3), np.uint8), imgsz=imgsz, device="cpu", verbose=False)
        assert yolo.predictor is not None
        _pin_runtime(yolo.predictor.model.backend, backend, path, threads, precision)
        return yolo

    return cache.get(f"yolo-{backend}-{key}", build, load)


def _pin_runtime(runner: Any, backend: Backend, path: Path, threads: int | None, precision: Precision) -> None:
    """Replace the session ultralytics opened (all cores, default precision) by one with our threads and
    precision."""
    if backend == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        runner.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    else:
        import openvino as ov

        core = ov.Core()
        xml = next(path.glob("*.xml"))
        runner.ov_compiled_model = core.compile_model(
            core.read_model(str(xml)), "CPU", openvino_config(threads, precision)
        )
