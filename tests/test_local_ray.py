"""``index`` without ``--address`` starts its own local Ray, whatever ``ray start`` left on the machine: a stale
address file (``ray_current_cluster`` of a stopped ``ray start --head``) is ignored, and a live head is not joined
(one line says so). Subprocesses with ``RAY_TMPDIR`` pointing at a folder of the test's own, over an empty folder
of videos (Ray starts, nothing is indexed)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short temp root for Ray (its socket paths must stay under 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vsr", dir="/tmp"))
    (path / "ray").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _index(ray_tmp: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    (ray_tmp / "videos").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TMPDIR")}
    env.update(RAY_TMPDIR=str(ray_tmp), VIDSEARCH_LOG_DIR=str(ray_tmp / "logs"))
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "index", str(ray_tmp / "videos"), "--config", "tiny",
           "--db", str(ray_tmp / "db"), "--no-progress"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    (log,) = (ray_tmp / "logs").glob("index-*.log")
    return run, log.read_text()


def test_a_stale_ray_address_file_is_ignored(ray_tmp) -> None:  # type: ignore[no-untyped-def]
    stale = f"127.0.0.1:{_free_port()}"  # a stopped cluster: nothing answers there
    (ray_tmp / "ray" / "ray_current_cluster").write_text(stale)
    run, log = _index(ray_tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "videos: 0 indexed" in run.stdout
    assert "not joined" not in run.stderr  # nothing runs there: no line on the terminal
    assert f"names {stale}, which does not answer" in log


def _processes_under(folder: Path) -> list[int]:
    """The pids of processes whose command line names ``folder`` (the head's Ray processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_live_ray_start_cluster_is_not_joined_and_says_so(ray_tmp) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    head = [shutil.which("ray") or "ray", "start", "--head", f"--port={port}", f"--temp-dir={ray_tmp / 'ray'}",
            "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = subprocess.run(head, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        address = (ray_tmp / "ray" / "ray_current_cluster").read_text().strip()
        assert address.endswith(f":{port}")
        run, log = _index(ray_tmp)
        assert run.returncode == 0, run.stderr[-3000:]
        notes = [line for line in run.stderr.splitlines() if "not joined" in line]
        assert len(notes) == 1 and address in notes[0], run.stderr
        assert "Traceback" not in run.stderr and "videos: 0 indexed" in run.stdout
        assert "Started a local Ray instance" in log  # its own Ray, not the head's
    finally:
        pids = _processes_under(ray_tmp / "ray")  # only the head's processes: never `ray stop` (it stops every Ray)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
