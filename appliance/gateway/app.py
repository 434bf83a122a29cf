"""``appliance-gateway``: the audited OpenAI-compatible gateway in front of the runtimes.

    appliance-gateway --config /etc/appliance/gateway/config.json
    appliance-gateway --config /etc/appliance/gateway/config.json --check-config

Logs go to stderr (journald under systemd). SIGHUP reloads the keys file and the TLS files (a
bad file is reported and what is in use is kept); SIGTERM stops after the calls in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from appliance import __version__
from appliance.errors import ApplianceError, AuditError, GatewayConfigError
from appliance.gateway.answers import API_PATHS
from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_writer import AuditSink, AuditWriter
from appliance.gateway.config import DEFAULT_CONFIG, GatewayConfig, TLSSettings, load_config
from appliance.gateway.forward import cursor_name, targets
from appliance.gateway.keys import KeyStore, load_keys
from appliance.gateway.proxy import Gateway
from appliance.gateway.server import ConnectionGuard, GuardedSite
from appliance.gateway.tls import check_files, load_material, read_material, server_context

LOG = logging.getLogger("appliance.gateway")
GATEWAY = web.AppKey("gateway", Gateway)
_RELOADS: set[asyncio.Task[None]] = set()


def reload_keys(gateway: Gateway) -> None:
    """SIGHUP: load the keys file now (the watcher would see a change within a second anyway)."""
    task = asyncio.get_running_loop().create_task(gateway.watcher.tick(force=True))
    _RELOADS.add(task)  # the loop keeps only a weak reference to its tasks
    task.add_done_callback(_RELOADS.discard)


def reload_all(gateway: Gateway, context: ssl.SSLContext, settings: TLSSettings) -> None:
    """SIGHUP in a single process: the keys file, and the TLS files into the context the
    listener serves with (new connections get the new certificate); files that do not pass
    the start's checks leave the old ones in use. With workers, supervisor.py does this."""
    reload_keys(gateway)
    try:
        load_material(context, read_material(settings))
    except GatewayConfigError as error:
        LOG.error("TLS files not reloaded, the gateway keeps serving the old ones: %s", error)
        return
    LOG.info("TLS certificate reloaded from %s", settings.cert)


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered as aiohttp would; any other expectation is ignored
    (RFC 9110 allows it), where aiohttp would answer 417 before the handler, unaudited."""
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not begun


def build_app(
    config: GatewayConfig, keys: KeyStore, audit: AuditSink, guard: ConnectionGuard
) -> web.Application:
    gateway = Gateway(config, keys, audit, guard)
    # A larger body makes request.read() raise, which the gateway answers with 413.
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[guard.middleware])
    # /health is readiness (per model); /health/ready and /readyz name it as probes expect.
    for path in ("/health", "/health/ready", "/readyz"):
        app.router.add_get(path, gateway.health, expect_handler=expect_continue)
    for path in ("/health/live", "/livez"):
        app.router.add_get(path, gateway.live, expect_handler=expect_continue)
    app.router.add_get("/metrics", gateway.metrics_page, expect_handler=expect_continue)
    app.router.add_get("/v1/models", gateway.models, expect_handler=expect_continue)
    app.router.add_get("/v1/models/{model:.+}", gateway.model, expect_handler=expect_continue)
    for path in API_PATHS:
        app.router.add_post(path, gateway.api, expect_handler=expect_continue)
    app.router.add_route("*", "/{tail:.*}", gateway.unknown, expect_handler=expect_continue)
    if gateway.cors.enabled:
        app.on_response_prepare.append(gateway.cors.on_prepare)
    app.on_startup.append(gateway.start_session)
    app.on_cleanup.append(gateway.close_session)

    async def on_sighup(_app: web.Application) -> None:
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_keys, gateway)

    app.on_startup.append(on_sighup)

    async def watch_keys(_app: web.Application) -> AsyncIterator[None]:
        await gateway.watcher.tick()  # changes made while the gateway was stopped
        task = asyncio.create_task(gateway.watcher.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(watch_keys)
    app[GATEWAY] = gateway
    return app


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="appliance-gateway",
        description="Audited OpenAI-compatible gateway in front of the appliance's runtimes.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config JSON")
    parser.add_argument(
        "--check-config", action="store_true", help="validate config and keys file, then exit"
    )
    parser.add_argument("--version", action="version", version=f"appliance-gateway {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    # A SIGHUP (keys reload) that arrives before the loop's handler is installed must not kill
    # the gateway: systemd counts that as a clean exit and would not restart it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = _parse(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        if args.check_config:
            if config.listen.tls is not None:
                check_files(config.listen.tls)
            # The config may be written before the first key (an install's order): a missing
            # keys file is reported, not refused; a broken one is refused.
            found = "no keys file yet at"
            if config.keys_file.exists():
                found = f"{len(KeyStore(load_keys(config.keys_file)))} key(s) in"
            print(f"{args.config}: valid gateway config, {len(config.models)} model(s), {found} "
                  f"{config.keys_file}")  # fmt: skip
            return
        tls = config.listen.tls
        material = read_material(tls) if tls is not None else None
        context = server_context(tls, material) if tls is not None else None
        keys = KeyStore(load_keys(config.keys_file))
        log = AuditLog(config.audit.dir, config.audit.max_bytes, config.audit.fsync)
        try:
            log.open()
        except OSError as error:  # systemd starts it again; the journal says why
            raise AuditError(
                f"cannot open the audit log in {config.audit.dir}: {error}",
                hint="free space or file descriptors, or fix the directory's permissions",
            ) from error
    except ApplianceError as error:
        from appliance.cli.output import Output  # the one place errors are rendered

        Output().error(error)
        sys.exit(error.exit_code)
    LOG.info(
        "audit log %s continues at seq %d; %d key(s); listening on %s://%s:%d%s%s",
        config.audit.dir,
        log.seq,
        len(keys),
        "http" if context is None else "https",
        config.listen.host,
        config.listen.port,
        " (client certificates required)" if context and context.verify_mode else "",
        f" with {config.worker_count()} worker processes" if config.worker_count() > 1 else "",
    )
    workers = config.worker_count()
    if workers > 1:
        from appliance.gateway.supervisor import supervise

        sys.exit(supervise(config, keys, log, workers, material))
    asyncio.run(serve(config, keys, log, asyncio.Event(), ssl_context=context))


async def serve(
    config: GatewayConfig,
    keys: KeyStore,
    log: AuditLog,
    stop: asyncio.Event,
    ready: Callable[[], object] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives, then finish the calls in flight
    (up to 30 s) and close the audit log. HTTPS when the config has ``listen.tls`` (with
    ``ssl_context`` when the caller made it already)."""
    writer = AuditWriter(
        log,
        min_free_bytes=config.audit.min_free_bytes,
        keep_rotated_bytes=config.audit.keep_rotated_bytes,
        forwarded=[cursor_name(target) for target in targets(config.audit.forward)],
    )
    await serve_app(config, keys, writer, stop, ready, ssl_context)


async def serve_app(
    config: GatewayConfig,
    keys: KeyStore,
    audit: AuditSink,
    stop: asyncio.Event,
    ready: Callable[[], object] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    socks: list[socket.socket] | None = None,
    attach: Callable[[Gateway], None] | None = None,
) -> None:
    """The gateway app on ``config.listen``, or on ``socks`` already listening (a worker's);
    ``attach`` fits the Gateway into a worker before it serves."""
    if ssl_context is None and config.listen.tls is not None:
        ssl_context = server_context(config.listen.tls)
    guard = ConnectionGuard(config.max_connections, config.header_timeout_s)
    app = build_app(config, keys, audit, guard)
    gateway = app[GATEWAY]
    if attach is not None:
        attach(gateway)
    # The audit log is the access log. Request bodies are taken as sent: a compressed one is
    # not JSON (400), and no decompression bomb is inflated.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=30, auto_decompress=False)
    await runner.setup()
    try:
        for sock in socks or [None]:  # type: ignore[list-item]
            site = GuardedSite(
                runner,
                config.listen.host,
                config.listen.port,
                guard,
                gateway.record_malformed,
                ssl_context,
                sock,
            )
            await site.start()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            if socks is None and ssl_context is not None and config.listen.tls is not None:
                tls = config.listen.tls
                loop.add_signal_handler(signal.SIGHUP, reload_all, gateway, ssl_context, tls)
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        await runner.cleanup()
