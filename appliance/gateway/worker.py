"""A gateway worker process: serves calls on the port the supervisor bound, and leaves the audit
chain, the per-key limits and the key events to the owner (owner.py) over its channel.

    python -m appliance.gateway.worker --index 0 --channel-fd 5 --listen-fd 3 [--listen-fd 4]

Started by the supervisor (supervisor.py), never by hand: the channel and the listening
sockets are descriptors it passes, and the config and the keys come over the channel (every
worker serves the config the supervisor validated at its start, also one started again later,
and the keys the owner has in use, which a keys file that does not load leaves as they were).
The request path is the single-process gateway's (proxy.py); only what it holds differs:

- ``RemoteAudit`` (audit_writer.AuditSink): a record's fields go to the owner, and the call
  awaits the committed record as it would await the writer thread; the audit log's state
  (failed, disk) is what the owner last pushed;
- ``RemoteLimiter`` (limits.LimitGate): a call of a key with limits is admitted by the owner;
  keys without limits cost no round trip;
- a key watcher that follows the keys file and has the owner record each change first (and
  adopts, when the owner says so, a change another worker or the owner noticed);
- ``/metrics`` and the connection count of ``/health`` come from the owner (status.Shared).

The worker stops when told (SIGTERM: after the calls in flight, their records written) and
when its channel closes (the owner is gone: nothing could be recorded any more).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from appliance.errors import AuditError, GatewayConfigError
from appliance.gateway.channel import ChannelClosed, Outbox, open_channel, read_message
from appliance.gateway.config import GatewayConfig
from appliance.gateway.key_events import KeyWatcher
from appliance.gateway.keys import KeyRecord, KeysFile, KeyStore, Limits
from appliance.gateway.limits import LimitHit, Metered
from appliance.gateway.proxy import Gateway
from appliance.gateway.record import now_iso
from appliance.gateway.tls import TLSMaterial, load_material, server_context

LOG = logging.getLogger("appliance.gateway.worker")

_STATS_EVERY_S = 1.0
_ANYONE_PAGE_S = 1.0  # how old a /metrics page served to unauthenticated scrapers may be
_Settable = concurrent.futures.Future[dict[str, Any]] | asyncio.Future[dict[str, Any]]
_NO_LIMITS = Limits()


class OwnerLink:
    """This worker's end of the channel: requests with answers, messages without, pushes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()
        self.closing = False  # this worker is done: the channel's end is no news
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.on_push: Callable[[dict[str, Any]], None] = lambda _message: None
        self.stats: Callable[[], dict[str, Any]] = dict
        self._sent_stats: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._reader_task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        reader, self.writer = await open_channel(self.sock)
        self.outbox = Outbox(self.writer)
        self._reader_task = asyncio.create_task(self._read(reader))
        return await asyncio.wait_for(asyncio.shield(self.hello), 30)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_message(reader)
                if "push" in message:
                    if message["push"] == "hello" and not self.hello.done():
                        self.hello.set_result(message)
                    else:
                        self.on_push(message)
                elif (answer := self._waiting.pop(message.get("id", 0), None)) is not None:
                    answer(message)
        except ChannelClosed as error:
            if not self.closing:
                LOG.error("the channel to the audit owner closed (%s): stopping", error)
        finally:
            self.closed.set()
            if not self.hello.done():
                self.hello.set_exception(ChannelClosed("no hello from the audit owner"))
            gone = {"error": "the audit owner is gone", "closed": True}
            for answer in self._waiting.values():
                answer(gone)
            self._waiting.clear()

    def send(self, op: str, answer: Callable[[dict[str, Any]], None] | None = None,
             **fields: Any) -> None:  # fmt: skip
        """One message; ``answer`` is called with the owner's answer (in the loop's thread)."""
        if self.closed.is_set() or self.writer is None:
            if answer is not None:
                answer({"error": "the audit owner is gone", "closed": True})
            return
        message: dict[str, Any] = {"op": op, **fields}
        stats = self.stats()
        if stats != self._sent_stats:  # the counters no record carries, when they moved
            message["stats"] = self._sent_stats = stats
        if answer is not None:
            message["id"] = number = next(self._ids)
            self._waiting[number] = answer
        self.outbox.put(message)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def answer(message: dict[str, Any]) -> None:
            if not future.done():
                future.set_result(message)

        self.send(op, answer, **fields)
        return await future

    async def report(self) -> None:
        """The worker's counters every second (connections open change without any call)."""
        while not self.closed.is_set():
            await asyncio.sleep(_STATS_EVERY_S)
            if self.stats() != self._sent_stats:
                self.send("stats")

    async def close(self) -> None:
        self.closing = True
        if self.writer is not None:
            self.outbox.flush()
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
            self.writer.close()


class RemoteAudit:
    """The owner's audit writer as the request path sees it (audit_writer.AuditSink)."""

    def __init__(self, link: OwnerLink, state: dict[str, Any]) -> None:
        self.link = link
        self.failed: BaseException | None = None
        self.failed_since: str | None = None
        self.outages = 0
        self.disk_free: int | None = None
        self.disk_low = False
        self.min_free_bytes = 0
        self.settle: Callable[[object], int | None] = lambda _request_id: None
        self.take_state(state)

    def owner_gone(self) -> None:
        """No record can be written any more: calls still arriving on kept-alive connections
        while the worker drains get 503 before any backend is called, and /health says so."""
        if self.failed is None:
            self.failed = AuditError("the audit owner is gone")
            self.failed_since = now_iso()

    def take_state(self, state: dict[str, Any]) -> None:
        failed = state.get("failed")
        self.failed = None if failed is None else AuditError(failed)
        self.failed_since = state.get("failed_since")
        self.outages = int(state.get("outages") or 0)
        self.disk_free = state.get("disk_free")
        self.disk_low = bool(state.get("disk_low"))
        self.min_free_bytes = int(state.get("min_free_bytes") or 0)

    def _send(self, fields: dict[str, Any], future: _Settable) -> None:
        def answer(message: dict[str, Any]) -> None:
            if future.done():
                return
            if "error" in message:
                future.set_exception(AuditError(f"audit record not written: {message['error']}"))
            else:
                future.set_result({"seq": message.get("seq"), "hash": message.get("hash")})

        ticket = self.settle(fields.get("request_id"))
        if ticket is None:
            self.link.send("write", answer, fields=fields)
        else:
            self.link.send("write", answer, fields=fields, finish=ticket)

    def submit(self, fields: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._send(fields, future)
        return future

    def write(self, fields: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        # The answer arrives in this loop's thread: an asyncio future, with no wake-up through
        # the loop's self-pipe as a wrapped concurrent one would cost.
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._send(fields, future)
        return future

    def unrecorded(self) -> None:
        self.link.send("unrecorded")

    def close(self) -> None:
        """The owner closes the log; the channel closes once the worker's calls are done."""


class RemoteLimiter:
    """The owner's Limiter as the request path sees it (limits.LimitGate)."""

    def __init__(self, link: OwnerLink) -> None:
        self.link = link
        self._admitted: dict[Metered, int] = {}
        self._by_request: dict[str, Metered] = {}

    def settle(self, request_id: object) -> int | None:
        """The ticket of the call whose record is being sent, which ends it for the owner: its
        tokens are charged and its slot freed before its answer goes out, so the client's next
        call, whichever worker takes it, finds the key's limits as a single process would."""
        call = self._by_request.pop(request_id, None) if isinstance(request_id, str) else None
        return None if call is None else self._admitted.pop(call, None)

    async def acquire(self, key: KeyRecord, call: Metered) -> LimitHit | None:
        if key.limits == _NO_LIMITS:
            return None  # nothing to keep, as the owner's Limiter would decide
        task = asyncio.ensure_future(
            self.link.request("admit", key=key.id, limits=key.limits.model_dump())
        )
        try:
            answer = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The client left while the owner admitted it: the slot goes back when it comes.
            task.add_done_callback(lambda done: self._give_back(done.result()))
            raise
        if "hit" in answer:
            limit, allowed, wait = answer["hit"]
            return LimitHit(key.id, limit, allowed, wait)
        if "ticket" in answer:
            self._admitted[call] = answer["ticket"]
            if (request_id := getattr(call, "request_id", None)) is not None:
                self._by_request[request_id] = call
        return None  # the owner is gone: this worker is stopping, the call goes on

    def _give_back(self, answer: dict[str, Any]) -> None:
        if "ticket" in answer:
            self.link.send("finish", ticket=answer["ticket"])

    def finish(self, call: Metered) -> None:
        ticket = self._admitted.pop(call, None)
        if ticket is not None:
            self._by_request.pop(getattr(call, "request_id", ""), None)
            self.link.send("finish", ticket=ticket, prompt_tokens=call.prompt_tokens,
                           prompt_tokens_estimated=call.prompt_tokens_estimated,
                           completion_tokens=call.completion_tokens)  # fmt: skip


class OwnerView:
    """The whole gateway's figures, from the owner (status.Shared). A page costs the owner, the
    audit writer, a render: a scrape without a key gets the last page asked for anyone while it
    is under ``_ANYONE_PAGE_S`` old (scrapes meanwhile share one), so a flood of them costs the
    owner a page a second per worker. A key's or the metrics token's scrape is fresh."""

    def __init__(self, link: OwnerLink) -> None:
        self.link = link
        self._page: tuple[float, str] | None = None  # (asked at, text) for anyone
        self._asking: asyncio.Future[str] | None = None

    async def _ask(self, by_key: bool) -> str:
        answer = await self.link.request("metrics", by_key=by_key)
        if "text" not in answer:
            raise ConnectionError("the audit owner is gone")
        return str(answer["text"])

    async def metrics_text(self, by_key: bool) -> str:
        if by_key:
            return await self._ask(True)
        asked = time.monotonic()
        if self._page is not None and asked - self._page[0] < _ANYONE_PAGE_S:
            return self._page[1]
        if self._asking is None:
            self._asking = asking = asyncio.ensure_future(self._ask(False))

            def keep(done: asyncio.Future[str]) -> None:
                self._asking = None
                if not done.cancelled() and done.exception() is None:
                    self._page = (asked, done.result())

            asking.add_done_callback(keep)
        # Shielded: a scraper that leaves does not cancel the page the others wait for.
        return await asyncio.shield(self._asking)

    async def connections(self) -> tuple[int, int]:
        answer = await self.link.request("health")
        return int(answer.get("open", 0)), int(answer.get("workers", 1))


def attach(gateway: Gateway, link: OwnerLink) -> None:
    """Fit a Gateway built by app.build_app into this worker."""
    config = gateway.config

    async def follow() -> None:
        answer = await link.request("keys")
        if "error" in answer:
            raise ConnectionError(answer["error"])

    gateway.watcher = KeyWatcher(
        config.keys_file, config.audit.dir, gateway.keys, gateway.audit.write, follow=follow
    )
    gateway.limits = limiter = RemoteLimiter(link)
    if isinstance(gateway.audit, RemoteAudit):
        gateway.audit.settle = limiter.settle
    gateway.shared = OwnerView(link)
    guard, metrics = gateway.guard, gateway.metrics
    link.stats = lambda: {
        "backend_errors": dict(metrics.backend_errors),
        "slow": guard.cut + metrics.slow_clients,
        "refused": guard.refused,
        "open": guard.open,
    }


async def run(index: int, channel: socket.socket, listeners: list[socket.socket]) -> None:
    from appliance.gateway.app import serve_app  # app imports this module's neighbours

    link = OwnerLink(channel)
    hello = await link.start()
    config = GatewayConfig.model_validate(hello["config"])
    # The owner's keys, not the file's: the file may not load now (key_events.py keeps the last
    # good keys in use, and so does a worker started again meanwhile).
    keys = KeyStore(KeysFile.model_validate(hello["keys"]))
    audit = RemoteAudit(link, hello["audit"])
    # The supervisor's reading of the TLS files, never the files: they may have been replaced
    # since (this worker started again), and every worker must serve the same certificate.
    tls = None if hello.get("tls") is None else TLSMaterial.from_json(hello["tls"])
    context = (
        None if config.listen.tls is None or tls is None else server_context(config.listen.tls, tls)
    )
    adopt: list[Callable[[], None]] = []

    def pushed(message: dict[str, Any]) -> None:
        if message["push"] == "keys":  # recorded by the owner: use the file now
            for step in adopt:
                step()
            link.send("keys_adopted", ack=message["ack"])
        elif message["push"] == "tls":  # SIGHUP: new connections get the new certificate
            if context is not None:
                try:
                    load_material(context, TLSMaterial.from_json(message["tls"]))
                except GatewayConfigError as error:  # the link must live on: keep the old
                    LOG.error("TLS files not taken, this worker serves the old ones: %s", error)
        else:
            audit.take_state(message)

    link.on_push = pushed
    stop = asyncio.Event()
    watch = asyncio.create_task(link.closed.wait())

    def owner_gone(_done: object) -> None:
        audit.owner_gone()
        stop.set()

    watch.add_done_callback(owner_gone)
    reporter = asyncio.create_task(link.report())

    def ready() -> None:
        link.send("ready", pid=os.getpid())
        LOG.info("worker %d (pid %d) serving", index, os.getpid())

    try:

        def fit(gateway: Gateway) -> None:
            attach(gateway, link)
            adopt.append(lambda: gateway.watcher.adopt())

        await serve_app(config, keys, audit, stop, ready, context, listeners, fit)
    finally:
        reporter.cancel()
        watch.cancel()
        await link.close()


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's handler is in place
    parser = argparse.ArgumentParser(prog="appliance-gateway worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(levelname)s %(name)s[worker {args.index}]: %(message)s",
    )
    channel = socket.socket(fileno=args.channel_fd)
    listeners = [socket.socket(fileno=fd) for fd in args.listen_fd]
    asyncio.run(run(args.index, channel, listeners))


if __name__ == "__main__":
    main()
