"""A newcomer's mistakes, every command against every kind of wrong database: a missing folder, an empty one, a
database from an older version (tables lacking later columns, and the later tables), a read-only folder and an
unreachable ``s3://`` endpoint. Each cell ends in one ``error:`` sentence and exit 2, or, where the command can
serve it (readers of an older or read-only database), in exit 0; never a traceback.

Cells that do not apply, and why:
- ``index`` on a missing or empty folder creates the database (what every index test does).
- ``evaluate`` has no ``--db`` (it builds its databases under ``--work-dir``): only the read-only work folder
  applies; a missing or empty work folder is created or filled, an old or s3 database is not its input.
- ``ask`` and ``serve`` on a read-only folder read as ``search`` and ``status`` do (covered there); both write
  a random checkpoint or bind a port first, which says nothing about the folder.

In-process (``pipeline.cli.main``) with the session's Ray; the read-only cells run in one subprocess as root
without the DAC capabilities (``setpriv``), since root writes anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.store import schema as S
from tests.helpers import ROOT

SEARCH_LEVELS = ("segments", "frames", "tracks", "texts", "speech")
COMMANDS = (
    "index",
    *(f"search-{level}" for level in SEARCH_LEVELS),
    "maintain",
    "status",
    "prune",
    "evaluate",
    "ask",
    "serve",
)
CONDITIONS = ("missing", "empty", "old", "readonly", "s3")
#: What each cell must end in: 0 (served) or 2 (one sentence); a reason string: the cell does not apply.
EXPECTED: dict[tuple[str, str], int | str] = {
    **{(c, "missing"): 2 for c in COMMANDS},
    **{(c, "empty"): 2 for c in COMMANDS},
    **{(c, "old"): 0 for c in COMMANDS},
    **{(c, "s3"): 2 for c in COMMANDS},
    ("index", "missing"): "index creates the database",
    ("index", "empty"): "index creates the database",
    ("search-texts", "old"): 2,  # the database predates on-screen text: said, not "no results"
    ("search-speech", "old"): 2,
    **{("evaluate", c): "evaluate takes no --db" for c in ("missing", "empty", "old", "s3")},
    **{(c, "readonly"): 0 for c in COMMANDS},
    ("index", "readonly"): 2,
    ("maintain", "readonly"): 2,
    ("prune", "readonly"): 2,
    ("evaluate", "readonly"): 2,
    ("ask", "readonly"): "reads as search and status do",
    ("serve", "readonly"): "reads as search and status do",
}
CELLS = [(c, k) for c in COMMANDS for k in CONDITIONS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def argv(command: str, db: str, videos: str, video_id: str) -> list[str]:
    """The command line of ``command`` against ``db`` (``--config tiny``)."""
    if command.startswith("search-"):
        cmd = ["search", "a person", "--level", command.removeprefix("search-")]
    else:
        cmd = {
            "index": ["index", videos, "--no-progress"],
            "maintain": ["maintain"],
            "status": ["status"],
            "prune": ["prune", "--dry-run"],
            "ask": ["ask", "what is this?", "--video", video_id, "--t", "0.5"],
            "serve": ["serve", "--port", str(_free_port())],
        }.get(command, [])
    if command == "evaluate":
        return ["evaluate", "--manifest", str(ROOT / "eval" / "text_queries.yaml"), "--config", "tiny",
                "--work-dir", db]  # fmt: skip
    return [*cmd, "--config", "tiny", "--db", db]


def make_old(src: str, dst: Path) -> None:
    """A copy of database ``src`` as an older version wrote it: no columns added since tables were first released
    (``schema.is_added``), no on-screen text or speech tables."""
    import lancedb

    shutil.copytree(src, dst)
    db = lancedb.connect(str(dst))
    for name in db.list_tables().tables:
        if name in (*S.CONTENT_TABLES, S.VIDEOS):
            table = db.open_table(name)
            drop = [f.name for f in S.table_schema(name, 64) if S.is_added(f) and f.name in table.schema.names]
            if drop:
                table.drop_columns(drop)
    for name in (S.TEXTS, S.SPEECH):
        db.drop_table(name)


@pytest.fixture
def restore_logging(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VIDSEARCH_LOG_DIR", str(tmp_path / "logs"))
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
            h.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.captureWarnings(False)


@pytest.fixture
def unreachable_s3(monkeypatch):  # type: ignore[no-untyped-def]
    port = _free_port()  # bound and closed again: nothing answers there
    for k, v in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(k, v)
    return "s3://nowhere/db"


def assert_one_sentence(rc: int, err: str, want: int, cell: object) -> None:
    assert "Traceback" not in err, (cell, err)
    assert rc == want, (cell, rc, err[-2000:])
    if want == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        sentences = [line for line in lines if line.startswith("error: ")]
        assert len(sentences) == 1, (cell, lines)
        assert set(lines) - set(sentences) <= {line for line in lines if line.startswith("vidsearch: the log is in")}


@pytest.mark.parametrize(("command", "condition"), [c for c in CELLS if c[1] != "readonly"])
def test_each_command_on_each_wrong_database_is_one_sentence_or_works(  # type: ignore[no-untyped-def]
    command, condition, request, restore_logging, capsys, monkeypatch, tmp_path, sample_folder
) -> None:
    want = EXPECTED[command, condition]
    if isinstance(want, str):
        pytest.skip(f"does not apply: {want}")
    video_id = ""
    if condition == "missing":
        db = str(tmp_path / "no-such-db")
    elif condition == "empty":
        db = str(tmp_path / "empty")
        os.mkdir(db)
    elif condition == "s3":
        db = request.getfixturevalue("unreachable_s3")
    else:
        request.getfixturevalue("ray_session")  # index joins the session's Ray
        cfg, _ = request.getfixturevalue("indexed_db")
        make_old(cfg.db.path, tmp_path / "old")
        db = str(tmp_path / "old")
        from pipeline.store.db import Store

        video_id = Store(cfg.db.path).complete_videos().column("video_id")[0].as_py()
    served: list[object] = []
    if command == "serve":  # start-up only: everything up to binding the port
        import pipeline.serve.app

        monkeypatch.setattr(pipeline.serve.app, "serve", lambda *a, **kw: served.append(a))
    capsys.readouterr()
    rc = main(argv(command, db, str(sample_folder), video_id))
    err = capsys.readouterr().err
    assert_one_sentence(rc, err, want, (command, condition))
    if condition == "missing":
        assert not os.path.exists(db), "a reader must not create the database it did not find"
    if command == "serve":
        assert bool(served) == (want == 0)


def _setpriv() -> list[str]:
    tool = shutil.which("setpriv")
    if os.geteuid() != 0 or tool is None:
        pytest.skip("read-only cells drop root's DAC capabilities with setpriv (root, util-linux)")
    return [tool, "--bounding-set", "-dac_override,-dac_read_search", "--"]


#: Runs cells given as JSON argv lists, prints {index: [rc, stderr]} as JSON on the last line.
DRIVER = """
import contextlib, io, json, sys
from pipeline.cli import main
out = {}
for i, argv in enumerate(json.loads(sys.argv[1])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException as exc:
            import traceback
            rc, err = -1, io.StringIO("Traceback " + traceback.format_exc())
    out[i] = [rc, err.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def readonly_results(indexed_db, sample_folder):  # type: ignore[no-untyped-def]
    """Every read-only cell, run once as root without DAC capabilities, on a read-only copy of the indexed
    database (and a read-only evaluate work folder)."""
    prefix = _setpriv()
    cfg, _ = indexed_db
    base = Path(tempfile.mkdtemp(prefix="vidsearch-ro-"))
    db = base / "db"
    shutil.copytree(cfg.db.path, db)
    for path in [base, *db.rglob("*"), db]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    cells = [c for c in COMMANDS if EXPECTED[c, "readonly"] in (0, 2)]
    argvs = [argv(c, str(base if c == "evaluate" else db), str(sample_folder), "") for c in cells]
    env = {**os.environ, "VIDSEARCH_LOG_DIR": tempfile.mkdtemp(prefix="vidsearch-ro-logs-")}
    env.pop("RAY_ADDRESS", None)
    try:
        run = subprocess.run(
            [*prefix, sys.executable, "-c", DRIVER, json.dumps(argvs)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for path in [base, db, *db.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(base, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    return {c: tuple(results[str(i)]) for i, c in enumerate(cells)}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_on_a_read_only_database(command, readonly_results) -> None:  # type: ignore[no-untyped-def]
    want = EXPECTED[command, "readonly"]
    if isinstance(want, str):
        pytest.skip(f"does not apply: {want}")
    rc, err = readonly_results[command]
    assert_one_sentence(rc, err, want, (command, "readonly"))
    if want == 2:
        assert "read-only" in err, err
