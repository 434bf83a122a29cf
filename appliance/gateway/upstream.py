"""A call on its way to the runtime and back: the body the gateway authorised (with the usage
the audit needs asked for), the answer passed on whole or streamed (relay.py), each with its
audit record before it goes out (proxy.py's ``_send`` and ``_record``)."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from appliance.gateway.answers import API_PATHS
from appliance.gateway.answers import Refusal as _Refusal
from appliance.gateway.body import canonical
from appliance.gateway.config import ModelRoute
from appliance.gateway.record import Call
from appliance.gateway.relay import relay
from appliance.gateway.server import CUT_ON_DISCONNECT
from appliance.gateway.stream import Renamer, UsageDropper

if TYPE_CHECKING:
    from appliance.gateway.proxy import Gateway

LOG = logging.getLogger("appliance.gateway")


async def forward(
    gateway: Gateway,
    request: web.Request,
    call: Call,
    route: ModelRoute,
    document: dict[str, Any],
) -> web.StreamResponse:
    document["model"] = route.upstream_name
    dropper = ask_for_usage(document) if call.stream and request.path != API_PATHS[2] else None
    body = canonical(document)
    if not call.stream:
        request[CUT_ON_DISCONNECT] = True  # server.AuditedHandler: a client that leaves
    try:
        upstream = await gateway.backends.post(route.backend_base, request.path, body, call.stream)
        async with upstream:
            content_type = upstream.headers.get("Content-Type", "application/json")
            if upstream.status >= 500:
                gateway.metrics.backend_errors[route.name] += 1
                call.error = f"backend answered {upstream.status}"
            if content_type.startswith("text/event-stream"):
                renamer = Renamer(route) if route.upstream_name != route.name else None
                headers = {
                    "Content-Type": content_type,
                    "Cache-Control": "no-cache",
                    **gateway._headers(call, upstream.status, upstream.headers),
                }
                return await relay(gateway, request, call, upstream, headers, renamer, dropper)
            answer = await upstream.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        gateway.metrics.backend_errors[route.name] += 1
        LOG.warning("backend %s for %s failed: %r", route.backend_base, route.name, error)
        raise _Refusal(
            502, "backend_unavailable", f"the backend for {route.name!r} is not answering"
        ) from None
    if upstream.status == 200:
        with contextlib.suppress(ValueError, AttributeError):
            parsed = json.loads(answer)
            call.take_usage(parsed.get("usage"))
            if route.upstream_name != route.name and parsed.get("model") == route.upstream_name:
                # Clients see the names /v1/models lists, whatever the runtime calls it.
                parsed["model"] = route.name
                answer = json.dumps(parsed).encode()
    return await gateway._send(
        request, call, upstream.status, answer, content_type, upstream.headers
    )


def check_stream_fields(document: dict[str, Any]) -> None:
    """``stream`` a boolean, ``stream_options`` an object (or absent): a runtime that reads
    ``"stream": 1`` as true would stream a call the gateway records, counts and charges as a
    whole answer, without its usage."""
    stream = document.get("stream")
    if stream is not None and not isinstance(stream, bool):  # 1 == True in Python
        raise _Refusal(400, "invalid_stream", "'stream' must be true or false")
    options = document.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _Refusal(400, "invalid_stream_options", "'stream_options' must be an object")


def ask_for_usage(document: dict[str, Any]) -> UsageDropper | None:
    """Make the runtime report a stream's usage; a dropper for the usage-only event when the
    client did not ask for it (``stream_options`` is an object: check_stream_fields)."""
    options = document.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return None
    asked = options.get("include_usage") is True
    document["stream_options"] = {**options, "include_usage": True}
    return None if asked else UsageDropper()
