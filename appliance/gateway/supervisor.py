"""The gateway with several worker processes (config ``workers`` above 1).

The process systemd starts (``appliance-gateway``) binds the listening sockets, opens the
audit log, and becomes the supervisor and the owner of the audit chain (owner.py). It starts
``workers`` worker processes (worker.py), each with a listening socket of its own on the
gateway's port (SO_REUSEPORT: the kernel spreads connections over them) and one end of a
socketpair as inherited descriptors; TLS as configured. The supervisor keeps every socket open:
connections that arrive for a worker while it restarts wait in its queue for the new one.

- A worker that exits unexpectedly is logged and started again (at once; after a second, then
  longer, while it keeps failing before it serves). The limit slots of its calls in flight are
  given back. A worker that cannot start at all at the gateway's start stops the gateway (exit
  1): systemd reports it and starts it again.
- SIGTERM/SIGINT: every worker is told to stop (each finishes its calls in flight, their records
  written), then the audit log is closed. SIGHUP: the keys file is read again, by the owner and
  by every worker, and the TLS files by the supervisor alone, which hands what it read to every
  worker (and to any started later): all serve the same certificate, also a worker started
  again after the files were replaced on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from appliance.errors import GatewayConfigError
from appliance.gateway.audit import AuditLog
from appliance.gateway.channel import open_channel
from appliance.gateway.config import GatewayConfig
from appliance.gateway.keys import KeyStore
from appliance.gateway.owner import Owner
from appliance.gateway.server import SHARED_BACKLOG
from appliance.gateway.tls import TLSMaterial, check_reload, read_material

LOG = logging.getLogger("appliance.gateway.supervisor")

_START_S = 60.0  # for a worker to import, read the keys and listen
_STOP_S = 45.0  # the workers' own 30 s for calls in flight, and their last records
_RESTART_MAX_S = 30.0


def bind(host: str, port: int, workers: int) -> list[list[socket.socket]]:
    """For each worker, a listening socket on every address ``host`` resolves to (as asyncio
    would bind), all on the same port with SO_REUSEPORT: the kernel spreads connections over
    the workers by their addresses and ports, also those of a client that keeps its few
    connections open (one shared socket would let whichever worker wakes first take them all).
    The supervisor keeps every socket open, so the queue of a worker that died holds its
    connections for the worker started in its place.

    SO_REUSEPORT lets any process of the same user join a port whose sockets all have it: a
    second gateway started by mistake would bind, take its share of the connections and append
    to the same audit chain as a second owner. Each address is first bound by a socket without
    it, which fails (EADDRINUSE) while anything listens there, as a single process's bind does."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for family, kind, proto, _name, address in dict.fromkeys(found):
            _refuse_taken(family, kind, proto, address)
            for own in sockets:
                sock = socket.socket(family, kind, proto)
                own.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(SHARED_BACKLOG)
    except OSError:
        for sock in (s for own in sockets for s in own):
            sock.close()
        raise
    return sockets


def _refuse_taken(family: int, kind: int, proto: int, address: Any) -> None:
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, as asyncio
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(address)


class Supervisor:
    def __init__(self, owner: Owner, listeners: list[list[socket.socket]]) -> None:
        self.owner = owner
        self.listeners = listeners  # each worker's
        self.count = len(listeners)
        self.stopping = asyncio.Event()
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.failed_start: str | None = None

    async def _spawn(self, index: int) -> tuple[asyncio.subprocess.Process, asyncio.Task[None]]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [sock.fileno() for sock in self.listeners[index]]
        argv = [sys.executable, "-m", "appliance.gateway.worker", "--index", str(index),
                "--channel-fd", str(theirs.fileno()),
                *(f"--listen-fd={fd}" for fd in fds)]  # fmt: skip
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, pass_fds=[*fds, theirs.fileno()], stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            theirs.close()
        reader, writer = await open_channel(ours)
        link = self.owner.attach(index, process.pid, writer)
        self.processes[index] = process
        return process, asyncio.create_task(self.owner.serve(link, reader))

    async def keep(self, index: int, started: asyncio.Event) -> None:
        """Worker ``index``, started again whenever it exits before the gateway stops."""
        delay = 0.0
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                process, serving = await self._spawn(index)
            except OSError as error:  # out of processes or descriptors: later, as for a crash
                delay = min(_RESTART_MAX_S, max(1.0, delay * 2))
                LOG.error("worker %d could not be started (%s); trying again in %.0f s",
                          index, error, delay)  # fmt: skip
                if not started.is_set():
                    self.failed_start = f"worker {index} could not be started: {error}"
                    self.stopping.set()
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                continue
            if self.stopping.is_set():
                # The stop came while this worker was being started: run() had no pid to tell.
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            link = self.owner.links[index]
            ready = asyncio.create_task(link.ready.wait())
            exited = asyncio.create_task(process.wait())
            done, _ = await asyncio.wait({ready, exited}, timeout=_START_S,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if ready in done:
                started.set()
                delay = 0.0
            elif not started.is_set() and not self.stopping.is_set():  # the gateway cannot start
                self.failed_start = f"worker {index} did not start (exit {process.returncode})"
                ready.cancel()
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await exited
                self.stopping.set()
                return
            code = await exited
            ready.cancel()
            await serving
            if self.stopping.is_set():
                return
            self.owner.restarts += 1
            lived = time.monotonic() - began
            if not link.ready.is_set():
                delay = min(_RESTART_MAX_S, max(1.0, delay * 2))
            LOG.error("worker %d (pid %d) exited (%s) after %.1f s; starting it again%s", index,
                      process.pid, _how(code), lived,
                      f" in {delay:.0f} s" if delay else "")  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        await self.owner.watcher.tick()  # key changes made while the gateway was stopped
        watchers = [asyncio.create_task(self.owner.watch_keys()),
                    asyncio.create_task(self.owner.watch_state())]  # fmt: skip
        starts = [asyncio.Event() for _ in range(self.count)]
        keepers = [asyncio.create_task(self.keep(i, starts[i])) for i in range(self.count)]
        await self.stopping.wait()
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*keepers), _STOP_S)
        except TimeoutError:
            for process in self.processes.values():
                if process.returncode is None:
                    LOG.error("worker pid %d did not stop in %.0f s: killed", process.pid, _STOP_S)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*keepers, return_exceptions=True)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await loop.run_in_executor(None, self.owner.writer.close)

    def _reload(self) -> None:
        self.owner._spawn(self.owner.sync_keys(force=True))
        self._reload_tls()
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGHUP)

    def _reload_tls(self) -> None:
        """The certificate files read again and handed to every worker at once (and to any
        started later); files that do not pass the start's checks leave the old ones in use."""
        settings = self.owner.config.listen.tls
        if settings is None:
            return
        try:
            material = read_material(settings)
            check_reload(self.owner.tls, material)
        except GatewayConfigError as error:
            LOG.error("TLS files not reloaded, the gateway keeps serving the old ones: %s", error)
            return
        if material == self.owner.tls:
            return
        self.owner.tls = material
        for link in self.owner.links.values():
            link.send({"push": "tls", "tls": material.to_json()})
        LOG.info("TLS certificate reloaded from %s for every worker", settings.cert)


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def supervise(
    config: GatewayConfig,
    keys: KeyStore,
    log: AuditLog,
    workers: int,
    tls: TLSMaterial | None = None,
) -> int:
    """Run the gateway as a supervisor of ``workers`` processes, which serve with ``tls`` (as
    read at the start); the exit code."""
    listeners = bind(config.listen.host, config.listen.port, workers)

    async def main() -> int:
        supervisor = Supervisor(Owner(config, keys, log, tls), listeners)
        await supervisor.run()
        if supervisor.failed_start is not None:
            LOG.error("%s: the gateway stops", supervisor.failed_start)
            return 1
        return 0

    try:
        return asyncio.run(main())
    finally:
        for sock in (s for own in listeners for s in own):
            sock.close()
        LOG.info("gateway (pid %d) stopped", os.getpid())
