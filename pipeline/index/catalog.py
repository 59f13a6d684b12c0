"""Finding videos and fingerprinting their content.

Fingerprint = file size plus SHA-256 over sampled byte ranges: the first and last 64 KiB and eight 16 KiB
ranges spread evenly between them. It reads at most ~256 KiB per file however large the file is, changes
whenever the size or any sampled range changes (re-encodes, truncation, appends, header edits), and is the
same for a file that was only moved or renamed, so a move is recognised without re-encoding.
The video id is ``uuid5(fingerprint)``. The file's modification time is recorded next to it, so a file edited after
indexing, even in bytes the fingerprint does not read, is not served as the indexed content (``Verifier``).
"""

from __future__ import annotations

import glob
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass

from operators.contract import fingerprint
from pipeline.store import schema as S
from pipeline.store.db import Store, quote

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .wmv .flv .3gp .ogv .gif .mxf".split()
)


@dataclass(frozen=True)
class VideoFile:
    path: str
    size: int
    fingerprint: str
    mtime_ns: int | None = None  # stat'ed before the fingerprint was read: an edit during the read shows too

    @property
    def video_id(self) -> str:
        return S.make_id("video", self.fingerprint)


@dataclass(frozen=True)
class Unreadable:
    path: str
    reason: str


def _walk(folder: str, problems: list[Unreadable]) -> list[str]:
    """Video files under ``folder``; a folder that cannot be read (permissions) is a problem, not silence."""
    found = []

    def unreadable(exc: OSError) -> None:
        problems.append(Unreadable(os.path.abspath(exc.filename or folder), f"cannot read folder: {exc.strerror}"))

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=False):  # no symlinked dirs: no loops
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(os.path.join(root, name))
    return found


def list_videos(inputs: list[str]) -> tuple[list[VideoFile], list[Unreadable]]:
    """Expand files, folders (recursive, by extension) and globs; fingerprint each file once."""
    candidates: list[str] = []
    problems: list[Unreadable] = []
    for item in inputs:
        if os.path.isdir(item):
            candidates += _walk(item, problems)
        elif os.path.exists(item) or os.path.islink(item):
            candidates.append(item)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                problems.append(Unreadable(item, "no such file, folder or glob match"))
            for m in matches:
                candidates += _walk(m, problems) if os.path.isdir(m) else [m]
    videos, seen = [], set()
    for path in candidates:
        path = os.path.abspath(path)
        if path in seen:
            continue
        seen.add(path)
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(Unreadable(os.fsencode(path).decode("utf-8", "replace"), "file name is not valid UTF-8"))
            continue
        if os.path.isdir(path):
            problems.append(Unreadable(path, "is a directory, not a video file"))
            continue
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
                problems.append(Unreadable(path, "not a regular file (a pipe, socket or device)"))
                continue
            size, fp = fingerprint(path)
        except OSError as exc:
            problems.append(Unreadable(path, f"cannot read file: {exc.strerror or exc}"))
            continue
        if size == 0:
            problems.append(Unreadable(path, "file is empty (0 bytes)"))
            continue
        videos.append(VideoFile(path, size, fp, st.st_mtime_ns))
    return videos, problems


def under(path: str, roots: list[str]) -> bool:
    """Whether ``path`` lies inside one of the folders ``roots`` (absolute, compared by path components)."""
    return any(os.path.commonpath([path, r]) == r for r in roots)


def gone(videos: list[dict[str, str]], roots: list[str] | None = None) -> list[dict[str, str]]:
    """The ``videos`` rows (``video_id``, ``path``) whose file no longer exists.

    With ``roots``, only files inside those folders are considered, and only roots that exist and are folders
    count: an unmounted share must never look like a deleted archive.
    """
    if roots is not None:
        roots = [os.path.abspath(r) for r in roots if os.path.isdir(r)]
        if not roots:
            return []
    return [v for v in videos if (roots is None or under(v["path"], roots)) and not os.path.exists(v["path"])]


def prune(store: Store, roots: list[str] | None = None, dry_run: bool = False) -> list[dict[str, str]]:
    """Remove every row of the indexed videos whose file is gone (and their failure records); returns them.

    ``roots``: only files inside these folders, and only folders that exist (see ``gone``); ``None``:
    every indexed video. A moved file is not gone: the index run that sees it at its new path updates the path
    first (``index --incremental`` plans before it prunes).
    """
    videos = store.rows(S.VIDEOS, columns=["video_id", "path"]).to_pylist()
    missing = gone(videos, roots)
    if not dry_run:
        store.delete_videos([v["video_id"] for v in missing])
        for f in gone(store.rows(S.FAILURES, columns=["path"]).to_pylist(), roots):
            store.table(S.FAILURES).delete(f"path = {quote(f['path'])}")
    return missing


# -- still the indexed file -----------------------------------------------------------------------------------
def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Verifier:
    """Opens indexed files that still hold the indexed content; remembers fingerprints of unchanged files."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()
        self.hashed = 0  # fingerprints computed (not served from the cache); read by tests

    def _fingerprint(self, path: str, st: os.stat_result) -> str | None:
        key = _key(st)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            size, fp = fingerprint(path)
            after = os.stat(path)
        except OSError:
            return None
        if size != st.st_size or _key(after) != key:
            return None  # the path changed while it was read: not the file that is open
        with self._lock:
            self.hashed += 1
            self._cache[key] = fp
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return fp

    def open(
        self, path: str, size: int, expected: str, mtime_ns: int | None = None
    ) -> tuple[int, os.stat_result] | None:
        """An open descriptor of ``path`` and its stat, if it is a regular file of ``size`` bytes whose
        fingerprint is ``expected`` and, when ``mtime_ns`` is known (databases indexed before it was recorded lack
        it), whose modification time is still that; None otherwise. The caller closes the descriptor."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            same = stat.S_ISREG(st.st_mode) and st.st_size == size and mtime_ns in (None, st.st_mtime_ns)
            if same and self._fingerprint(path, st) == expected:
                return fd, st
        except OSError:
            pass
        os.close(fd)
        return None
