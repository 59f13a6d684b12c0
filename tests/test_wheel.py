"""The wheel installs anywhere: built from this checkout and installed (not editable) into a fresh virtual
environment, its ``vidsearch`` command indexes and searches with the shipped ``tiny`` config from an unrelated
folder. The same index run shows that a clean run is quiet: the progress bar, the random-weights notice and the
summary, nothing from Ray, Ray Data or LanceDB.

The environment sees the packages of the environment the tests run in, so the dependencies need no download:
``--system-site-packages`` for a system Python, and a ``.pth`` file naming the running virtual environment's
site-packages when the tests run inside one (a venv made from a venv's interpreter would otherwise see the base
interpreter's packages, not the running ones). The project itself is installed from the wheel with ``--no-deps``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

CLIP = "mdn/flower.webm"
#: What a clean index run may print besides the progress bar: the summary (stdout) and the notice (stderr).
EXPECTED_PREFIXES = ("run ", "videos: ", "rows: ", "stages: ", "WARNING NOTE: ")
#: One redraw of the progress bar, whole: nothing else written into its line.
PROGRESS = re.compile(r"indexing: +\d+%\|[^|]*\| \d+/\d+ \[[^\]]*\]")


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:  # type: ignore[no-untyped-def]
    """(bin folder of a fresh venv holding the installed wheel, its environment, an unrelated working folder)."""
    work = tmp_path_factory.mktemp("wheel")
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", ROOT],
                 work, dict(os.environ))  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (work / "dist").glob("vidsearch-*.whl")
    # No pip inside the venv (faster); the system's pip installs into it with --python.
    made = _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", "venv"], work, dict(os.environ)
    )
    assert made.returncode == 0, made.stderr[-3000:]
    python = work / "venv" / "bin" / "python"
    if sys.prefix != sys.base_prefix:  # running inside a venv: the new one sees its packages, not the base's
        purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, {})
        Path(purelib.stdout.strip(), "running-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index"]
    installed = _run([*install, "--force-reinstall", wheel], work, dict(os.environ))
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIDSEARCH_LOG_DIR"] = str(work / "logs")
    elsewhere = work / "elsewhere"  # no configs/, no checkout on sys.path
    elsewhere.mkdir()
    return python.parent, env, elsewhere


def test_the_installed_package_is_the_wheel_not_the_checkout(venv) -> None:  # type: ignore[no-untyped-def]
    bin_dir, env, elsewhere = venv
    code = "import configs, operators, pipeline, run_pipeline; print(configs.__file__, pipeline.__file__)"
    out = _run([bin_dir / "python", "-c", code], elsewhere, env)
    assert out.returncode == 0, out.stderr[-3000:]
    files = [Path(p) for p in out.stdout.split()]
    assert all(bin_dir.parent in p.parents for p in files), files  # inside the venv's site-packages
    shipped = Path(files[0]).parent
    assert {p.name for p in shipped.glob("*.yaml")} >= {"default.yaml", "tiny.yaml", "cluster-gpu.yaml"}
    assert {p.name for p in (shipped / "trackers").glob("*.yaml")} >= {"bytetrack.yaml", "botsort.yaml"}


def test_index_and_search_from_an_unrelated_folder_and_a_clean_run_is_quiet(venv, testdata) -> None:  # type: ignore[no-untyped-def]
    bin_dir, env, elsewhere = venv
    videos = elsewhere / "videos"
    videos.mkdir()
    shutil.copy(testdata / CLIP, videos)
    db = elsewhere / "db"
    index = _run([bin_dir / "vidsearch", "index", "videos", "--config", "tiny", "--db", db], elsewhere, env)
    assert index.returncode == 0, (index.stdout + index.stderr)[-3000:]
    assert "videos: 1 indexed" in index.stdout

    # What reached the terminal, in pieces: the progress bar redraws itself with carriage returns, so anything
    # written into its line (Ray's C++ core worker writes to fd 2 unprompted) is a piece of its own or spoils one.
    pieces = [p for p in re.split(r"[\r\n]", index.stdout + index.stderr) if p.strip()]
    bars = [p for p in pieces if PROGRESS.fullmatch(p.strip())]
    others = [p for p in pieces if p not in bars]
    print(f"clean index run: {len(bars)} progress redraws and {len(others)} lines")  # shown with -rP
    assert not [p for p in pieces if "core_worker" in p or re.search(r"\] [EWI] ", p)], pieces  # Ray's C++ log
    assert [p for p in others if not p.startswith(EXPECTED_PREFIXES)] == [], others
    assert len(others) == 5, others  # the summary's 4 lines and the notice, once each
    assert bars and bars[-1].strip().split("|")[2].lstrip().startswith("1/1"), bars  # the bar ran to its end
    logs = list((elsewhere.parent / "logs").glob("index-*.log"))
    log = logs[0].read_text() if len(logs) == 1 else ""
    assert "Started a local Ray instance" in log  # Ray's lines went to the file

    search = _run(
        [bin_dir / "vidsearch", "search", "a flower", "--config", "tiny", "--db", db, "--json"], elsewhere, env
    )
    assert search.returncode == 0, search.stderr[-3000:]
    hits = json.loads(search.stdout)
    assert hits and {Path(h["path"]).name for h in hits} == {Path(CLIP).name}
