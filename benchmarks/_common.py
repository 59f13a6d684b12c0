"""Helpers shared by the benchmark scripts: the machine line, timing, percentiles, synthetic embeddings.

Every benchmark measures its baseline and its candidate in the same run and prints ratios, because the
machine these numbers come from is shared and its absolute speed drifts.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as `python benchmarks/x.py` from anywhere
TESTDATA = Path(os.environ.get("VIDSEARCH_TESTDATA", ROOT.parent / "shared" / "testdata")).resolve()
os.environ.setdefault("YOLO_OFFLINE", "1")  # random-weight YOLO from its yaml: never reach for the network
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("LANCE_LOG", "error")  # lance warns on every query that selects columns without _distance

#: Production architectures with random weights, nothing downloaded (configs/default.yaml + these overrides).
PRODUCTION_RANDOM = ["encoder.pretrained=null", "detect.model=yolo11n.yaml"]
#: Random YOLO weights score every box near 2e-4: these make them produce boxes so tracking and region
#: features do their real amount of work (see configs/trackers/bytetrack-random.yaml).
RANDOM_BOXES = ["detect.conf=0.0001", "detect.tracker_config=configs/trackers/bytetrack-random.yaml"]


def machine() -> str:
    """One line naming the machine, for the header of every result."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, load avg {load:.2f}, "
        f"{dt.datetime.now().isoformat(timespec='seconds')}"
    )


def header(title: str) -> None:
    print(f"# {title}\n# {machine()}\n# argv: {' '.join(sys.argv)}", flush=True)


def clock(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best-of-``repeat`` wall time of ``fn()`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def timed(fn: Callable[[int], object], n: int) -> tuple[list[float], list[float]]:
    """``fn(i)`` for i in 0..n-1: the wall and process-CPU milliseconds of each call."""
    wall, cpu = [], []
    for i in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    return wall, cpu


def pct(values: list[float] | npt.NDArray[np.float64], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def table(rows: list[dict[str, object]], floatfmt: str = ".3g") -> str:
    """A Markdown table of ``rows`` (dicts with the same keys), for pasting into BENCHMARKS.md."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def cell(v: object) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def clip(rel: str) -> str:
    path = TESTDATA / rel
    if not path.exists():
        raise SystemExit(f"test media {rel} is missing under {TESTDATA} (set VIDSEARCH_TESTDATA)")
    return str(path)


class ClusteredEmbeddings:
    """A realistic stand-in for CLIP-like embeddings: L2-normalised points from a mixture of many anisotropic
    Gaussian clusters of very unequal sizes, all sharing a common mean direction (real CLIP embeddings sit in
    a narrow cone: random pairs have cosine well above 0).

    Each cluster has a random low-rank basis with decaying scales (elongated, not spherical) plus a little
    isotropic noise. Uniform noise would make every neighbour equally far and ANN recall meaningless.
    """

    def __init__(self, dim: int = 512, n_clusters: int = 2000, rank: int = 24, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.rank, self.n_clusters = dim, rank, n_clusters
        common = _unit(rng.standard_normal(dim))
        self.centers = _unit(_unit(rng.standard_normal((n_clusters, dim))) + 0.8 * common).astype(np.float32)
        self.bases = (rng.standard_normal((n_clusters, dim, rank)) / np.sqrt(dim)).astype(np.float32)
        self.scales = (0.45 * np.arange(1, rank + 1) ** -0.6).astype(np.float32)
        sizes = 1.0 / (np.arange(n_clusters) + 20.0) ** 0.9  # Zipf-like: a few huge clusters, a long tail
        self.p = sizes / sizes.sum()
        self.noise = 0.12

    def sample(self, n: int, seed: int) -> npt.NDArray[np.float32]:
        """``n`` points (float32, unit length), reproducible from ``seed``."""
        rng = np.random.default_rng(seed)
        labels = rng.choice(self.n_clusters, size=n, p=self.p)
        out = np.empty((n, self.dim), dtype=np.float32)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(self.n_clusters + 1))
        for c in range(self.n_clusters):
            rows = order[bounds[c] : bounds[c + 1]]
            if len(rows) == 0:
                continue
            z = rng.standard_normal((len(rows), self.rank)).astype(np.float32) * self.scales
            out[rows] = self.centers[c] + z @ self.bases[c].T
        out += rng.standard_normal(out.shape, dtype=np.float32) * (self.noise / np.sqrt(self.dim))
        return _unit(out).astype(np.float32)

    def chunks(self, n: int, chunk: int = 100_000, seed: int = 1) -> Iterator[npt.NDArray[np.float32]]:
        for i, start in enumerate(range(0, n, chunk)):
            yield self.sample(min(chunk, n - start), seed * 1_000_003 + i)


def _unit(x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def exact_topk(data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Exact top-``k`` by cosine (inner product of unit vectors), in blocks to bound memory."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 64):
        sims = queries[s : s + 64] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        top = np.take_along_axis(sims, part, axis=1)
        out[s : s + 64] = np.take_along_axis(part, np.argsort(-top, axis=1), axis=1)
    return out
