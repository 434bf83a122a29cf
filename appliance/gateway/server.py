"""Bounds on what clients can hold: connections, and time to send a request.

aiohttp's server has no limit on open connections and no deadline for a request's headers (a
client sending one byte every few seconds keeps its connection, and a file descriptor, for
ever). ``ConnectionGuard`` adds both in front of aiohttp's own protocol:

- past ``limit`` open connections a new one gets a bare 503 and is closed at once (the unit's
  LimitNOFILE leaves room above the limit for backend connections and the audit files);
- a connection with no request in progress (just opened, or kept alive after an answer) that
  has not delivered a request's headers within ``header_timeout_s`` is closed. The body has its
  own deadline in the handler (408).

Running out of file descriptors anyway (EMFILE at accept) is handled by asyncio: it logs,
stops accepting for a second and tries again, so the gateway serves again once descriptors
are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from appliance.gateway.answers import retry_headers

_BUSY_BODY = (
    b'{"error":{"message":"too many open connections","type":"server_error","code":"overloaded"}}'
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


# The listening queue of a worker's socket (supervisor.py binds it so).
SHARED_BACKLOG = 1024

# Records a request the parser refused: its request id, and the record's write in progress.
ErrorHook = Callable[[BaseRequest, int, str], tuple[str, "Future[Any]"]]


class _AfterRecord(web.Response):
    """An answer that goes out only once its record is written (503 if it cannot be)."""

    def __init__(self, written: Future[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._written = written

    async def prepare(self, request: BaseRequest) -> Any:
        try:
            await asyncio.wrap_future(self._written)
        except Exception:  # counted by the hook; no answer but 503 without a record
            self.set_status(503)
            self.text = "503: the audit log cannot be written right now"
        return await super().prepare(request)


# Set on a request (proxy.py) while the whole answer of its call is awaited from the backend.
CUT_ON_DISCONNECT = web.RequestKey("cut_on_disconnect", bool)


class AuditedHandler(RequestHandler):
    """aiohttp's protocol, with the requests its parser refuses (bad request line, header
    bytes HTTP forbids, headers too long) handed to ``on_error`` before the 4xx goes out: the
    gateway records them like any other refused call."""

    __slots__ = ("on_error",)

    def __init__(self, manager: web.Server, on_error: ErrorHook, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.on_error = on_error

    def connection_lost(self, exc: BaseException | None) -> None:
        # A whole (not streamed) answer the client stopped waiting for: its call is cancelled,
        # and the backend's request with it (the runtimes stop generating on a closed
        # connection), so an SDK's retry does not run beside a generation nobody will read.
        # Streams notice on their own (relay.py) and are charged what they were sent.
        request, task = self._current_request, self._task_handler
        super().connection_lost(exc)
        if request is not None and task is not None and request.get(CUT_ON_DISCONNECT):
            task.cancel()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """A request the parser refused is the client's doing, and recorded in the audit log:
        one line, not a traceback per hostile request in the journal."""
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            self.logger.info("refused a malformed request: %s", error.message)
        else:
            super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)
        request_id, written = self.on_error(request, status, str(message or exc))
        assert isinstance(plain, web.Response)
        answer = _AfterRecord(written, status=plain.status, body=plain.body)
        answer.content_type = plain.content_type
        answer.headers["X-Request-Id"] = request_id
        # The same bytes get the same refusal: an SDK must not send them again.
        answer.headers.update(retry_headers(plain.status, 1))
        answer.force_close()
        return answer


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's handler behind the guard's bookkeeping."""

    def __init__(self, guard: ConnectionGuard, make_handler: Callable[[], RequestHandler]) -> None:
        self.guard = guard
        self.make_handler = make_handler
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.busy = 0
        self.idle_since = time.monotonic()
        self.received = False  # bytes arrived while no request was in progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.guard.open >= self.guard.limit:
            self.guard.refused += 1
            transport.write(_BUSY)
            transport.close()
            return
        self.guard.open += 1
        self.guard.connections[transport] = self
        self.handler = self.make_handler()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.received = self.received or not self.busy
            self.handler.data_received(data)

    def eof_received(self) -> None:
        if self.handler is not None:
            self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handler is None:
            return
        self.guard.open -= 1
        if self.transport is not None:
            self.guard.connections.pop(self.transport, None)
        self.handler.connection_lost(exc)
        self.handler = None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


class ConnectionGuard:
    def __init__(self, limit: int, header_timeout_s: float) -> None:
        self.limit = limit
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.refused = 0
        self.cut = 0
        self.connections: dict[asyncio.BaseTransport, _Connection] = {}

    def protocol(self, make_handler: Callable[[], RequestHandler]) -> _Connection:
        return _Connection(self, make_handler)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Marks the connection busy while a request is handled: its header deadline then
        starts again once the answer is out."""
        connection = self.connections.get(request.transport) if request.transport else None
        if connection is None:
            return await handler(request)
        connection.busy += 1
        try:
            return await handler(request)
        finally:
            connection.busy -= 1
            connection.idle_since = time.monotonic()
            connection.received = False

    def sweep(self) -> None:
        """Close every connection that has waited too long for a request's headers."""
        deadline = time.monotonic() - self.header_timeout_s
        for transport, connection in list(self.connections.items()):
            if not connection.busy and connection.idle_since < deadline:
                self.cut += int(connection.received)
                transport.close()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.header_timeout_s / 4))
            self.sweep()


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with every connection made through ``guard``; HTTPS with
    ``ssl_context``. A TLS handshake gets the header deadline too: a client that opens a
    connection and never finishes its handshake holds it no longer than one that sends no
    request. With ``sock`` it accepts on that listening socket (a worker's, bound by the
    supervisor) instead of binding host and port."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        on_error: ErrorHook,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._sock = sock
        self._guard = guard
        self._on_error = on_error
        self._sweeper: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # The arguments aiohttp's own Server() would give its handler (access log, limits).
        settings = {"loop": loop, **server._kwargs}

        def handler() -> RequestHandler:
            return AuditedHandler(server, self._on_error, **settings)

        handshake = self._guard.header_timeout_s if self._ssl_context else None
        if self._sock is not None:
            self._server = await loop.create_server(
                lambda: self._guard.protocol(handler),
                sock=self._sock,
                backlog=SHARED_BACKLOG,
                ssl=self._ssl_context,
                ssl_handshake_timeout=handshake,
            )
        else:
            self._server = await loop.create_server(
                lambda: self._guard.protocol(handler),
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=self._reuse_address,
                ssl=self._ssl_context,
                ssl_handshake_timeout=handshake,
            )
        self._sweeper = asyncio.create_task(self._guard.run())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await super().stop()
