"""The gateway's own error answers: OpenAI's error shape, and what each tells clients about
retrying it.

The OpenAI SDKs retry 408, 409, 429 and every 5xx by default (twice, with backoff), unless the
answer says ``x-should-retry``; they wait as long as ``Retry-After`` says (up to a minute or
two). Without these headers one call refused for a reason no retry can change (a 501, a 4xx
that the SDK's own rules would retry) costs the backend and the audit log three times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from appliance.gateway.config import ModelRoute

API_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
AUDIT_DOWN = "the audit log cannot be written right now; calls are refused until it can"

# 4xx a retry can fix: the body came too slowly (408), a conflict (409), a rate limit (429).
_RETRYABLE_4XX = frozenset((408, 409, 429))
# Retry-After values passed on from a backend: whole seconds, as HTTP writes them, bounded.
_MAX_PASSED_ON_S = 120


class Refusal(Exception):
    """A call the gateway answers itself with an error (and records)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.kind = (
            "server_error"
            if status >= 500
            else "permission_error"
            if status == 403
            else "rate_limit_error"
            if status == 429
            else "invalid_request_error"
        )


def model_card(route: ModelRoute) -> dict[str, Any]:
    """A model as ``/v1/models`` lists it and ``/v1/models/{id}`` shows it."""
    return {
        "id": route.name,
        "object": "model",
        "created": 0,
        "owned_by": "appliance",
        "appliance_digest": route.digest,
    }


def error_body(kind: str, code: str, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def _seconds(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.strip().isdigit():
        return None
    seconds = int(value.strip())
    return seconds if seconds <= _MAX_PASSED_ON_S else None


def retry_headers(
    status: int, retry_after_s: int, upstream: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Headers for an answer with ``status``: ``x-should-retry: false`` where no retry can
    help, ``Retry-After`` on 502/503 (the backend's own when it gave one) and on a backend's
    429 that gave one."""
    passed_on = _seconds(upstream.get("Retry-After")) if upstream is not None else None
    if status in (502, 503):
        return {"Retry-After": str(passed_on if passed_on is not None else retry_after_s)}
    if status == 429:
        return {} if passed_on is None else {"Retry-After": str(passed_on)}
    if status == 501 or (400 <= status < 500 and status not in _RETRYABLE_4XX):
        return {"x-should-retry": "false"}
    return {}
