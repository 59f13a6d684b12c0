"""How uvicorn runs the app: forwarded headers believed only from a configured proxy, a deadline for each request's
head, and a cap on the connections one client holds open (the body's read timeout is ``Guard``'s).

uvicorn's own defaults would trust ``X-Forwarded-For`` from 127.0.0.1, so any local client could pose as any
address (and so escape the sign-in limit, which counts failures per address); its keep-alive timeout is reset by
every byte received, so a client trickling a request head holds its connection forever. ``guarded_h11`` is
uvicorn's h11 protocol with both closed: the head must arrive within ``head_timeout_s`` of the connection opening
(or of the previous response), and each address may hold ``max_client_connections`` connections at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import h11
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0  # the request line and headers, from the connection opening or the previous response
KEEP_ALIVE_S = 5.0  # idle between requests (uvicorn's own timer)
MAX_CLIENT_CONNECTIONS = 32  # a browser opens at most 6 per host; a page and a few API clients fit
_BUSY_BODY = b'{"detail":"too many open connections from this client"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\nretry-after: 5\r\n"
    b"x-content-type-options: nosniff\r\nconnection: close\r\n\r\n%b" % (len(_BUSY_BODY), _BUSY_BODY)
)


def guarded_h11(head_timeout_s: float, max_client_connections: int, exempt: frozenset[str]) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for each request head and a per-address connection cap (not applied
    to the addresses in ``exempt``: a trusted proxy carries every client's connections)."""
    open_by_client: Counter[str] = Counter()  # one server's connections, per peer address

    class GuardedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = self.client[0] if self.client else ""
            if peer not in exempt:
                if open_by_client[peer] >= max_client_connections:
                    log.debug("refused a connection from %s: %d already open", peer, open_by_client[peer])
                    transport.write(BUSY)
                    transport.close()
                    return
                open_by_client[peer] += 1
                self._counted = peer
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                open_by_client[self._counted] -= 1
                if open_by_client[self._counted] <= 0:
                    del open_by_client[self._counted]
                self._counted = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in (or the connection failed): no deadline
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's head

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(head_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _head_late(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.debug("closed a connection from %s: no request head within %.0f s", self.client, head_timeout_s)
                self.transport.close()

    return GuardedH11


def server_config(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    trusted_proxies: list[str] | None = None,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    max_client_connections: int = MAX_CLIENT_CONNECTIONS,
) -> Config:
    """The uvicorn settings ``serve`` runs with. ``trusted_proxies``: addresses whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed; without them the socket peer is the client."""
    proxies = [p.strip() for p in trusted_proxies or [] if p.strip()]
    return Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=guarded_h11(head_timeout_s, max_client_connections, frozenset(proxies)),
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        timeout_keep_alive=int(KEEP_ALIVE_S),
    )
