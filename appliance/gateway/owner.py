"""The owner of the audit chain, the per-key limits and the key events, when several worker
processes serve the gateway's port (supervisor.py starts them; worker.py is their side).

Exactly one process appends to the chain: each worker sends a record's fields over its channel
and awaits the committed record (seq, hash), as the single-process gateway awaits its writer
thread. The owner hands every record to the one ``AuditWriter`` as it arrives, so records of
all workers that queue up during a write go out in one batch (one write, one head replace).

The owner also keeps:
- the per-key limits (limits.Limiter): a worker asks to admit a call of a limited key and says
  when it ended, so a key's rpm/tpm/concurrent limits hold across workers; a worker that dies
  gives back the slots of its calls;
- the key events (key_events.KeyWatcher): recorded once, here; a worker that sees the keys file
  change asks the owner to record it, and the owner has every other worker adopt it first;
- ``/metrics`` for the whole gateway: request counts, latencies and tokens are taken from the
  records it commits (every call has one), the few counters no record carries (backend errors,
  slow clients, connections) from what each worker reports with its records and every second.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_writer import AuditWriter
from appliance.gateway.channel import ChannelClosed, Outbox, read_message
from appliance.gateway.config import GatewayConfig
from appliance.gateway.forward import cursor_name, targets
from appliance.gateway.key_events import POLL_S, KeyWatcher
from appliance.gateway.keys import KeysFile, KeyStore, Limits
from appliance.gateway.limits import Limiter
from appliance.gateway.metrics import Metrics, _label
from appliance.gateway.status import audit_gauges, connection_gauges

LOG = logging.getLogger("appliance.gateway.owner")

_NO_MODEL = "-"  # as proxy.py labels calls that name no configured model
_STATE_EVERY_S = 0.2
_ADOPT_S = 0.5
_DISK_EVERY_S = 2.0
_COUNTERS = ("slow", "refused")  # what a worker reports that never goes backwards


@dataclass(frozen=True)
class _Claimed:
    """A key as a worker names it when it asks to admit a call (limits.Limited)."""

    id: str
    limits: Limits


class _Ticket:
    """A call admitted for a worker, charged when the worker says it ended (limits.Metered)."""

    __slots__ = ("completion_tokens", "prompt_tokens", "prompt_tokens_estimated")

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.prompt_tokens_estimated: int | None = None
        self.completion_tokens: int | None = None


@dataclass(eq=False)
class Link:
    """One worker's channel, as the owner sees it."""

    index: int
    pid: int
    writer: asyncio.StreamWriter
    tickets: dict[int, _Ticket] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    records: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.writer)

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.outbox.put(message)


class Owner:
    def __init__(self, config: GatewayConfig, keys: KeyStore, log: AuditLog) -> None:
        self.config = config
        self.writer = AuditWriter(
            log,
            min_free_bytes=config.audit.min_free_bytes,
            keep_rotated_bytes=config.audit.keep_rotated_bytes,
            forwarded=[cursor_name(target) for target in targets(config.audit.forward)],
        )
        self.watcher = KeyWatcher(config.keys_file, config.audit.dir, keys, self.writer.write)
        self.limiter = Limiter()
        self.metrics = Metrics()
        self.routes = frozenset(m.name for m in config.models)
        self.links: dict[int, Link] = {}
        self.restarts = 0
        self._tickets = itertools.count(1)
        self._pushes = itertools.count(1)
        self._adopted: dict[int, asyncio.Future[None]] = {}
        self._retired_errors: defaultdict[str, int] = defaultdict(int)
        self._retired = dict.fromkeys(_COUNTERS, 0)
        self._state: tuple[Any, ...] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the audit log's state, pushed to every worker (its /health, its 503s) ------------------

    def audit_state(self) -> dict[str, Any]:
        audit = self.writer
        return {
            "failed": None if audit.failed is None else str(audit.failed),
            "failed_since": audit.failed_since,
            "outages": audit.outages,
            "disk_free": audit.disk_free,
            "disk_low": audit.disk_low,
            "min_free_bytes": audit.min_free_bytes,
        }

    def push_state(self, force: bool = False) -> None:
        audit = self.writer
        state = (audit.failed is None, audit.failed_since, audit.outages, audit.disk_low)
        if state == self._state and not force:
            return
        self._state = state
        message = {"push": "audit", **self.audit_state()}
        for link in self.links.values():
            link.send(message)

    async def watch_state(self) -> None:
        """Pushes the audit log's state when it changes (and the disk figures now and then)."""
        for turn in itertools.count():
            await asyncio.sleep(_STATE_EVERY_S)
            self.push_state(force=turn % round(_DISK_EVERY_S / _STATE_EVERY_S) == 0)

    # -- one worker's channel -------------------------------------------------------------------

    def attach(self, index: int, pid: int, writer: asyncio.StreamWriter) -> Link:
        link = Link(index, pid, writer)
        self.links[index] = link
        config = self.config.model_dump(mode="json")
        # The keys in use, as recorded: a worker started again while the keys file does not
        # load starts with the last good keys, as the single process keeps them.
        keys = KeysFile(keys=self.watcher.store.records()).model_dump(mode="json")
        link.send({"push": "hello", "index": index, "config": config, "keys": keys,
                   "audit": self.audit_state()})  # fmt: skip
        return link

    async def serve(self, link: Link, reader: asyncio.StreamReader) -> None:
        """Answers one worker until its channel closes, then forgets what it held."""
        try:
            while True:
                self._handle(link, await read_message(reader))
        except ChannelClosed:
            pass
        except Exception:  # a worker that sends nonsense is cut off, the others go on
            LOG.exception("worker %d (pid %d): channel failed", link.index, link.pid)
        finally:
            self.detach(link)

    def detach(self, link: Link) -> None:
        """The worker is gone: its calls' limit slots back, its counters kept."""
        if link.closed:
            return
        link.closed = True
        for ticket in link.tickets.values():
            self.limiter.finish(ticket)
        link.tickets.clear()
        for model, count in link.stats.get("backend_errors", {}).items():
            self._retired_errors[model] += count
        for name in _COUNTERS:
            self._retired[name] += link.stats.get(name, 0)
        if self.links.get(link.index) is link:
            del self.links[link.index]
        link.writer.close()

    def _handle(self, link: Link, message: dict[str, Any]) -> None:
        op = message.get("op")
        if "stats" in message:
            link.stats = message["stats"]
        if op == "write":
            if "finish" in message:  # the call ends with its record (worker.RemoteLimiter)
                self._finish(link, message["finish"], message["fields"])
            self._write(link, message["id"], message["fields"])
        elif op == "finish":
            self._finish(link, message["ticket"], message)
        elif op == "admit":
            self._admit(link, message)
        elif op == "unrecorded":
            self.writer.unrecorded()
        elif op == "keys":
            self._spawn(self._keys(link, message["id"]))
        elif op == "metrics":
            by_key = message.get("by_key") is True
            link.send({"id": message["id"], "text": self.render(by_key=by_key)})
        elif op == "health":
            link.send({"id": message["id"], "open": self._open(), "workers": len(self.links)})
        elif op == "keys_adopted":
            adopted = self._adopted.pop(message["ack"], None)
            if adopted is not None and not adopted.done():
                adopted.set_result(None)
        elif op == "ready":
            link.ready.set()
        elif op != "stats":
            raise ValueError(f"unknown operation {op!r}")

    def _finish(self, link: Link, number: int, usage: dict[str, Any]) -> None:
        ticket = link.tickets.pop(number, None)
        if ticket is not None:
            ticket.prompt_tokens = usage.get("prompt_tokens")
            ticket.prompt_tokens_estimated = usage.get("prompt_tokens_estimated")
            ticket.completion_tokens = usage.get("completion_tokens")
            self.limiter.finish(ticket)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, link: Link, request: int, fields: dict[str, Any]) -> None:
        if "request_id" in fields:  # a call's record: what the worker's Metrics would count
            model = fields.get("model")
            self.metrics.observe(
                model if model in self.routes else _NO_MODEL,
                fields.get("status") or 0,
                (fields.get("latency_ms") or 0.0) / 1000,
                fields.get("prompt_tokens"),
                fields.get("completion_tokens"),
                fields.get("key_id"),
            )
        written = asyncio.wrap_future(self.writer.submit(fields))

        def done(future: asyncio.Future[dict[str, Any]]) -> None:
            self.push_state()  # a failure's state reaches the workers before its answer
            error = future.exception()
            if error is not None:
                self.metrics.audit_failures += 1
                link.send({"id": request, "error": str(error)})
                return
            record = future.result()
            self.metrics.audit_records += 1
            link.records += 1
            link.send({"id": request, "seq": record.get("seq"), "hash": record.get("hash")})

        written.add_done_callback(done)

    def _admit(self, link: Link, message: dict[str, Any]) -> None:
        ticket = _Ticket()
        claimed = _Claimed(message["key"], Limits.model_validate(message["limits"]))
        hit = self.limiter.admit(claimed, ticket)
        if hit is not None:
            link.send({"id": message["id"], "hit": [hit.limit, hit.allowed, hit.retry_after_s]})
            return
        number = next(self._tickets)
        link.tickets[number] = ticket
        link.send({"id": message["id"], "ticket": number})

    async def _keys(self, link: Link, request: int) -> None:
        try:
            await self.sync_keys(link)
        finally:
            link.send({"id": request})

    async def sync_keys(self, source: Link | None = None, force: bool = False) -> None:
        """Record a change of the keys file, then have every worker but ``source`` (which asked,
        and uses it once answered) use it: a key created or revoked is in force in all workers
        within moments of one another, never before its event is in the chain."""
        before = self.watcher.store
        await self.watcher.tick(force=force)
        if self.watcher.store is before:
            return
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[None]] = {}
        for link in list(self.links.values()):
            if link is not source:
                number = next(self._pushes)
                waiting[number] = self._adopted[number] = loop.create_future()
                link.send({"push": "keys", "ack": number})
        if waiting:  # a worker that does not answer in time follows the file by itself
            await asyncio.wait(waiting.values(), timeout=_ADOPT_S)
        for number in waiting:
            self._adopted.pop(number, None)

    async def watch_keys(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.sync_keys()
            except Exception:  # the watcher must live on: revocations depend on it
                LOG.exception("key watcher: unexpected failure")

    # -- /metrics for the whole gateway ---------------------------------------------------------

    def _open(self) -> int:
        return sum(int(link.stats.get("open", 0)) for link in self.links.values())

    def render(self, by_key: bool = False) -> str:
        errors = defaultdict(int, self._retired_errors)
        totals = dict(self._retired)
        for link in self.links.values():
            for model, count in link.stats.get("backend_errors", {}).items():
                errors[model] += count
            for name in _COUNTERS:
                totals[name] += link.stats.get(name, 0)
        self.metrics.backend_errors = errors
        gauges = [
            *audit_gauges(self.writer),
            *connection_gauges(self._open(), totals["refused"], totals["slow"]),
            ("workers", "Worker processes serving calls now.", "gauge", len(self.links)),
            ("worker_restarts_total", "Worker processes that exited and were started again.",
             "counter", self.restarts),
        ]  # fmt: skip
        p = "appliance_gateway_worker_records_total"
        lines = [
            f"# HELP {p} Audit records written for each worker process now running.",
            f"# TYPE {p} counter",
            *(
                f'{p}{{worker="{link.index}",pid="{_label(str(link.pid))}"}} {link.records}'
                for link in sorted(self.links.values(), key=lambda link: link.index)
            ),
        ]
        return self.metrics.render(gauges, by_key=by_key) + "\n".join(lines) + "\n"
