"""A streamed answer (SSE) on its way from the runtime to the client, chunk by chunk, with its
record written before the stream's end goes out."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from appliance.gateway.answers import AUDIT_DOWN, error_body
from appliance.gateway.limits import estimate_prompt_tokens
from appliance.gateway.record import Call
from appliance.gateway.stream import DoneHolder, Renamer, UsageDropper, UsageScanner

if TYPE_CHECKING:
    from appliance.gateway.proxy import Gateway

LOG = logging.getLogger("appliance.gateway")


class _Pipe:
    """What each chunk goes through: usage read (before anything is dropped), the model
    renamed, the unasked usage event dropped, digested as the client receives it, [DONE]
    held back."""

    def __init__(self, renamer: Renamer | None, dropper: UsageDropper | None) -> None:
        self.scanner = UsageScanner()
        self.renamer = renamer
        self.dropper = dropper
        self.digest = hashlib.sha256()
        self.holder = DoneHolder()

    def feed(self, received: bytes) -> bytes:
        self.scanner.feed(received)
        chunk = self.renamer.feed(received) if self.renamer else received
        return self._out(self.dropper.feed(chunk) if self.dropper else chunk)

    def flush(self) -> bytes:
        chunk = self.renamer.flush() if self.renamer else b""
        if self.dropper:
            chunk = self.dropper.feed(chunk) + self.dropper.flush()
        return self._out(chunk)

    def _out(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        self.digest.update(chunk)
        return self.holder.feed(chunk)


class _SlowClient(Exception):
    """The client took no part of the answer for the deadline (see ``_write``)."""


async def _write(response: web.StreamResponse, chunk: bytes, deadline_s: float) -> None:
    """One chunk to the client, which must take it within ``deadline_s``: a client that stops
    reading (its window shut, TCP keeps the connection) held the stream, and the runtime's
    generation behind it, for ever, with no record until it left."""
    try:
        async with asyncio.timeout(deadline_s):  # a timer, not a task per chunk as wait_for
            await response.write(chunk)
    except TimeoutError:
        raise _SlowClient from None


async def relay(
    gateway: Gateway,
    request: web.Request,
    call: Call,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    renamer: Renamer | None,
    dropper: UsageDropper | None,
) -> web.StreamResponse:
    call.status = upstream.status
    response = web.StreamResponse(status=upstream.status, headers=headers)
    pipe = _Pipe(renamer, dropper)
    deadline_s = gateway.config.body_timeout_s  # as for the request's body, so for the answer
    relayed = 0  # events with generated text the client was sent
    try:
        # In the try: a client gone before the headers is a disconnect like any other, and
        # the call's one record says so (api() writes it, never a second).
        await response.prepare(request)
        async for received in upstream.content.iter_any():
            if ready := pipe.feed(received):
                await _write(response, ready, deadline_s)
                relayed = pipe.scanner.generated
        if ready := pipe.flush():
            await _write(response, ready, deadline_s)
        relayed = pipe.scanner.generated
    except _SlowClient:
        call.error = f"client too slow: took none of the answer for {deadline_s} s"
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        call.error = "client disconnected"
    except (aiohttp.ClientError, TimeoutError) as error:
        gateway.metrics.backend_errors[call.model or "-"] += 1
        call.error = f"backend stream broken: {error!r}"
        relayed = pipe.scanner.generated
    call.response_sha256 = pipe.digest.hexdigest()
    call.take_usage(pipe.scanner.usage)
    if pipe.scanner.usage is None and call.error is not None:
        # Cut off before the runtime's usage event: charged (and recorded) for the tokens
        # the client was sent, one per event, and for the prompt by an estimate from its size
        # (its count is unknown; the record keeps prompt_tokens null and says it estimated).
        call.completion_tokens = relayed
        call.prompt_tokens_estimated = estimate_prompt_tokens(call.prompt_bytes)
    # Recorded before the stream's end ([DONE] included) is sent: a client that saw the
    # whole answer can find its record.
    recorded = await gateway._record(call)  # one not written is counted there
    try:
        if call.error is None and recorded:
            await response.write_eof(pipe.holder.held)  # one write: the end and the EOF
            return response
        if call.error is None:  # the answer came whole, its record did not: no success
            event = error_body("server_error", "audit_unavailable", AUDIT_DOWN)
            await response.write(b"data: " + event + b"\n\n")
            await response.write_eof()
            return response
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        LOG.info("call %s: the client left before the stream ended", call.request_id)
    if request.transport is not None:
        # No clean end: the client must not take it as whole. A client too slow gets no more:
        # close() would wait for it to take what is buffered, holding the connection.
        slow = call.error is not None and call.error.startswith("client too slow")
        (request.transport.abort if slow else request.transport.close)()
    return response
