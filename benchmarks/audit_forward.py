"""appliance-audit-forward's throughput: how many audit records a second reach a TLS syslog
collector (the test collector of tests/fixtures/syslog_collector, on loopback), and how long a
backlog takes to drain after the collector was away (goal: far above what the gateway writes;
a call's record is a few hundred bytes, and the gateway answers at most a few thousand calls a
second).

1. Live: records appended while the forwarder runs; the lag from append to delivery.
2. Backlog: records written while no collector listens, then the collector starts.

    .venv/bin/python -m benchmarks.audit_forward [RECORDS]
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from appliance.gateway.audit import AuditLog
from appliance.gateway.config import SyslogTarget
from appliance.gateway.forward import Forwarder, SyslogSink
from tests.fixtures.servers import free_port
from tests.fixtures.syslog_collector import Collector, make_pki

# A call's record as the gateway writes it, give or take the values.
RECORD = {
    "time": "2026-12-01T10:00:00.000Z",
    "request_id": "9f1c2a8e-3d4b-4c5d-8e6f-7a8b9c0d1e2f",
    "key_id": "k-0123456789abcdef",
    "client": "198.18.10.20",
    "method": "POST",
    "path": "/v1/chat/completions",
    "model": "tiny-llama",
    "model_digest": "sha256:" + "1" * 64,
    "status": 200,
    "prompt_sha256": "2" * 64,
    "response_sha256": "3" * 64,
    "prompt_tokens": 42,
    "completion_tokens": 128,
    "latency_ms": 812.5,
    "stream": True,
    "error": None,
}


def wait(forwarder: Forwarder, seq: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while forwarder.cursor < seq:
        if time.monotonic() > deadline:
            raise SystemExit(f"not forwarded within {timeout} s: cursor {forwarder.cursor}")
        time.sleep(0.01)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        pki = make_pki(root / "pki")
        collector = Collector(pki, root / "remote.log", free_port()).start()
        target = SyslogTarget(host="127.0.0.1", port=collector.port, ca_file=pki.ca)
        log = AuditLog(root / "audit")
        log.open()
        forwarder = Forwarder(root / "audit", "syslog", SyslogSink(target), "gw1", retry_s=0.1)
        stop = threading.Event()
        thread = threading.Thread(target=forwarder.run, args=(stop, 0.01))
        thread.start()
        started = time.perf_counter()
        for _ in range(count):
            log.append(RECORD)
        written = time.perf_counter() - started
        wait(forwarder, count - 1)
        live = time.perf_counter() - started
        print(f"live: {count} records written in {written:.2f} s, all delivered after "
              f"{live:.2f} s: {count / live:.0f} records/s")  # fmt: skip
        collector.stop()
        for _ in range(count):
            log.append(RECORD)
        time.sleep(1)
        started = time.perf_counter()
        collector.start()
        wait(forwarder, 2 * count - 1)
        drained = time.perf_counter() - started
        print(f"backlog: {count} records delivered {drained:.2f} s after the collector came "
              f"back: {count / drained:.0f} records/s")  # fmt: skip
        stop.set()
        thread.join()
        collector.close()
        log.close()
        size = (root / "remote.log").stat().st_size
        print(f"collector file: {collector.messages} messages, {size / collector.messages:.0f} "
              f"bytes each")  # fmt: skip


if __name__ == "__main__":
    main()
