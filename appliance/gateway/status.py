"""``/health`` (readiness), ``/health/live`` and ``/metrics``: what the gateway, its backends,
its audit log and its connections are doing now. None is audited (they carry no call). Anyone
sees models' states and the counters by model; backend details and the series by key need an
operator key (or, for /metrics, the config's metrics token).

With several worker processes each page is the whole gateway's: a worker asks the owner of the
audit chain (owner.py) for the metrics page and the connection count (``Shared``), and knows
the audit log's state from what the owner pushes to it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web

from appliance.gateway.config import ModelRoute
from appliance.gateway.keys import ALL_MODELS

if TYPE_CHECKING:
    from appliance.gateway.audit_writer import AuditSink
    from appliance.gateway.proxy import Gateway

Gauge = tuple[str, str, str, int]


class Shared(Protocol):
    """What a worker asks the owner: the whole gateway's figures."""

    async def metrics_text(self, by_key: bool) -> str:
        """The whole gateway's page; the series by API key only with ``by_key``."""
        ...

    async def connections(self) -> tuple[int, int]:
        """Client connections open in all workers, and the number of workers."""
        ...


def live_page() -> web.Response:
    """Liveness: the gateway process serves. Always 200 while it answers at all."""
    return web.json_response({"status": "ok"})


def _operator(self: Gateway, request: web.Request) -> bool:
    """An operator is a caller with a valid key for every model (``*``, as the install's
    ``operator`` and ``appliance-verify`` keys): it may see where the backends are."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return False
    key = self.keys.authenticate(header[7:].strip())
    return key is not None and ALL_MODELS in key.models


def _sees_keys(self: Gateway, request: web.Request) -> bool:
    """Who may read /metrics by key (which key ids call, how often, how much): an operator, or
    a scraper with the configured metrics token, which can call no model."""
    if _operator(self, request):
        return True
    wanted = self.config.metrics_token_sha256
    header = request.headers.get("Authorization", "")
    if wanted is None or not header.startswith("Bearer "):
        return False
    presented = hashlib.sha256(header[7:].strip().encode("utf-8", "surrogateescape")).hexdigest()
    return hmac.compare_digest(presented, wanted)


async def health_page(self: Gateway, request: web.Request) -> web.Response:
    """Readiness, per model: 200 while the gateway can serve some call (the audit log can be
    written and at least one model's runtime is up), else 503. ``status`` says ``ok`` (all
    up), ``degraded`` (some down) or ``unavailable``. Backend addresses, errors, connections
    and disk figures only for an operator key; anyone sees each model's state."""
    assert self.session is not None
    session = self.session

    async def probe(route: ModelRoute) -> dict[str, Any]:
        try:
            async with session.get(
                route.backend_base + route.health_path, timeout=aiohttp.ClientTimeout(total=3)
            ) as answer:
                status = "ok" if answer.status == 200 else "unhealthy"
                return {"backend": route.backend_base, "status": status, "http": answer.status}
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return {"backend": route.backend_base, "status": "down", "error": repr(error)}

    probes = await asyncio.gather(*(probe(m) for m in self.config.models))
    audit = self.audit
    audit_ok = audit.failed is None
    up = sum(p["status"] == "ok" for p in probes)
    ready = audit_ok and up > 0
    state = "ok" if ready and up == len(probes) else "degraded" if ready else "unavailable"
    operator = _operator(self, request)
    if not operator:
        probes = [{"status": p["status"]} for p in probes]
    document: dict[str, Any] = {
        "status": state,
        "audit": "ok" if audit_ok else f"failed since {audit.failed_since}",
        "models": {m.name: p for m, p in zip(self.config.models, probes, strict=True)},
    }
    if operator:
        if not audit_ok:
            document["audit"] += f": {audit.failed}"
        document["audit_disk"] = {
            "free_bytes": audit.disk_free,
            "low": audit.disk_low,
            "alarm_below_bytes": audit.min_free_bytes,
        }
        document["connections"] = {"open": self.guard.open, "limit": self.guard.limit}
        if self.shared is not None:  # each worker takes up to the limit
            open_, workers = await self.shared.connections()
            document["connections"] = {"open": open_, "limit": self.guard.limit * workers,
                                       "workers": workers}  # fmt: skip
        document["keys"] = len(self.keys)
        # A keys file that does not load leaves the last good keys in use; this says why.
        document["keys_file"] = self.watcher.error or "ok"
    return web.json_response(document, status=200 if ready else 503)


def audit_gauges(audit: AuditSink) -> list[Gauge]:
    return [
        ("audit_up", "1 while the audit log can be written (calls are served).", "gauge",
         int(audit.failed is None)),
        ("audit_outages_total", "Times the audit log could not be written.", "counter",
         audit.outages),
        ("audit_disk_free_bytes", "Free bytes on the audit filesystem.", "gauge",
         audit.disk_free if audit.disk_free is not None else -1),
        ("audit_disk_low", "1 while the audit filesystem is below its free-space alarm.",
         "gauge", int(audit.disk_low)),
    ]  # fmt: skip


def connection_gauges(open_: int, refused: int, slow: int) -> list[Gauge]:
    return [
        ("connections_open", "Client connections open now.", "gauge", open_),
        ("connections_refused_total", "Connections closed at once: over the limit.",
         "counter", refused),
        ("slow_clients_total", "Connections cut for sending headers or body too slowly.",
         "counter", slow),
    ]  # fmt: skip


async def metrics_page(self: Gateway, request: web.Request) -> web.Response:
    by_key = _sees_keys(self, request)
    if self.shared is not None:
        text = await self.shared.metrics_text(by_key)
    else:
        guard = self.guard
        gauges = audit_gauges(self.audit) + connection_gauges(
            guard.open, guard.refused, guard.cut + self.metrics.slow_clients
        )
        text = self.metrics.render(gauges, by_key=by_key)
    return web.Response(text=text, content_type="text/plain; version=0.0.4")
