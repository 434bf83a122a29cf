"""``appliance-audit-forward``: every audit record to the site's log store, none lost.

    appliance-audit-forward --config /etc/appliance/gateway/config.json

A process of its own (its own unit, next to the gateway's), not a thread of the gateway: it
reads the committed chain from the audit files, so a collector that is slow, away or hostile
can hold up nothing on the request path, and it keeps working whatever the gateway's worker
layout. Per target (``audit.forward.syslog``, ``audit.forward.file``) it keeps a cursor in the
audit directory, ``audit.forwarded-<target>`` (``{"seq", "hash"}`` of the last record known
delivered), so a collector away for hours, or a restart of either process, loses nothing: the
records wait in the audit files, and the gateway's pruning removes no rotated file holding a
record after a cursor (see audit_retention).

Delivered means: for a file, written and fsynced; over TLS, acknowledged by the collector's
TCP (nothing left in the socket's send queue) and the connection still up a moment later
(``CONFIRM_S``): a collector that closes with records unread resets the connection and they
are sent again. RFC 5425 has no acknowledgement of its own, so a record may arrive twice
(same seq, same hash): ``appliance audit verify --shipped`` passes over such duplicates and
fails on two different records with one seq. A record is never known delivered when it is not.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import socket
import ssl
import struct
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError
from appliance.gateway.audit import read_head
from appliance.gateway.audit_reader import ChainReader
from appliance.gateway.audit_retention import read_mark, write_mark
from appliance.gateway.config import (
    DEFAULT_CONFIG,
    ForwardSettings,
    SyslogTarget,
    load_config,
)
from appliance.gateway.syslog import MAX_MESSAGE_BYTES, format_message, frame

LOG = logging.getLogger("appliance.gateway.forward")

FORWARDED = "audit.forwarded-{}"
BATCH = 2048
# How long a connection must stay up after the collector's TCP acknowledged a batch: a
# collector closing with records unread resets it within a round trip. One batch per interval
# at most: 8000 records a second, far above what the gateway's calls write.
CONFIRM_S = 0.25
_ACK_WAIT_S = 30.0
_TCP_ESTABLISHED = 1


def cursor_name(target: str) -> str:
    return FORWARDED.format(target)


def targets(settings: ForwardSettings | None) -> list[str]:
    if settings is None:
        return []
    return [name for name in ("syslog", "file") if getattr(settings, name) is not None]


class Sink(Protocol):
    def send(self, messages: list[bytes]) -> None: ...
    def delivered(self) -> bool: ...
    def close(self) -> None: ...


class FileSink:
    """Appends one line per record; the file is opened by name for each batch, so a rotation
    by the SIEM side (rename, then a new file) is followed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, messages: list[bytes]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            data = b"".join(message + b"\n" for message in messages)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def delivered(self) -> bool:
        return True

    def close(self) -> None:
        pass


def tls_context(target: SyslogTarget) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(target.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if target.cert_file is not None and target.key_file is not None:
        context.load_cert_chain(str(target.cert_file), str(target.key_file))
    return context


class SyslogSink:
    """RFC 5425: RFC 5424 messages, octet-counted, over one TLS connection kept open."""

    def __init__(self, target: SyslogTarget, timeout_s: float = 10.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.context = tls_context(target)
        self._sock: ssl.SSLSocket | None = None
        self._acked_at: float | None = None

    def _connect(self) -> ssl.SSLSocket:
        if self._sock is None:
            raw = socket.create_connection((self.target.host, self.target.port), self.timeout_s)
            try:
                name = self.target.server_name or self.target.host
                self._sock = self.context.wrap_socket(raw, server_hostname=name)
            except BaseException:
                raw.close()
                raise
            LOG.info("connected to %s:%d", self.target.host, self.target.port)
        return self._sock

    def send(self, messages: list[bytes]) -> None:
        sock = self._connect()
        try:
            sock.sendall(b"".join(frame(message) for message in messages))
        except OSError:
            self.close()
            raise
        self._acked_at = None

    def _state(self) -> tuple[int, int]:
        """The TCP state and the bytes the collector's TCP has not acknowledged yet."""
        assert self._sock is not None
        info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        queued = fcntl.ioctl(self._sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
        return info[0], struct.unpack("i", queued)[0]

    def delivered(self) -> bool:
        """Waits for the collector's TCP to acknowledge everything sent, then ``CONFIRM_S``
        with the connection still established; False (and the connection closed) otherwise."""
        deadline = time.monotonic() + _ACK_WAIT_S
        while self._sock is not None and time.monotonic() < deadline:
            state, queued = self._state()
            error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if state != _TCP_ESTABLISHED or error:
                break
            if queued == 0:
                now = time.monotonic()
                self._acked_at = self._acked_at or now
                if now - self._acked_at >= CONFIRM_S:
                    return True
            time.sleep(0.02)
        self.close()
        return False

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._acked_at = None


class Forwarder:
    """Ships one target's records, from its cursor on, until ``stop`` is set."""

    def __init__(
        self,
        directory: Path,
        name: str,
        sink: Sink,
        hostname: str,
        facility: int = 13,
        retry_s: float = 2.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.directory = directory
        self.name = name
        self.sink = sink
        self.hostname = hostname
        self.facility = facility
        self.retry_s = retry_s
        self.max_message_bytes = max_message_bytes
        self.reader = ChainReader(directory)
        self.cursor_path = directory / cursor_name(name)
        mark = read_mark(self.cursor_path)
        self.cursor = -1 if mark is None else int(mark["seq"])
        self.forwarded = 0

    def step(self) -> int:
        """Forward one batch of committed records; how many were delivered (0: nothing new).
        Raises OSError when the target cannot take them."""
        head = read_head(self.directory)
        if head is not None and head["seq"] < self.cursor:
            # The log was moved aside and a new chain begun (seq 0) with the old cursor kept.
            LOG.warning("%s: the audit log restarted below the cursor; forwarding the new chain "
                        "from its start", self.name)  # fmt: skip
            self.cursor = -1
            self.reader.close()
        if head is None or head["seq"] <= self.cursor:
            return 0
        records = self.reader.read(self.cursor, head["seq"], BATCH)
        if not records:
            return 0
        top = (head["seq"], head["hash"])
        messages = [
            format_message(r, top, self.hostname, self.facility, self.max_message_bytes)
            for r in records
        ]
        self.sink.send(messages)
        if not self.sink.delivered():
            self.reader.close()  # read the same records again for the next connection
            raise OSError(f"{self.name}: the collector did not confirm the batch")
        last = records[-1]
        write_mark(self.cursor_path, last["seq"], last["hash"])
        self.cursor = last["seq"]
        self.forwarded += len(records)
        return len(records)

    def run(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        delay = self.retry_s
        while not stop.is_set():
            try:
                sent = self.step()
            except (OSError, ApplianceError, ValueError) as error:
                LOG.warning("%s: not forwarded yet (%s); again in %.0f s", self.name, error, delay)
                stop.wait(delay)
                delay = min(delay * 2, self.retry_s * 10)
                continue
            delay = self.retry_s
            if not sent:
                stop.wait(poll_s)
        self.sink.close()
        self.reader.close()


def forwarders(directory: Path, settings: ForwardSettings) -> list[Forwarder]:
    hostname = settings.hostname or socket.gethostname()
    sinks: dict[str, Any] = {}
    if settings.syslog is not None:
        sinks["syslog"] = SyslogSink(settings.syslog)
    if settings.file is not None:
        sinks["file"] = FileSink(settings.file)
    return [
        Forwarder(
            directory,
            name,
            sink,
            hostname,
            settings.facility,
            settings.retry_s,
            settings.max_message_bytes,
        )
        for name, sink in sinks.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="appliance-audit-forward",
        description="Forward the gateway's audit records to the site's log store.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="gateway config JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        settings = config.audit.forward
        if settings is None:
            print(f"{args.config}: audit.forward is not set; nothing to forward", file=sys.stderr)
            sys.exit(0)
        workers = forwarders(config.audit.dir, settings)
    except (ApplianceError, OSError, ssl.SSLError) as error:
        from appliance.cli.output import Output  # the one place errors are rendered

        if isinstance(error, ApplianceError):
            Output().error(error)
            sys.exit(error.exit_code)
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threads = [threading.Thread(target=w.run, args=(stop,), name=w.name) for w in workers]
    for thread in threads:
        thread.start()
    LOG.info("forwarding %s from %s", ", ".join(w.name for w in workers), config.audit.dir)
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)


if __name__ == "__main__":
    main()
