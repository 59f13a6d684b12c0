"""The shipped YAML: run configurations (``<name>.yaml``) and tracker settings in ultralytics' format
(``trackers/<name>.yaml``).

A package so that a wheel carries the files as package data; they are found through ``importlib.resources``,
so a source checkout and an installed wheel read them the same way.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(relative: str) -> Path | None:
    """The shipped file at ``relative`` (``tiny.yaml``, ``trackers/bytetrack.yaml``), or None if there is none."""
    resource = files(__name__).joinpath(*relative.split("/"))
    # pip installs packages as folders, never zipped: the resource is a file on disk that YAML readers can open.
    return Path(str(resource)) if resource.is_file() else None


def names() -> list[str]:
    """The shipped run configurations, by name (``default``, ``tiny``, ...)."""
    return sorted(p.name[: -len(".yaml")] for p in files(__name__).iterdir() if p.name.endswith(".yaml"))
