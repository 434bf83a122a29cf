"""The gateway's connections to its runtimes: pooled and kept alive, asked again once on a fresh
connection when a pooled one turns out to be closed.

llama.cpp's server closes the connection after every streamed answer without saying so; a pooled
connection reused right after fails. A backend seen to drop a pooled connection gets a
connection of its own for each stream from then on (``Connection: close``), the others keep
theirs: a new connection per stream cost the gateway 7 % of its CPU (benchmarks/gateway.py).
Pooled connections are let go after 4 s, under the runtimes' own idle timeout (uvicorn's, so
vLLM's, and llama.cpp's: 5 s), so the gateway does not reuse one the backend is closing.
"""

from __future__ import annotations

import logging

import aiohttp

LOG = logging.getLogger("appliance.gateway")

_FORWARD_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
_STREAM_HEADERS = {**_FORWARD_HEADERS, "Connection": "close"}
_KEEPALIVE_S = 4.0
_LIMIT = 256


class Backends:
    def __init__(self, timeout_s: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5)
        self.session: aiohttp.ClientSession | None = None
        # A call asked again gets a fresh connection: the pool may hold more the backend dropped.
        self.fresh: aiohttp.ClientSession | None = None
        self.closes_after_streams: set[str] = set()  # backend bases

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_LIMIT, keepalive_timeout=_KEEPALIVE_S),
            timeout=self.timeout,
            auto_decompress=False,
        )
        self.fresh = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_LIMIT, force_close=True),
            timeout=self.timeout,
            auto_decompress=False,
        )

    async def close(self) -> None:
        for session in (self.session, self.fresh):
            if session is not None:
                await session.close()

    async def post(self, base: str, path: str, body: bytes, stream: bool) -> aiohttp.ClientResponse:
        """POST ``body`` to ``base + path``; once more, on a fresh connection, when a pooled one
        turns out to have been closed by the backend before any answer came."""
        assert self.session is not None and self.fresh is not None
        closes = stream and base in self.closes_after_streams
        headers = _STREAM_HEADERS if closes else _FORWARD_HEADERS
        try:
            return await self.session.post(base + path, data=body, headers=headers)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
            if isinstance(error, aiohttp.ClientConnectorError):
                raise  # nothing listens: no point in asking again
            if base not in self.closes_after_streams:
                LOG.info("backend %s drops kept-alive connections: a stream gets its own", base)
                self.closes_after_streams.add(base)
            headers = _STREAM_HEADERS if stream else _FORWARD_HEADERS
            return await self.fresh.post(base + path, data=body, headers=headers)
