"""What several commands share: the config/database options, loading the config, starting Ray, the store."""

from __future__ import annotations

import argparse
import logging
from typing import Any

VERBOSE_HELP = "also show Ray's, Ray Data's and LanceDB's logs on the terminal (they always go to the log file)"


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="default", help="YAML path, or a name in configs/ (default, tiny, ...)")
    p.add_argument("--db", help="database directory or object-store URI (overrides db.path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def load(args: argparse.Namespace) -> Any:
    """The config named by ``--config``, with ``--set`` overrides and ``--db``."""
    from pipeline.config import load_config

    overrides = list(args.overrides)
    if args.db:
        overrides.append(f"db.path={args.db}")
    return load_config(args.config, overrides)


def start_ray(cfg: Any, address: str | None, verbose: bool = False) -> None:
    """Join the cluster at ``address`` (or ``ray.address``), else start a local Ray sized by the config."""
    import ray

    from pipeline.logs import quiet_ray, ray_log_dir, start_local_ray
    from pipeline.store.fragments import job_runtime_env

    if ray.is_initialized():
        return
    quiet = quiet_ray(verbose)
    address = address or cfg.ray.address
    if address:
        ray.init(address=address, runtime_env=job_runtime_env(cfg.ray.runtime_env, cfg.db.path), **quiet)
    else:
        start_local_ray(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **quiet)
    logging.getLogger(__name__).info("Ray session logs (workers, raylet, Ray Data): %s", ray_log_dir())


def open_store(cfg: Any) -> Any:
    from operators.encoders import embedding_dim
    from pipeline.store.db import Store

    return Store(cfg.db.path, embedding_dim(cfg.encoder))
