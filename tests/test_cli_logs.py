"""Where the CLI's logs go (pipeline/logs.py): our warnings to the terminal, Ray's, Ray Data's, LanceDB's records
and Python warnings to the log file only (both with ``-v``); a failed command names its log file. Shipped
configs and tracker settings are found from any working folder. In-process, no Ray started."""

from __future__ import annotations

import logging
import warnings

import pytest

from pipeline.logs import quiet_ray, setup_logging


@pytest.fixture
def restore_logging(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """Log files under tmp_path; the root and Ray loggers, warnings capture and Ray Data's context as they were."""
    import ray.data
    from ray._private import worker

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # quiet_ray replaces it
    monkeypatch.setenv("VIDSEARCH_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    loggers = [logging.getLogger(n) for n in ("", "ray", "ray.data")]
    saved = [(lg, list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    ctx = ray.data.DataContext.get_current()
    progress, plan = ctx.enable_progress_bars, ctx.print_on_execution_start
    with warnings.catch_warnings():
        yield
    logging.captureWarnings(False)
    for lg, handlers, propagate, level in saved:
        for h in list(lg.handlers):
            if h not in handlers:
                lg.removeHandler(h)
                h.close()
        lg.handlers[:] = handlers
        lg.propagate, lg.level = propagate, level
    ctx.enable_progress_bars, ctx.print_on_execution_start = progress, plan


def _emit() -> None:
    logging.getLogger("pipeline.index.runner").warning("our own warning")
    logging.getLogger("ray.data._internal.progress.logging_progress").info("Total Progress: 0/?")
    logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster.")
    logging.getLogger("lancedb").warning("lancedb says something")
    warnings.warn("lancedb fork support is experimental", RuntimeWarning, stacklevel=1)
    from ray._private import worker  # how the driver shows the cluster's error messages

    worker.print_to_stdstream(
        {"lines": ["Task _map_task failed due to oom"], "pid": "raylet", "is_err": False}, ignore_prefix=False
    )


@pytest.mark.parametrize("verbose", [False, True])
def test_library_logs_go_to_the_file_and_reach_the_terminal_only_with_verbose(
    verbose, restore_logging, capsys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    path = setup_logging("index", verbose=verbose)
    init = quiet_ray(verbose=verbose)
    _emit()
    for h in logging.getLogger().handlers:
        h.flush()
    captured = capsys.readouterr()
    terminal, written = captured.err + captured.out, path.read_text()
    assert path.parent == tmp_path / "logs" and path.name.startswith("index-")
    library = ("Total Progress", "Token authentication", "lancedb says", "fork support", "failed due to oom")
    assert all(text in written for text in library if not (verbose and "oom" in text))
    assert "our own warning" in terminal and "our own warning" in written
    assert all((text in terminal) == verbose for text in library), terminal
    import ray.data

    ctx = ray.data.DataContext.get_current()
    assert (ctx.enable_progress_bars, ctx.print_on_execution_start) == (verbose, verbose)
    assert init == {"log_to_driver": verbose, "configure_logging": False}
    ray_handlers = logging.getLogger("ray").handlers + logging.getLogger("ray.data").handlers
    assert not [h for h in ray_handlers if type(h) is logging.StreamHandler or "PlainRayHandler" in type(h).__name__]


def test_verbose_flag_before_or_after_the_command() -> None:
    from pipeline.cli import parser

    assert parser().parse_args(["index", "x"]).verbose is False
    assert parser().parse_args(["-v", "index", "x"]).verbose is True
    assert parser().parse_args(["index", "x", "-v"]).verbose is True
    assert parser().parse_args(["search", "q", "--verbose"]).verbose is True


def test_a_failed_command_names_its_log_file_which_holds_the_traceback(restore_logging, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from run_pipeline import main

    assert main(["status", "--config", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "error: config file 'no-such-config' not found (give a path or one of: cluster-gpu, default, tiny)" in err
    (log,) = (tmp_path / "logs").glob("status-*.log")
    assert f"the log is in {log}" in err
    assert "Traceback" in log.read_text() and "ConfigError" in log.read_text()


def test_shipped_configs_and_trackers_are_found_from_any_folder(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from configs import shipped
    from operators.detect_track import tracker_args
    from pipeline.config import load_config

    monkeypatch.chdir(tmp_path)  # no configs/ here
    cfg = load_config("tiny")
    assert tracker_args(cfg.detect, 1.0).tracker_type == cfg.detect.tracker
    default = load_config("default").detect.model_copy(update={"tracker": "botsort", "tracker_config": None})
    assert tracker_args(default, 2.0).tracker_type == "botsort"
    (tmp_path / "mine.yaml").write_text(shipped("tiny.yaml").read_text())  # type: ignore[union-attr]
    assert load_config("mine.yaml") == cfg  # a path given still wins


def test_a_local_ray_slow_to_start_is_started_again(monkeypatch) -> None:
    """Ray gives its node a fixed 30 s to register; a loaded machine can miss it. That one error is retried after a
    shutdown of the half-started processes; any other error, or the last attempt's, is raised."""
    import ray

    from pipeline.logs import start_local_ray

    calls: list[str] = []
    outcomes: list[Exception | None] = []

    def init(**kwargs: object) -> None:
        calls.append(f"init {kwargs}")
        error = outcomes.pop(0)
        if error is not None:
            raise error

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    slow = Exception("The current node timed out during startup. This could happen because ...")
    outcomes[:] = [slow, None]
    start_local_ray(num_cpus=2)
    assert calls == ["init {'num_cpus': 2}", "shutdown", "init {'num_cpus': 2}"]
    calls.clear()
    outcomes[:] = [ValueError("bad argument")]
    with pytest.raises(ValueError, match="bad argument"):
        start_local_ray(num_cpus=2)
    assert calls == ["init {'num_cpus': 2}"]
    calls.clear()
    outcomes[:] = [slow, slow]
    with pytest.raises(Exception, match="timed out during startup"):
        start_local_ray(attempts=2, num_cpus=2)
    assert calls == ["init {'num_cpus': 2}", "shutdown", "init {'num_cpus': 2}"]
