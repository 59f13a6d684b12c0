"""Where a command's logs go: everything (ours, Ray's, Ray Data's, LanceDB's, Python warnings) to a log file; to
the terminal only our own warnings, unless ``-v`` sends everything there as well.

The terminal is for the progress bar, notices and the summary. Ray installs its own terminal handlers on the
``ray`` and ``ray.data`` loggers and, by default, prints Ray Data's progress as INFO blocks every few seconds when
stdout is not a terminal; :func:`quiet_ray` hands those loggers to ours and switches Ray Data's progress output
off (the runner draws its own bar). The file's path is printed when a command fails.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Overrides the folder of the log files (default: ``<tempdir>/vidsearch-logs``).
LOG_DIR_ENV = "VIDSEARCH_LOG_DIR"
#: Loggers whose warnings reach the terminal without ``-v``: this project's own.
OWN_LOGGERS = ("pipeline", "operators", "configs", "run_pipeline", "__main__")
#: Warnings from libraries that say nothing a user can act on; kept out of Ray's worker logs as well
#: (``PYTHONWARNINGS`` syntax; workers of a local Ray inherit the driver's environment).
WORKER_WARNING_FILTERS = ("ignore:lancedb fork support is experimental:RuntimeWarning",)

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TERMINAL_FORMAT = "%(levelname)s %(message)s"

log = logging.getLogger(__name__)


def _own(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


def log_file_path(command: str) -> Path:
    folder = Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "vidsearch-logs")
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def setup_logging(command: str, verbose: bool = False) -> Path:
    """Route the root logger to a new log file (INFO and up) and to stderr (our warnings; everything with
    ``verbose``); Python warnings become log records. Returns the log file's path."""
    path = log_file_path(command)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FILE_FORMAT))
    to_file.setLevel(logging.INFO)  # Ray Data's DEBUG records stay in its own ray-data.log
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setFormatter(logging.Formatter(TERMINAL_FORMAT))
    to_terminal.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        to_terminal.addFilter(_own)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(to_file)
    root.addHandler(to_terminal)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> the file (terminal with -v)
    log.info("vidsearch %s: argv %s", command, sys.argv)
    return path


def quiet_ray(verbose: bool = False) -> dict[str, Any]:
    """Call in the driver before ``ray.init``; returns the ``ray.init`` keyword arguments that go with it.

    Ray's and Ray Data's loggers lose their terminal handlers and pass their records to ours (Ray Data keeps its
    own ``ray-data.log`` in the Ray session folder); Ray Data's progress bars, progress log blocks and
    execution-plan lines are off unless ``verbose``; workers' stdout/stderr stay in the Ray session's log folder
    unless ``verbose``; library warnings that say nothing to act on are
    filtered in the workers of a local Ray (the driver's go to the log file).
    """
    import ray
    import ray.data

    for name in ("ray", "ray.data"):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                lg.removeHandler(handler)
        lg.propagate = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    if not verbose:
        filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
        os.environ["PYTHONWARNINGS"] = ",".join([*filters, *WORKER_WARNING_FILTERS])
        _raylet_messages_to_log()
    return {"log_to_driver": verbose, "configure_logging": False}


def start_local_ray(attempts: int = 3, **kwargs: Any) -> None:
    """``ray.init(**kwargs)`` for a Ray started on this machine, tried again when its node does not register in
    time: Ray gives the raylet a fixed 30 s, which a loaded machine can exceed ("The current node timed out during
    startup"); the half-started processes are shut down before the next try."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            logging.getLogger(__name__).warning("Ray's node was slow to start (%s); trying again", exc)
            ray.shutdown()


def _raylet_messages_to_log() -> None:
    """The driver prints the cluster's error messages (a worker killed for lack of memory, one line per task and
    retry; a crashed worker) straight to stdout through ``ray._private.worker.print_to_stdstream``, whatever
    ``log_to_driver`` says. Send them to the ``ray.errors`` logger instead (the log file). Private API, so only
    when it is there."""
    from ray._private import worker

    if not callable(getattr(worker, "print_to_stdstream", None)):
        return
    errors = logging.getLogger("ray.errors")

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            errors.warning("(%s) %s", data.get("pid", "ray"), line)

    worker.print_to_stdstream = to_log  # type: ignore[assignment]


def ray_log_dir() -> str | None:
    """The local Ray session's log folder (workers' stdout/stderr, raylet, Ray Data), None when not known."""
    try:
        import ray

        node = ray._private.worker._global_node
        return str(node.get_logs_dir_path()) if node is not None else None
    except Exception:  # noqa: BLE001 - only a hint for the log file
        return None


@contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """For the Ray part of a command: file descriptor 2 goes to the command's log file (the root logger's file
    handler), so what C++ code writes there (the driver's own core worker, and the Ray processes started inside
    the block, which inherit it) stays out of the terminal; Python's ``sys.stderr`` and our terminal handler
    move to a copy of the original descriptor, so the progress bar, notices and errors still reach the terminal.
    Restored on exit. Does nothing without a log file (library use) or when stderr is not a real file."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    try:
        sys.stderr.flush()
        own_fd = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured or replaced stderr without a descriptor
        own_fd = False
    if not files:
        yield
        return
    old = sys.stderr
    saved = os.dup(2)
    terminal = open(saved, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    moved = [
        h
        for h in logging.getLogger().handlers
        if type(h) is logging.StreamHandler and h.stream is old  # our terminal handler (setup_logging)
    ]
    fd = os.open(files[0].baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    if own_fd:  # Python's stderr was fd 2 itself: write through the copy instead
        sys.stderr = terminal
        for h in moved:
            h.setStream(terminal)
    try:
        yield
    finally:
        terminal.flush()
        if own_fd:
            sys.stderr = old
            for h in moved:
                h.setStream(old)
        os.dup2(saved, 2)
        terminal.close()
        os.close(saved)
