"""A record that cannot be written as its client leaves is still counted: ``audit_failures`` in
/metrics, and the call in the ``audit_outage`` record's ``unrecorded_answers`` once the log can
be written again, like any answer given without a record. Against the real gateway app and the
real audit writer on loopback; only the disk's failure (ENOSPC from the log's write) is made."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_writer import AuditWriter
from tests.fixtures.gateway import RunningGateway, gateway_in_thread


class Disk:
    """Whether the audit disk is full; a call's batch that meets a full disk fails once the
    client is gone (``left``), so that the failure comes after the client left."""

    def __init__(self) -> None:
        self.full = False
        self.writing = threading.Event()  # a call's record reached the log
        self.left = threading.Event()

    def fail(self, log: AuditLog) -> AuditWriter:
        write = log.append_many

        def append_many(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if self.full:
                if any("request_id" in fields for fields in batch):
                    self.writing.set()
                    self.left.wait(10)
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(batch)

        log.append_many = append_many  # type: ignore[method-assign]
        return AuditWriter(log)


@contextmanager
def full_disk_gateway(tmp_path: Path) -> Iterator[tuple[RunningGateway, Disk]]:
    disk = Disk()
    with gateway_in_thread(tmp_path, writer=disk.fail) as gateway:
        disk.full = True  # after the key's creation was recorded at the start
        yield gateway, disk


def request(gateway: RunningGateway, delay: float) -> bytes:
    body = json.dumps({"model": "stand-in", "prompt": "x", "max_tokens": 1, "x_delay": delay})
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {gateway.key}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def leave_while_recorded(gateway: RunningGateway, disk: Disk) -> None:
    """The backend answers at once; the client leaves while the answer's record is written."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as client:
        client.sendall(request(gateway, 0))
        assert disk.writing.wait(10)
    time.sleep(0.3)  # the gateway notices the closed connection and cancels the call
    disk.left.set()


def leave_while_the_backend_answers(gateway: RunningGateway, disk: Disk) -> None:
    """The client leaves before the answer (499); the 499's record meets the full disk."""
    disk.left.set()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as client:
        client.sendall(request(gateway, 1))
        time.sleep(0.3)  # the call is at the backend
    assert disk.writing.wait(10)


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("leave", [leave_while_recorded, leave_while_the_backend_answers])
def test_a_record_lost_as_the_client_leaves_is_counted(
    tmp_path: Path, leave: Callable[[RunningGateway, Disk], None]
) -> None:
    with full_disk_gateway(tmp_path) as (gateway, disk):
        assert gateway.gateway is not None
        metrics = gateway.gateway.metrics
        leave(gateway, disk)
        assert wait_for(lambda: metrics.audit_failures == 1), metrics.audit_failures
        time.sleep(0.2)  # anything more the call would count, counted by now
        disk.full = False  # the writer's retry writes the outage record
        assert wait_for(lambda: any(r.get("event") == "audit_outage" for r in gateway.records()))
        [outage] = [r for r in gateway.records() if r.get("event") == "audit_outage"]
        assert outage["unrecorded_answers"] == 1
        assert "No space left on device" in outage["error"]
        assert (metrics.audit_failures, metrics.audit_records) == (1, 0)
        assert gateway.calls() == []  # the call has no record: the outage record counts it
        assert gateway.verify().records == 2  # the key's creation, the outage
