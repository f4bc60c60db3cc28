"""The server's HTTP connections: every limit and timeout stated once, enforced on uvicorn's own
protocol (httptools), and a shutdown that answers what it accepted.

uvicorn bounds a keep-alive connection's idle time, but nothing else about a client: a
connection that sends one header byte a second, or connects and says nothing, or stops half way
through its body, is held as long as the client likes, and a 1 MB header is read whole. A few
hundred such clients hold a server's sockets and memory while sending almost nothing
(slowloris). ``GuardedHttpProtocol`` is uvicorn's httptools protocol with the limits below
(``HttpLimits``, core/config.py, holds their values):

- the request line and headers must arrive within ``header_timeout_s`` of the first byte (or of
  the connection, for one that says nothing), and be at most ``max_header_bytes``;
- a body may pause at most ``body_timeout_s`` between two of its parts;
- HTTP/0.9 (a request line without a version, which no HTTP/1 parser ever finishes) is closed
  at once;
- past ``max_connections`` open connections, a new one is answered 503 and closed.

On shutdown (SIGTERM, Ctrl-C) uvicorn stops accepting, lets every request in progress finish
and closes idle connections. Two kinds of connection would be reset by that: one the kernel
had accepted but the server had not taken yet (closing the listening socket resets the whole
queue), and one taken but not yet read (its request in the socket). ``DrainingServer`` takes
the kernel's queue before it closes the listener, and each such connection gets
``shutdown_grace_s`` to send its request, which is answered with ``Connection: close``.
``drain_s`` bounds the whole drain (uvicorn's ``timeout_graceful_shutdown``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mnist_cnn.core.config import HttpLimits


def uvicorn_options(limits: HttpLimits | None = None) -> dict[str, Any]:
    """The uvicorn settings that enforce ``limits``: the protocol, the keep-alive and the drain."""
    limits = limits or HttpLimits()
    return {
        "http": functools.partial(GuardedHttpProtocol, limits=limits),
        "timeout_keep_alive": limits.keep_alive_s,
        "timeout_graceful_shutdown": limits.drain_s,
    }


def _plain_answer(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer with a {"detail": ...} body, written straight to the socket (the
    request never reached the app), and the connection closed after it."""
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with HttpLimits enforced (the module's docstring says why)."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.reading_head = True  # Between requests, or in a request's line and headers.
        self.head_bytes = 0
        self.first_line = b""  # The request line as it arrives, until its end is seen.
        self.head_timer: Any = None
        self.grace_timer: Any = None
        self.body_timer: Any = None
        self.body_seen_at = 0.0
        self.stopping = False  # The server is shutting down: the next answer closes the connection.

    # Connection events
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(
                _plain_answer(503, "Service Unavailable", "the server has too many connections; try again later")
            )
            transport.close()
            return
        self.arm_head_timer()  # A connection that never says anything is closed too.

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.grace_timer is not None:  # Shutting down, and here is the request: it is answered.
            self.grace_timer.cancel()
            self.grace_timer = None
        if self.reading_head:
            if self.head_timer is None:
                self.arm_head_timer()  # The first byte of the next request on a kept-alive connection.
            self.head_bytes += len(data)
            if self.is_http_0_9(data):
                self.refuse(400, "Bad Request", "HTTP/0.9 is not supported: send an HTTP/1.1 request")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if not self.transport.is_closing():  # Not one of this class's refusals.
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self.reading_head and self.head_bytes > self.limits.max_header_bytes:
            self.refuse_large_head()

    def is_http_0_9(self, data: bytes) -> bool:
        """Whether the request line, once whole, has no HTTP version (an HTTP/0.9 request)."""
        if self.first_line is None:
            return False
        line_end = data.find(b"\n")
        self.first_line = (self.first_line + (data if line_end < 0 else data[:line_end]))[-64:]
        if line_end < 0:
            return False
        line, self.first_line = self.first_line.rstrip(b"\r"), None
        return bool(line.strip()) and b" HTTP/" not in line

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self.refuse_large_head()
            raise httptools.HttpParserError("headers too large")  # Stops parsing what follows.
        self.reading_head = False
        self.head_bytes = 0
        self.cancel_head_timer()
        super().on_headers_complete()
        if self.stopping and self.cycle is not None:
            self.cycle.keep_alive = False  # Answered, then closed: the server is going away.
        if self.expects_body():
            self.body_seen_at = self.loop.time()
            self.body_timer = self.loop.call_later(self.limits.body_timeout_s, self.body_timed_out)

    def on_body(self, body: bytes) -> None:
        self.body_seen_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.cancel_body_timer()
        self.reading_head, self.head_bytes, self.first_line = True, 0, b""
        super().on_message_complete()

    # The limits
    def expects_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"", b"0")
            if name == b"transfer-encoding":
                return True
        return False

    def arm_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.limits.header_timeout_s, self.head_timed_out)

    def head_timed_out(self) -> None:
        """The request line and headers did not arrive in time (a slow or silent client): closed.
        Nothing is answered: a client this slow is not reading."""
        self.head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def body_timed_out(self) -> None:
        """No part of the body for body_timeout_s: 408 when nothing was answered yet, then closed.
        The app waiting on the body sees the client go away."""
        paused = self.loop.time() - self.body_seen_at
        if paused < self.limits.body_timeout_s:
            self.body_timer = self.loop.call_later(self.limits.body_timeout_s - paused, self.body_timed_out)
            return
        self.body_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            detail = f"the request body stopped for {self.limits.body_timeout_s:g} s; send it again"
            self.transport.write(_plain_answer(408, "Request Timeout", detail))
        self.transport.close()

    def refuse_large_head(self) -> None:
        limit = self.limits.max_header_bytes // 1024
        self.refuse(431, "Request Header Fields Too Large", f"the request's headers are over {limit} KB; send fewer")

    def refuse(self, status: int, reason: str, detail: str) -> None:
        self.cancel_timers()
        if not self.transport.is_closing():
            self.transport.write(_plain_answer(status, reason, detail))
            self.transport.close()

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def cancel_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def cancel_timers(self) -> None:
        self.cancel_head_timer()
        self.cancel_body_timer()
        if self.grace_timer is not None:
            self.grace_timer.cancel()
            self.grace_timer = None

    # Shutdown
    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, except for an idle connection: it may have a request on
        its way (accepted, not yet read), which a close now would reset. It gets
        shutdown_grace_s to arrive; that request is answered, then the connection closes."""
        self.stopping = True
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or self.head_bytes:
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        self.cancel_head_timer()
        self.grace_timer = self.loop.call_later(self.limits.shutdown_grace_s, self.grace_over)

    def grace_over(self) -> None:
        self.grace_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on shutdown first takes every connection the kernel has accepted
    on its listening sockets: closing a listener resets the connections still in its queue, and
    under load (the event loop behind its sockets) that queue holds requests at any moment.

    ``on_started`` is called once it listens, before it reads any request (``serve`` announces
    its address there: whoever reads the address finds the server answering)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.take_queued_connections()
        await super().shutdown(sockets)

    async def take_queued_connections(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        taken = []
        for server in getattr(self, "servers", []):
            for listener in server.sockets or ():
                with socket.socket(fileno=os.dup(listener.fileno())) as queue:
                    queue.setblocking(False)
                    for _ in range(config.backlog):  # The queue holds at most this many.
                        try:
                            connection, _ = queue.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        taken.append(loop.connect_accepted_socket(protocol, connection))
        if taken:
            await asyncio.gather(*taken, return_exceptions=True)
