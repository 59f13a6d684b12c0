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


def start_ray(cfg: Any, address: str | None, verbose: bool = False) -> bool:
    """Join the cluster at ``address`` (or ``ray.address``), else start a local Ray sized by the config.

    Without an address the local Ray is always a new one (``address="local"``): a cluster that ``ray start`` left
    in Ray's temp folder (``ray_current_cluster``), running or long stopped, is never joined implicitly; a running
    one gets a line saying so. Returns whether this call started or joined Ray (False: it was running)."""
    import ray

    from pipeline.logs import quiet_ray, ray_log_dir, start_local_ray
    from pipeline.store.fragments import job_runtime_env

    if ray.is_initialized():
        return False
    quiet = quiet_ray(verbose)
    address = address or cfg.ray.address
    if address:
        ray.init(address=address, runtime_env=job_runtime_env(cfg.ray.runtime_env, cfg.db.path), **quiet)
    else:
        _note_other_cluster()
        start_local_ray(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, **quiet)
    logging.getLogger(__name__).info("Ray session logs (workers, raylet, Ray Data): %s", ray_log_dir())
    return True


def _note_other_cluster() -> None:
    """Say in one line when a ``ray start`` cluster runs on this machine (its address file answers), since this
    run will not use it; a stale address file (the cluster stopped) only goes to the log file."""
    import socket

    from ray._private.utils import read_ray_address

    log = logging.getLogger(__name__)
    try:
        found = read_ray_address()
    except OSError:
        return
    if not found:
        return
    host, _, port = found.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            alive = True
    except (OSError, ValueError):
        alive = False
    if alive:
        log.warning(
            "a Ray cluster started with `ray start` runs at %s; not joined: this run starts its own local Ray "
            "(--address auto joins it)",
            found,
        )
    else:
        log.info("Ray's address file names %s, which does not answer (a stopped cluster): ignored", found)


def open_store(cfg: Any) -> Any:
    from operators.encoders import embedding_dim
    from pipeline.store.db import Store

    return Store(cfg.db.path, embedding_dim(cfg.encoder))


def check_reachable(uri: str) -> None:
    """For an ``s3://`` database, one quick request to its bucket (one attempt, short timeouts), so that an
    endpoint nobody answers on is one sentence, not LanceDB's retries ending in a traceback. Other URIs pass."""
    if not uri.startswith("s3://"):
        return
    from urllib.parse import urlparse

    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError

    from pipeline.errors import DatabaseUnusable
    from pipeline.store.lease import endpoint_url, region

    endpoint = endpoint_url()
    where = endpoint or "the default S3 endpoint"
    cfg = BotoConfig(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"})
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region(), config=cfg)
    bucket = urlparse(uri).netloc
    try:
        s3.head_bucket(Bucket=bucket)
    except (EndpointConnectionError, HTTPClientError) as exc:
        raise DatabaseUnusable(
            f"cannot reach the object store at {where} for {uri} ({type(exc).__name__}); check AWS_ENDPOINT_URL "
            "and the network"
        ) from None
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status == 404:
            raise DatabaseUnusable(f"the bucket {bucket!r} of {uri} does not exist at {where}") from None
        if status in (401, 403):
            raise DatabaseUnusable(
                f"the object store at {where} refused access to the bucket of {uri} ({status}); "
                "check the AWS_* credentials"
            ) from None
        raise


def require_database(cfg: Any, tables: bool = True) -> None:
    """Stop a command that reads an existing database when there is none at ``db.path`` (a missing folder, an
    empty one, a folder of something else) or its object store cannot be reached; never creates anything.
    ``tables=False`` checks only the folder and the store (a writer checks the tables once it holds the lock:
    a first index run holding it may be creating them)."""
    import os

    from pipeline.errors import DatabaseUnusable
    from pipeline.store import schema as S
    from pipeline.store.lock import is_object_store

    uri = cfg.db.path
    check_reachable(uri)
    hint = f"`vidsearch index VIDEOS --db {uri}` creates one"
    if not is_object_store(uri):
        path = uri.removeprefix("file://")
        if not os.path.exists(path):
            raise DatabaseUnusable(f"no vidsearch database at {uri}: {hint}")
        if not os.path.isdir(path):
            raise DatabaseUnusable(f"{uri} is a file, not a vidsearch database folder")
    if not tables:
        return
    from pipeline.store.db import Store

    if not Store(uri).exists(S.VIDEOS):
        raise DatabaseUnusable(f"{uri} holds no vidsearch database (no videos table): {hint}")


def require_writable(uri: str) -> None:
    """Stop a command that writes when a local database folder (or, for a new one, the folder it would be made
    in) is not writable by this user, before any lock or work."""
    import os

    from pipeline.errors import DatabaseUnusable
    from pipeline.store.lock import is_object_store

    check_reachable(uri)
    if is_object_store(uri):
        return
    path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "the database folder" if probe == path else f"the folder {probe} that would hold the new database"
        raise DatabaseUnusable(f"cannot write to {uri}: {what} is read-only for this user")
