"""The gateway's request path: authenticate, route by model, pass the answer through, audit.

Every call to an API path (anything but ``/health`` and ``/metrics``) gets one audit record,
refused calls included, carrying the digest of the response. A whole answer is recorded
before it is sent, a stream before its end (``data: [DONE]`` is held back until then): no
answer leaves without its record. While the audit log cannot be written (see audit_writer) the
gateway answers 503 and calls no backend; a stream whose record fails ends with an error event.

The backend receives the body the gateway authorised, re-serialised from the parsed object
(see body.py for what is refused as ambiguous).

Streams (``"stream": true``) are passed through chunk by chunk as they arrive (relay.py). The
gateway always asks the runtime for ``stream_options.include_usage`` (the record needs the
token counts, also of a client that set it false) and drops the usage-only final event
(``choices: []``) from the client's stream unless the client asked for it itself: common client
code reads ``chunk.choices[0]`` of every event.

Error answers say whether a retry can help (answers.py), so that an SDK's automatic retries
do not turn one refused call into three calls and three records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest

from appliance.gateway.answers import (
    API_PATHS,
    AUDIT_DOWN,
    error_body,
    model_card,
    retry_headers,
)
from appliance.gateway.answers import Refusal as _Refusal
from appliance.gateway.audit_writer import AuditSink
from appliance.gateway.backends import Backends
from appliance.gateway.body import BodyError, parse
from appliance.gateway.config import GatewayConfig
from appliance.gateway.cors import CorsPolicy
from appliance.gateway.key_events import KeyWatcher
from appliance.gateway.keys import KeyRecord, KeyStore, claimed_id
from appliance.gateway.limits import Limiter, LimitGate, estimate_prompt_tokens
from appliance.gateway.metrics import Metrics
from appliance.gateway.record import MODEL_LIMIT, Call, clean
from appliance.gateway.server import ConnectionGuard
from appliance.gateway.status import Shared, health_page, live_page, metrics_page
from appliance.gateway.upstream import check_stream_fields, forward

LOG = logging.getLogger("appliance.gateway")

_NO_MODEL = "-"  # metrics label for calls that name no configured model
_AUDIT_DOWN = AUDIT_DOWN
_MODEL_PATH = "/v1/models/"
_KNOWN_PATHS = frozenset((*API_PATHS, "/v1/models"))


class Gateway:
    def __init__(
        self, config: GatewayConfig, keys: KeyStore, audit: AuditSink, guard: ConnectionGuard
    ) -> None:
        self.config = config
        self.guard = guard
        self.audit = audit
        # The keys in use follow the keys file while the gateway runs (key_events.py).
        self.watcher = KeyWatcher(config.keys_file, config.audit.dir, keys, audit.write)
        self.limits: LimitGate = Limiter()
        self.metrics = Metrics()
        self.shared: Shared | None = None  # a worker's view of the whole gateway (worker.py)
        self.routes = {m.name: m for m in config.models}
        self.cors = CorsPolicy(config.cors)
        self.backends = Backends(config.backend_timeout_s)

    @property
    def keys(self) -> KeyStore:
        return self.watcher.store

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession | None:
        return self.backends.session

    async def start_session(self, _app: web.Application) -> None:
        await self.backends.start()

    async def close_session(self, _app: web.Application) -> None:
        await self.backends.close()
        await asyncio.get_running_loop().run_in_executor(None, self.audit.close)

    def _headers(
        self, call: Call, status: int, upstream: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The ids, and on an error whether a retry can help."""
        headers = {"X-Request-Id": call.request_id}
        if (own := call.echoed_id) is not None:
            headers["X-Client-Request-Id"] = own
        if status >= 400:
            headers.update(retry_headers(status, self.config.retry_after_s, upstream))
        return headers

    async def _send(
        self,
        request: web.Request,
        call: Call,
        status: int,
        body: bytes,
        content_type: str,
        upstream: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        call.status = status
        call.response_sha256 = hashlib.sha256(body).hexdigest()
        if not await self._record(call):
            status, content_type, upstream = 503, "application/json", None
            body = error_body("server_error", "audit_unavailable", _AUDIT_DOWN)
        response = web.Response(
            status=status,
            body=body,
            headers={
                "Content-Type": content_type,
                **self._headers(call, status, upstream),
                # The refusal's own (a rate limit's Retry-After) win over the defaults.
                **(headers or {}),
            },
        )
        if status == 408:
            response.force_close()  # the rest of that body is never read
        try:
            # A whole answer not taken within as long as a body may take to come: a client
            # that stopped reading held the connection and its key's concurrency slot for ever.
            async with asyncio.timeout(self.config.body_timeout_s):
                await response.prepare(request)
                await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            LOG.info("call %s: the client left before the answer was sent", call.request_id)
        except TimeoutError:
            LOG.info("call %s: the answer was not taken in time: cut off", call.request_id)
            if request.transport is not None:
                request.transport.abort()  # close() would wait for it to take the rest
        if status == 408 and request.transport is not None:
            request.transport.close()
        return response

    async def _refuse(
        self, request: web.Request, call: Call, refusal: _Refusal
    ) -> web.StreamResponse:
        call.error = call.error or f"{refusal.code}: {refusal.message}"
        body = error_body(refusal.kind, refusal.code, refusal.message)
        return await self._send(
            request, call, refusal.status, body, "application/json", headers=refusal.headers
        )

    async def _record(self, call: Call) -> bool:
        """Write the call's audit record (once) and count it; False when the write failed. One
        not written is counted (_written) also when the client left meanwhile: the handler is
        cancelled (server.AuditedHandler), the write goes on."""
        if call.recorded:
            return True
        call.recorded = True
        seconds = time.perf_counter() - call.started
        label = call.model if call.model in self.routes else _NO_MODEL
        self.metrics.observe(
            label, call.status, seconds, call.prompt_tokens, call.completion_tokens, call.key_id
        )
        write = self.audit.write(call.fields(seconds * 1000, self.routes))
        if not write.done():  # written at once, it costs no wait (audit_writer)
            try:
                await asyncio.wait((write,))  # the write is not cancelled with the handler
            except asyncio.CancelledError:
                # Counted when the write ends: else its failure was never looked at.
                write.add_done_callback(lambda done: self._written(call, done))
                raise
        return self._written(call, write)

    def _written(self, call: Call, write: asyncio.Future[dict[str, Any]]) -> bool:
        error = asyncio.CancelledError() if write.cancelled() else write.exception()
        if error is None:
            self.metrics.audit_records += 1
            return True
        # Logged by the writer; calls are refused while it lasts.
        self.metrics.audit_failures += 1
        self.audit.unrecorded()
        LOG.error("call %s not audited: %r", call.request_id, error)
        return False

    def record_malformed(
        self, request: BaseRequest, status: int, reason: str
    ) -> tuple[str, Future[dict[str, Any]]]:
        """The record of a request aiohttp's parser refused (no handler runs for it): its
        request id and the write, which the answer waits for (server.AuditedHandler)."""
        call = Call(request, _KNOWN_PATHS)
        call.method = call.path = "-"  # the parser did not get that far, or they are invalid
        call.status = status
        call.error = f"malformed_request: {reason}"
        self.metrics.observe(_NO_MODEL, status, time.perf_counter() - call.started, None, None)
        future = self.audit.submit(call.fields(0.0, self.routes))

        def written(done: Future[dict[str, Any]]) -> None:
            if done.exception() is None:
                self.metrics.audit_records += 1
            else:
                self.metrics.audit_failures += 1
                self.audit.unrecorded()

        future.add_done_callback(written)
        return call.request_id, future

    def _authenticate(self, request: web.Request, call: Call) -> KeyRecord:
        if self.audit.failed is not None:
            raise _Refusal(
                503,
                "audit_unavailable",
                _AUDIT_DOWN,
            )
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise _Refusal(
                401, "missing_api_key", "an API key is required: Authorization: Bearer <key>"
            )
        key = header[7:].strip()
        record, refused = self.keys.check(key, datetime.now(UTC))
        if record is None:
            claimed = claimed_id(key)
            call.error = f"invalid_api_key: unknown key{f' (claims {claimed})' if claimed else ''}"
            raise _Refusal(401, "invalid_api_key", "unknown API key")
        call.key_id = record.id
        if refused is not None:  # the key's own secret, revoked, expired or rotated out
            call.error = f"invalid_api_key: {refused}"
            raise _Refusal(401, "invalid_api_key", refused)
        return record

    # -- handlers -------------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        call = Call(request, _KNOWN_PATHS)
        try:
            key = self._authenticate(request, call)
            data = [model_card(m) for m in self.config.models if key.allows(m.name)]
            body = json.dumps({"object": "list", "data": data}).encode()
            return await self._send(request, call, 200, body, "application/json")
        except _Refusal as refusal:
            return await self._refuse(request, call, refusal)
        finally:
            await self._record(call)

    async def model(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models/{id}``: a model this key may use; any other is 404 (whether it
        exists is none of that key's business), the record says which."""
        call = Call(request, _KNOWN_PATHS)
        name = request.path[len(_MODEL_PATH) :]
        call.model = name
        route = self.routes.get(name)
        call.digest = route.digest if route else None
        try:
            key = self._authenticate(request, call)
            if route is None or not key.allows(route.name):
                if route is not None:
                    call.error = f"model_not_allowed: this key may not use the model {name!r}"
                raise _Refusal(
                    404, "model_not_found", f"the model {clean(name, MODEL_LIMIT)!r} does not exist"
                )
            body = json.dumps(model_card(route)).encode()
            return await self._send(request, call, 200, body, "application/json")
        except _Refusal as refusal:
            return await self._refuse(request, call, refusal)
        finally:
            await self._record(call)

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        call = Call(request, _KNOWN_PATHS)
        try:
            if self.cors.is_preflight(request):
                # Browsers send no key on a preflight; only listed origins get this far.
                return await self._preflight(request, call)
            self._authenticate(request, call)
            if request.path in API_PATHS or request.path == "/v1/models":
                raise _Refusal(
                    405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
                )
            raise _Refusal(404, "unknown_url", f"no endpoint {request.method} {request.path}")
        except _Refusal as refusal:
            return await self._refuse(request, call, refusal)
        finally:
            await self._record(call)

    async def _preflight(self, request: web.Request, call: Call) -> web.StreamResponse:
        call.status = 204
        call.response_sha256 = hashlib.sha256(b"").hexdigest()
        headers = {"X-Request-Id": call.request_id, **self.cors.preflight_headers(request)}
        if not await self._record(call):
            failure = _Refusal(503, "audit_unavailable", _AUDIT_DOWN)
            return await self._refuse(request, call, failure)
        response = web.Response(status=204, headers=headers)
        await response.prepare(request)
        await response.write_eof()
        return response

    async def api(self, request: web.Request) -> web.StreamResponse:
        call = Call(request, _KNOWN_PATHS)
        try:
            return await self._api(request, call)
        except _Refusal as refusal:
            return await self._refuse(request, call, refusal)
        except Exception:
            # A bug of ours still gets an answer and its record, never a bare 500 without one.
            LOG.exception("call %s failed in the gateway", call.request_id)
            if call.recorded or call.status:
                raise
            failure = _Refusal(500, "internal_error", "the gateway failed on this call")
            return await self._refuse(request, call, failure)
        except asyncio.CancelledError:
            # The client of a whole answer left (server.AuditedHandler): the backend call is
            # cut with it. 499, as nginx says, when no answer had begun.
            if not call.status and call.prompt_bytes and call.prompt_tokens is None:
                # The prompt reached the backend: charged by its size, as a stream cut off
                # before its usage (relay.py), or leaving early would make calls free.
                call.prompt_tokens_estimated = estimate_prompt_tokens(call.prompt_bytes)
            call.status = call.status or 499
            call.error = call.error or "client disconnected"
            raise
        finally:
            self.limits.finish(call)  # first: a cancelled record write must not leak its slot
            await self._record(call)

    async def _api(self, request: web.Request, call: Call) -> web.StreamResponse:
        # The key is checked first but refused only once the body is read: a refused call's
        # record still names the model it asked for. An unknown key gets 401 whatever it sent.
        try:
            key: KeyRecord | None = self._authenticate(request, call)
        except _Refusal as refusal:
            key, unauthenticated = None, refusal
        limit = self.config.max_body_bytes
        too_large = _Refusal(413, "request_too_large", f"the request body is over {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise unauthenticated if key is None else too_large
        try:
            async with asyncio.timeout(self.config.body_timeout_s):  # a timer, not a task
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise (unauthenticated if key is None else too_large) from None
        except TimeoutError:
            self.metrics.slow_clients += 1
            raise _Refusal(
                408, "request_timeout", f"the body took over {self.config.body_timeout_s} s"
            ) from None
        except OSError:  # the client left mid-body (aiohttp fails the read with the reason)
            call.status, call.error = 499, "client disconnected"
            return web.Response(status=499)  # to no one: recorded, not the gateway's failure
        call.prompt_sha256 = hashlib.sha256(body).hexdigest()
        call.prompt_bytes = len(body)
        document: dict[str, Any] | None = None
        try:
            document = parse(body)
        except BodyError as error:
            invalid = _Refusal(400, error.code, error.message)
        if document is not None:
            model = document.get("model")
            call.model = model if isinstance(model, str) else None
            call.stream = document.get("stream") is True
            call.take_user(document)
        route = self.routes.get(call.model) if call.model else None
        call.digest = route.digest if route else None
        if key is None:
            raise unauthenticated
        if document is None:
            raise invalid
        if call.model is None:
            raise _Refusal(400, "missing_model", "the request must name a model")
        check_stream_fields(document)
        if route is None:
            raise _Refusal(
                404,
                "model_not_found",
                f"the model {clean(call.model, MODEL_LIMIT)!r} does not exist",
            )
        if not key.allows(route.name):
            raise _Refusal(
                403, "model_not_allowed", f"this key may not use the model {route.name!r}"
            )
        if route.task == "embedding" and request.path != API_PATHS[2]:
            raise _Refusal(
                400, "wrong_model_task", f"{route.name!r} is an embedding model: use /v1/embeddings"
            )
        if hit := await self.limits.acquire(key, call):
            call.error = hit.audit_error
            raise _Refusal(429, "rate_limit_exceeded", hit.message, hit.headers())
        return await forward(self, request, call, route, document)

    async def health(self, request: web.Request) -> web.Response:
        return await health_page(self, request)

    async def live(self, _request: web.Request) -> web.Response:
        return live_page()

    async def metrics_page(self, request: web.Request) -> web.Response:
        return await metrics_page(self, request)
