"""Serving an indexed video file: only while it still is the content that was indexed, with the type of the
indexed file, and with HTTP Range per RFC 9110.

``pipeline.index.catalog.Verifier`` opens the file once, checks the opened file (regular, indexed size, indexed
fingerprint) and hands that open descriptor to ``MediaResponse``, so a file swapped in after the check is never
what gets sent. Fingerprints are cached per (device, inode, size, mtime, ctime):
a file that was not touched is hashed once, a replaced or rewritten one is hashed again.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import re
from typing import Any

import anyio
from starlette.responses import Response

mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("video/x-matroska", ".mkv")
mimetypes.add_type("video/mp2t", ".ts")
mimetypes.add_type("video/mp2t", ".mts")
mimetypes.add_type("video/mp2t", ".m2ts")
mimetypes.add_type("video/x-flv", ".flv")
mimetypes.add_type("application/mxf", ".mxf")
CHUNK = 256 * 1024
MAX_RANGES = 100  # more parts than this in one header is not a seek; the header is ignored


def media_type(indexed_path: str) -> str:
    """The type of the video as indexed (from its own name, never a link target's); anything that is not a
    video (or the one animated-image container the catalog accepts) is served as opaque bytes."""
    kind = mimetypes.guess_type(indexed_path, strict=False)[0] or ""
    return kind if kind.startswith("video/") or kind in ("image/gif", "application/mxf") else "application/octet-stream"


_SPEC = re.compile(r"(\d*)-(\d*)")
BEYOND = 10**18  # past any file's size; a position with more digits is read as this (int() refuses 4,300+)


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else BEYOND


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """What a Range header asks of a representation of ``size`` bytes (RFC 9110 section 14):

    * ``None``: serve the whole file (no header, another unit, a syntactically invalid range set, or a range
      whose last position is before its first; such a header must be ignored, not answered with 400);
    * ``(first, last)`` inclusive: the first satisfiable range of the set (a server may serve fewer ranges
      than asked);
    * ``False``: every range is unsatisfiable (416).
    """
    if header is None:
        return None
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in spec.split(",")]
    parts = [p for p in parts if p]  # empty list elements are allowed by the list syntax
    if not parts or len(parts) > MAX_RANGES:
        return None
    ranges = []
    for part in parts:
        m = _SPEC.fullmatch(part)
        if m is None or not (m.group(1) or m.group(2)):
            return None
        first, last = m.group(1), m.group(2)
        if first and last and _position(last) < _position(first):
            return None  # invalid range-spec: the whole header is ignored
        ranges.append((first, last))
    for first, last in ranges:
        if first:
            a = _position(first)
            if a < size:
                return a, min(_position(last), size - 1) if last else size - 1
        elif _position(last) > 0 and size > 0:  # suffix range: the last N bytes
            return max(0, size - _position(last)), size - 1
    return False


class MediaResponse(Response):
    """Streams an already opened and verified file descriptor (closed when done); a ``Response`` so FastAPI
    returns it as it is."""

    def __init__(
        self,
        fd: int,
        st: os.stat_result,
        media_type: str,
        range_header: str | None,
        if_range: str | None = None,
        cache_control: str = "private, max-age=60",
    ) -> None:
        self.fd, self.st, self.kind = fd, st, media_type
        self.range_header, self.if_range, self.cache_control = range_header, if_range, cache_control
        self.status_code, self.background = 200, None
        self.raw_headers = []

    def _base_headers(self) -> tuple[list[tuple[bytes, bytes]], str, str]:
        etag = f'"{self.st.st_ino:x}-{self.st.st_mtime_ns:x}-{self.st.st_size:x}"'
        modified = email.utils.formatdate(self.st.st_mtime, usegmt=True)
        headers = [
            (b"accept-ranges", b"bytes"),
            (b"etag", etag.encode()),
            (b"last-modified", modified.encode()),
            (b"cache-control", self.cache_control.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", b"default-src 'none'; sandbox; frame-ancestors 'none'"),
        ]
        return headers, etag, modified

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._send(scope, send)
        finally:
            os.close(self.fd)

    async def _send(self, scope: Any, send: Any) -> None:
        size = self.st.st_size
        headers, etag, modified = self._base_headers()
        wanted = parse_range(self.range_header, size)
        if self.if_range is not None and self.if_range.strip() not in (etag, modified):
            wanted = None  # the client's copy is of another version: send it all (RFC 9110 13.1.5)
        if wanted is False:
            headers += [(b"content-range", f"bytes */{size}".encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 416, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        status = 206 if isinstance(wanted, tuple) else 200
        if status == 206:
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        length = last - first + 1 if size else 0
        headers += [(b"content-type", self.kind.encode()), (b"content-length", str(length).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope.get("method") == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        pos, end = first, last + 1
        while pos < end:
            data = await anyio.to_thread.run_sync(os.pread, self.fd, min(CHUNK, end - pos), pos)
            if not data:  # truncated since the check: drop the connection rather than send a short body
                raise OSError(f"the file shrank to {pos} bytes while it was sent")
            pos += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": pos < end})
