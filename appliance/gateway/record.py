"""What the audit record of one call says, bounded and always serialisable.

Everything a client chooses (the model it names, the path, the key it claims, text quoted in
an error) reaches the record only through ``clean``: text that is not valid Unicode (a lone
surrogate from a JSON escape, an undecodable header byte) is kept as its backslash escape, and
a value longer than its limit is cut, with its length and sha256 so it can still be matched.
Values the config knows (a configured model, an API path) are stored whole. A record is
therefore at most a few KiB whatever the request, and its canonical JSON always encodes.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp.web_request import BaseRequest

from appliance.gateway.tls import client_certificate

# Characters kept of a value the config does not know; the rest is summarised by its digest.
MODEL_LIMIT = 128
PATH_LIMIT = 256
ERROR_LIMIT = 512
# A client's own request id and the request's ``user`` field (OpenAI allows any string).
CLIENT_ID_LIMIT = 128
USER_LIMIT = 256
# Client request ids echoed back as they came: printable ASCII, no spaces, short.
_ECHOABLE = re.compile(r"[\x21-\x7e]{1,128}")
# Backend-reported token counts above this are not believed (no context is this long).
MAX_TOKENS = 1 << 32


def clean(value: str, limit: int) -> str:
    """``value`` as text that encodes as UTF-8, at most ``limit`` characters plus a summary."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[:limit]}...[{len(value)} chars, sha256:{digest}]"


def token_count(value: Any) -> int | None:
    """A backend's token count as recorded: a plain int within bounds, else None."""
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        return None
    return value


def retry_count(header: str | None) -> int | None:
    """The openai SDKs' ``X-Stainless-Retry-Count`` (0 on a first try, then 1, 2...): recorded
    so that an SDK's retries of one call show as such. Anything but a small number: None."""
    if header is None or not (header.isascii() and header.isdigit()) or len(header) > 3:
        return None
    return int(header)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Call:
    """What the audit record of one call will say."""

    __slots__ = (
        "client",
        "client_cert",
        "client_request_id",
        "completion_tokens",
        "digest",
        "echoed_id",
        "error",
        "key_id",
        "method",
        "model",
        "path",
        "prompt_bytes",
        "prompt_sha256",
        "prompt_tokens",
        "prompt_tokens_estimated",
        "recorded",
        "request_id",
        "response_sha256",
        "retry_count",
        "started",
        "status",
        "stream",
        "time",
        "user",
    )

    def __init__(self, request: BaseRequest, known_paths: frozenset[str] = frozenset()) -> None:
        self.started = time.perf_counter()
        self.time = now_iso()
        self.request_id = str(uuid.uuid4())
        # The client's own id (OpenAI's X-Client-Request-Id, or the common X-Request-Id) is
        # kept beside the gateway's, which stays the record's key: it is unique, theirs need
        # not be.
        own = request.headers.get("X-Client-Request-Id") or request.headers.get("X-Request-Id")
        self.client_request_id = clean(own, CLIENT_ID_LIMIT) if own else None
        # Sent back (X-Client-Request-Id) only as it came, so only when it came printable.
        self.echoed_id = own if own and _ECHOABLE.fullmatch(own) else None
        self.user: str | None = None
        self.retry_count = retry_count(request.headers.get("X-Stainless-Retry-Count"))
        self.client = clean(request.remote or "", PATH_LIMIT) or None
        # Who the TLS layer let in, when the listener requires client certificates.
        cert = client_certificate(request.transport)
        self.client_cert = (
            None if cert is None else {**cert, "subject": clean(cert["subject"], USER_LIMIT)}
        )
        self.method = clean(request.method, 32)
        self.path = request.path if request.path in known_paths else clean(request.path, PATH_LIMIT)
        self.key_id: str | None = None
        self.model: str | None = None
        self.digest: str | None = None
        self.status = 0
        self.prompt_sha256: str | None = None
        self.response_sha256: str | None = None
        self.prompt_tokens: int | None = None
        # A stream cut off before its usage: the prompt's tokens estimated from its size, so
        # a key cannot send large prompts and leave before the usage for free (limits.py).
        self.prompt_bytes = 0
        self.prompt_tokens_estimated: int | None = None
        self.completion_tokens: int | None = None
        self.stream = False
        self.error: str | None = None
        self.recorded = False

    def take_user(self, document: dict[str, Any]) -> None:
        user = document.get("user")
        self.user = clean(user, USER_LIMIT) if isinstance(user, str) and user else None

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = token_count(usage.get("prompt_tokens"))
            self.completion_tokens = token_count(usage.get("completion_tokens"))

    def fields(self, latency_ms: float, known_models: dict[str, Any]) -> dict[str, Any]:
        model = self.model
        if model is not None and model not in known_models:
            model = clean(model, MODEL_LIMIT)
        return {
            "time": self.time,
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "key_id": self.key_id,
            "client": self.client,
            "client_cert": self.client_cert,
            "method": self.method,
            "path": self.path,
            "model": model,
            "model_digest": self.digest,
            "user": self.user,
            "status": self.status,
            "prompt_sha256": self.prompt_sha256,
            "response_sha256": self.response_sha256,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": round(latency_ms, 3),
            "stream": self.stream,
            "error": None if self.error is None else clean(self.error, ERROR_LIMIT),
            # Only when the client says (the openai SDKs do, from 0): which calls were retries.
            **({} if self.retry_count is None else {"retry_count": self.retry_count}),
            **(
                {}
                if self.prompt_tokens_estimated is None
                else {"prompt_tokens_estimated": self.prompt_tokens_estimated}
            ),
        }
