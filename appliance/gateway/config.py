"""The gateway's config file: where it listens, which models it routes and where it audits.

One JSON document, validated completely on load; every problem names its field
(``models[0].digest: ...``) so the Ansible role's ``--check-config`` run points at the line
to fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from appliance.errors import GatewayConfigError, Problem

DEFAULT_CONFIG = Path("/etc/appliance/gateway/config.json")
DEFAULT_KEYS_FILE = Path("/etc/appliance/gateway/keys.json")
DEFAULT_AUDIT_DIR = Path("/var/log/appliance/audit")


AUTO_WORKERS = 4
MAX_WORKERS = 64

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(_Strict):
    """HTTPS: the server's certificate (PEM, leaf first, then its intermediates) and key."""

    cert: Path
    key: Path
    # Clients must present a certificate issued by a CA in this PEM file (CERT_REQUIRED).
    # None: any client may connect; the API key alone authenticates.
    client_ca: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    tls: TLSSettings | None = None
    # Plain HTTP is served only when the config says so: a config without tls is refused.
    plain_http: bool = False

    @model_validator(mode="after")
    def _one_scheme(self) -> Listen:
        if self.tls is None and not self.plain_http:
            raise ValueError(
                "no tls section: set tls (cert, key) to serve HTTPS, or plain_http: true to "
                "serve plain HTTP on purpose"
            )
        if self.tls is not None and self.plain_http:
            raise ValueError("both tls and plain_http are set: choose one")
        return self


class SyslogTarget(_Strict):
    """A syslog collector that takes RFC 5424 messages over TLS (RFC 5425)."""

    host: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[^\s/]+$")]
    port: Annotated[int, Field(ge=1, le=65535)] = 6514
    # The CA that signed the collector's certificate (the site's PKI or the appliance's CA).
    ca_file: Path
    # A client certificate and its key, for collectors that authenticate senders.
    cert_file: Path | None = None
    key_file: Path | None = None
    # The name the collector's certificate must carry; the host when unset.
    server_name: str | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> SyslogTarget:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate)")
        return self


class ForwardSettings(_Strict):
    """Each audit record forwarded to the site's log store (appliance-audit-forward)."""

    syslog: SyslogTarget | None = None
    # A file of RFC 5424 lines, one per record, for a SIEM agent to pick up.
    file: Path | None = None
    # The HOSTNAME of each message; the machine's host name when unset.
    hostname: str | None = None
    facility: Annotated[int, Field(ge=0, le=23)] = 13
    # A record longer than this goes as its chain links only (content="omitted"); the
    # collector's own limit must be at least this (rsyslog: maxMessageSize, imtcp MaxFrameSize).
    max_message_bytes: Annotated[int, Field(ge=2048)] = 64 << 10
    # Seconds between attempts while the collector is away (doubling up to ten times this).
    retry_s: Annotated[float, Field(gt=0)] = 2.0

    @model_validator(mode="after")
    def _somewhere(self) -> ForwardSettings:
        if self.syslog is None and self.file is None:
            raise ValueError("set syslog, file or both: where the records go")
        return self


class AuditSettings(_Strict):
    dir: Path = DEFAULT_AUDIT_DIR
    # Rotate once the current file passes this size; old files are renamed (see keep_rotated_bytes).
    max_bytes: Annotated[int, Field(ge=4096)] = 64 << 20
    # fsync after every batch of records: survives power loss, costs a disk flush per batch.
    fsync: bool = False
    # Below this many free bytes on the audit filesystem: a warning, /health and /metrics say so.
    min_free_bytes: Annotated[int, Field(ge=0)] = 256 << 20
    # Rotated files may take this many bytes; older ones are removed once shipped
    # (appliance audit ship), never before. None: every file is kept.
    keep_rotated_bytes: Annotated[int, Field(ge=0)] | None = None
    # With forwarding on, rotated files are removed only once forwarded to every target.
    forward: ForwardSettings | None = None


# What a browser sends as Origin: scheme, host (a name or an IP literal) and maybe a port.
_ORIGIN = r"^(\*|https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?)$"


class Cors(_Strict):
    """Browser clients (CORS). Off while ``allow_origins`` is empty."""

    # Exact origins (scheme://host[:port]) whose pages may call the API, or "*" for any page.
    allow_origins: list[Annotated[str, Field(pattern=_ORIGIN)]] = []
    # Let browsers send credentials (cookies, TLS client certificates) cross-origin. API keys
    # travel in the Authorization header and do not need it.
    allow_credentials: bool = False
    # Seconds a browser may cache a preflight answer.
    max_age_s: Annotated[int, Field(ge=0, le=86400)] = 600

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Cors:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                "allow_origins '*' cannot go with allow_credentials: any page could then call "
                "the API with the visitor's credentials; list the origins"
            )
        return self


class ModelRoute(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s]+$")]
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    backend: AnyHttpUrl
    backend_model: str | None = None
    # What answers 200 when the runtime is up: llama.cpp and vLLM /health, Ollama /api/version.
    health_path: Annotated[str, Field(pattern=r"^/[^\s]*$")] = "/health"
    # The spec's task: an embedding model answers /v1/embeddings only (the others get 400).
    task: Literal["chat", "embedding"] = "chat"

    @property
    def upstream_name(self) -> str:
        return self.backend_model or self.name

    @property
    def backend_base(self) -> str:
        return str(self.backend).rstrip("/")


class GatewayConfig(_Strict):
    listen: Listen
    keys_file: Path = DEFAULT_KEYS_FILE
    audit: AuditSettings = AuditSettings()
    # Larger request bodies are refused with 413 before they reach a backend.
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 << 20
    # Seconds a backend may take to answer (the whole answer, streams included).
    backend_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    # Open client connections; more are answered 503 and closed (the unit's LimitNOFILE is
    # above this plus backend connections and the audit files).
    max_connections: Annotated[int, Field(ge=1)] = 1024
    # Seconds a client may take to send a request's headers, and its body: slower ones are cut.
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # Retry-After (seconds) on the gateway's own 502 and 503: a backend not answering, the
    # audit log not writable (it heals within a second or two), too many connections.
    retry_after_s: Annotated[int, Field(ge=1, le=120)] = 2
    cors: Cors = Cors()
    # SHA-256 (hex) of a bearer token that may read /metrics by key without being an operator
    # key (a Prometheus scraper's credentials_file); the token itself is not kept here.
    metrics_token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    # Worker processes serving the port: one process owns the audit chain, the per-key limits
    # and the key events, the workers serve calls (supervisor.py). "auto": the CPUs this
    # process may use but one (the audit owner's), at most AUTO_WORKERS: a single process on one
    # or two CPUs. 1: a single process, no supervisor.
    workers: int | Literal["auto"] = 1
    models: Annotated[list[ModelRoute], Field(min_length=1)]

    @field_validator("workers", mode="before")
    @classmethod
    def _worker_count(cls, value: object) -> object:
        if value == "auto" or (type(value) is int and 1 <= value <= MAX_WORKERS):
            return value
        raise ValueError(f"a number of worker processes from 1 to {MAX_WORKERS}, or 'auto'")

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: list[ModelRoute]) -> list[ModelRoute]:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return models

    def model(self, name: str) -> ModelRoute | None:
        return next((m for m in self.models if m.name == name), None)

    def worker_count(self) -> int:
        if self.workers != "auto":
            return self.workers
        # The owner takes about a third of a worker's CPU per call on top (0.2 of 0.6 ms,
        # benchmarks/gateway.py --workers 2): on two CPUs two workers only cost more CPU per call
        # (README: Worker processes). Past four the runtimes want the rest of the cores.
        return max(1, min(len(os.sched_getaffinity(0)) - 1, AUTO_WORKERS))


def validation_problems(error: ValidationError) -> list[Problem]:
    """pydantic's errors as Problems whose path reads like the JSON (``models[0].digest``)."""
    problems = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        problems.append(Problem(path=path, message=item["msg"]))
    return problems


def load_document(path: Path, model: type[M], what: str, missing_hint: str) -> M:
    """One of the gateway's JSON files, read and validated whole; every error names the file
    and, for a bad field, its JSON path."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError as error:
        raise GatewayConfigError(f"{what} {path} does not exist", hint=missing_hint) from error
    except OSError as error:
        raise GatewayConfigError(f"cannot read {what} {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise GatewayConfigError(
            f"{path} is not JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from error
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise GatewayConfigError(
            f"{path}: invalid {what}",
            hint="fix the fields listed above",
            problems=validation_problems(error),
        ) from error


def load_config(path: Path) -> GatewayConfig:
    return load_document(
        path, GatewayConfig, "gateway config", "pass --config with the file the gateway role wrote"
    )
