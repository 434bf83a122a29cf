"""CORS for browser clients: off unless the config lists origins (``cors.allow_origins``).

Only pages from a listed origin get CORS headers, on every answer (streams included) and on
preflights. A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
from a listed origin is answered 204 without a key, since browsers never send one on a
preflight; it is still audited like every call. From any other origin it is an ordinary
unauthenticated call (401) and no CORS header is sent, so the browser blocks the page.

``*`` is answered as ``*`` and never with ``Access-Control-Allow-Credentials`` (the config
refuses that pair); with credentials allowed, the page's own origin is echoed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from appliance.gateway.config import Cors

_METHODS = "GET, POST, OPTIONS"
# Headers a page may read from an answer: the ids, and what tells clients whether to retry.
_EXPOSED = "X-Request-Id, X-Client-Request-Id, Retry-After, x-should-retry"
# A preflight's list of request headers is echoed when it is a plain list of header names
# (the OpenAI SDK for browsers sends several x-stainless-* headers besides Authorization).
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
_DEFAULT_HEADERS = "Authorization, Content-Type, X-Request-Id, X-Client-Request-Id"


class _Request(Protocol):
    """What the policy reads of a request (aiohttp's requests have both)."""

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class CorsPolicy:
    def __init__(self, settings: Cors) -> None:
        self.any = "*" in settings.allow_origins
        self.origins = frozenset(o.lower() for o in settings.allow_origins if o != "*")
        self.credentials = settings.allow_credentials
        self.max_age = str(settings.max_age_s)

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allowed(self, request: _Request) -> str | None:
        """The request's Origin when CORS headers are due for it, else None."""
        origin = request.headers.get("Origin")
        if origin is None or not self.enabled:
            return None
        if self.any or origin.lower() in self.origins:
            return origin
        return None

    def is_preflight(self, request: _Request) -> bool:
        return (
            request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
            and self.allowed(request) is not None
        )

    def _origin_headers(self, origin: str) -> dict[str, str]:
        if self.any and not self.credentials:
            return {"Access-Control-Allow-Origin": "*"}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def preflight_headers(self, request: _Request) -> dict[str, str]:
        origin = self.allowed(request)
        assert origin is not None
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        allowed = asked if asked and len(asked) <= 2048 and _HEADER_LIST.match(asked) else None
        return {
            **self._origin_headers(origin),
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": allowed or _DEFAULT_HEADERS,
            "Access-Control-Max-Age": self.max_age,
        }

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp's on_response_prepare hook: CORS headers on an answer to a listed origin."""
        origin = self.allowed(request)
        if origin is None or "Access-Control-Allow-Origin" in response.headers:
            return
        response.headers.update(self._origin_headers(origin))
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED
