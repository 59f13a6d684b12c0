"""What stands in front of the HTTP routes: a Host allow-list, one Host, Authorization and Range header at most,
same-origin state-changing requests, request-body limits and a read timeout enforced while the body is read,
security headers on every response, the access check, sign-in sessions and the token-guessing limit.

``Guard`` is plain ASGI middleware (no ``BaseHTTPMiddleware``), so it sees every response, including the
errors it sends itself, and can stop a body mid-stream: a chunked upload with no Content-Length is cut off
at the limit with a 413 instead of being spooled to disk first. A client that hangs up mid-body is logged at debug
level: it is the client's doing, and an unauthenticated one could otherwise fill the log with tracebacks.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import anyio
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Host names a loopback-bound server answers to by default: a DNS-rebinding page arrives under its own name.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Only the app's own scripts, styles and media; no framing, no plugins, forms post back here only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    b"content-security-policy": CSP.encode(),
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    # never to another origin; to this one, so that a browser's same-origin form POST carries its real Origin
    # (with no-referrer it sends "Origin: null", which the cross-origin check cannot tell from a sandboxed page)
    b"referrer-policy": b"same-origin",
}


#: Headers a request may carry once: with two, the parts of the server that read "the" header could disagree.
SINGLE_HEADERS = (b"host", b"authorization", b"range")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a request body passes its limit; ``Guard`` answers it with a 413."""


class BodyTimeout(Exception):
    """Raised from ``receive`` when the client sends no more of the body for the read timeout; answered with 408."""


def cross_origin(headers: dict[bytes, bytes]) -> bool:
    """Whether a browser says the request comes from another origin: by ``Sec-Fetch-Site`` where it is sent (the
    browser's own verdict), else by ``Origin`` against the Host header. Other ports of the same host are another
    origin; a client that sends neither header (curl, scripts) is not a browser page and is not refused."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() not in (b"same-origin", b"none")
    origin = headers.get(b"origin")
    if origin is None:
        return False
    scheme, sep, netloc = origin.strip().lower().partition(b"://")
    if not sep:  # "null": a sandboxed frame, a file:// page or a redirect across origins
        return True

    def authority(value: bytes) -> tuple[bytes, bytes]:
        name, colon, port = value.rpartition(b":") if not value.endswith(b"]") else (value, b"", b"")
        return (name, port) if colon and port.isdigit() else (value, DEFAULT_PORTS.get(scheme, b""))

    return authority(netloc) != authority(headers.get(b"host", b"").strip().lower())


def json_response(status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> tuple[int, list, bytes]:
    body = json.dumps({"detail": detail}, ensure_ascii=True).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    return status, head, body


def host_name(value: str) -> str | None:
    """The host of a Host header value, lower-cased, without port or trailing dot; None when malformed."""
    v = value.strip().lower()
    if v.startswith("["):  # an IPv6 literal keeps its brackets, as in a URL
        end = v.find("]")
        host, rest = (v[: end + 1], v[end + 1 :]) if end > 0 else ("", "")
    else:
        host, colon, port = v.partition(":")
        rest = colon + port
    if not host or (rest and not (rest.startswith(":") and (rest[1:].isdigit() or rest == ":"))):
        return None
    return host.rstrip(".") or None


def normalise_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """Allow-list entries as ``host_name`` gives them (a bare ``::1`` becomes ``[::1]``); ``*`` allows any."""
    out = set()
    for h in hosts:
        h = h.strip().lower()
        if h == "*":
            out.add(h)
        elif h:
            out.add(f"[{h}]" if ":" in h and not h.startswith("[") else h.rstrip("."))
    return frozenset(out)


def same_secret(given: bytes, secret: bytes) -> bool:
    """Constant-time comparison of raw bytes (a UTF-8 token is compared as its UTF-8 bytes, never as latin-1)."""
    return hmac.compare_digest(given, secret)


class Sessions:
    """Random session ids handed out by a successful sign-in; the cookie carries the id, never the token."""

    def __init__(self, ttl_s: float = 12 * 3600, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[sid] = time.monotonic() + self.ttl_s
            while len(self._expiry) > self.max_sessions:
                self._expiry.popitem(last=False)  # the oldest session goes first
        return sid

    def valid(self, sid: str) -> bool:
        if not sid:
            return False
        with self._lock:
            expiry = self._expiry.get(sid)
            if expiry is not None and expiry < time.monotonic():
                del self._expiry[sid]
                expiry = None
        return expiry is not None

    def end(self, sid: str) -> None:
        with self._lock:
            self._expiry.pop(sid, None)


class LoginLimiter:
    """At most ``attempts`` failed sign-ins per client address per ``window_s``; then 429 until the window ends."""

    def __init__(self, attempts: int = 10, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            seen = self._failures.get(client)
            while seen and seen[0] <= now - self.window_s:
                seen.popleft()
            if not seen or len(seen) < self.attempts:
                return 0.0
            return seen[0] + self.window_s - now

    def failed(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, deque(maxlen=self.attempts)).append(time.monotonic())
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)


class Guard:
    """ASGI middleware: Host allow-list (400 without a Host, 421 for another name), 400 for a repeated
    ``SINGLE_HEADERS`` header, 403 for a state-changing request from another origin, the access check ``gate``,
    the body limit of ``body_limit`` (413, checked on Content-Length and again on every chunk read), 408 when the
    body stalls for ``body_timeout_s``, and ``SECURITY_HEADERS`` added to every response that does not set its
    own."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Iterable[str],
        body_limit: Callable[[Scope], tuple[int, str]],
        gate: Callable[[Scope], ASGIApp | None],
        body_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.allowed = normalise_hosts(allowed_hosts)
        self.body_limit = body_limit
        self.gate = gate
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS.items() if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        async def answer(status: int, detail: str, close: bool = False) -> None:
            code, headers, body = json_response(status, detail, [(b"connection", b"close")] if close else [])
            await send_secured({"type": "http.response.start", "status": code, "headers": headers})
            await send_secured({"type": "http.response.body", "body": body})

        raw = scope.get("headers", [])
        repeated = [n.decode() for n in SINGLE_HEADERS if sum(1 for k, _ in raw if k == n) > 1]
        if repeated:
            await answer(400, f"more than one {repeated[0]} header")
            return
        headers = dict(raw)
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host is None:
            await answer(400, "missing or malformed Host header")
            return
        if "*" not in self.allowed and host not in self.allowed:
            await answer(421, "this server does not answer to that host name (see serve --allowed-host)")
            return
        if scope["method"] not in SAFE_METHODS and cross_origin(headers):
            await answer(403, "a page from another origin may not send this request")
            return
        denied = self.gate(scope)
        if denied is not None:
            await denied(scope, receive, send_secured)
            return
        limit, message = self.body_limit(scope)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte of the body is read
            await answer(413, message, close=True)
            return
        seen, body_done = 0, False

        async def receive_limited() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body only a disconnect can come, whenever it does
                return await receive()
            with anyio.move_on_after(self.body_timeout_s) as waited:
                msg = await receive()
            if waited.cancelled_caught:
                raise BodyTimeout(f"no more of the request body arrived within {self.body_timeout_s:g} s")
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(message)
                body_done = not msg.get("more_body", False)
            return msg

        try:
            await self.app(scope, receive_limited, send_secured)
        except (BodyTooLarge, BodyTimeout) as exc:
            if started:
                raise
            status = 413 if isinstance(exc, BodyTooLarge) else 408
            await answer(status, str(exc), close=True)  # close: the rest of the body is never read
        except ClientDisconnect:
            log.debug("%s %s: the client hung up before sending the whole body", scope["method"], scope["path"])
