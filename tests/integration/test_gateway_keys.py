"""Key lifecycle and per-key limits against the real ``appliance-gateway`` process, driven by
the real ``appliance gateway`` commands: revocation within a second (measured), expiry,
rotation with a grace period, 429s for each limit, a keys file edited into garbage, and the
audit chain recording all of it and still verifying.

The backend is the stand-in (tests/fixtures/openai_backend.py): these tests are about the
gateway's own decisions, and the stand-in reports usage and holds calls (``x_delay``) on demand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.key_admin import actor
from tests.fixtures.gateway import Reply
from tests.fixtures.gateway_process import Running, gateway_process
from tests.fixtures.openai_backend import serve_in_thread
from tests.fixtures.servers import free_port

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def gateway(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Running]:
    """The whole suite once with the single-process gateway, once with two worker processes
    (one owner of the chain, the limits and the key events for both)."""
    root = tmp_path_factory.mktemp("gateway-keys")
    with (
        serve_in_thread(free_port()) as backend,
        gateway_process(root, backend, request.param) as running,
    ):
        yield running


def test_revocation_takes_effect_within_a_second(gateway: Running) -> None:
    key = gateway.new_key("leaver")
    assert gateway.until(lambda: gateway.call(key).status == 200)
    started = time.monotonic()
    revoked = gateway.cli("revoke", "leaver")
    written = gateway.keys_file.stat().st_mtime  # the command's last act before it exits
    refused = gateway.until(lambda: (r := gateway.call(key)).status == 401 and r, seconds=5)
    effective = time.time() - written
    print(f"\nrevocation: refused {effective * 1000:.0f} ms after the keys file was written "
          f"({(time.monotonic() - started) * 1000:.0f} ms after the command started)")  # fmt: skip
    assert effective < 1.0
    assert refused.json()["error"] == {
        "message": f"this API key was revoked at {revoked['revoked']}",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
    record = gateway.record(refused)
    assert (record["status"], record["key_id"]) == (401, revoked["id"])
    assert record["error"] == f"invalid_api_key: this API key was revoked at {revoked['revoked']}"
    (event,) = gateway.events("leaver", "key_revoked")
    assert (event["at"], event["by"], event["name"]) == (revoked["revoked"], actor(), "leaver")
    (created,) = gateway.events("leaver", "key_created")
    assert created["by"] == actor() and created["seq"] < event["seq"] < record["seq"]
    assert key not in json.dumps(gateway.records())


def test_an_expired_key_is_refused_and_its_expiry_recorded_once(gateway: Running) -> None:
    key = gateway.new_key("trial", "--expires", "3s")
    assert gateway.until(lambda: gateway.call(key).status == 200)
    refused = gateway.until(lambda: (r := gateway.call(key)).status == 401 and r, seconds=6)
    assert refused.json()["error"]["message"].startswith("this API key expired at ")
    assert gateway.record(refused)["key_id"] == gateway.ids["trial"]
    time.sleep(0.6)  # a few more of the watcher's ticks: still one event
    (expired,) = gateway.events("trial", "key_expired")
    assert expired["at"] == refused.json()["error"]["message"].rsplit(" ", 1)[1]


def test_rotation_keeps_the_old_secret_for_its_grace_period(gateway: Running) -> None:
    old = gateway.new_key("rotating")
    assert gateway.until(lambda: gateway.call(old).status == 200)
    rotated = gateway.cli("rotate", "rotating", "--grace", "3s")
    new = rotated["key"]
    assert gateway.until(lambda: gateway.call(new).status == 200)
    assert gateway.call(old).status == 200  # within the grace period
    refused = gateway.until(lambda: (r := gateway.call(old)).status == 401 and r, seconds=6)
    assert "this secret was replaced at" in refused.json()["error"]["message"]
    assert gateway.call(new).status == 200
    answered = gateway.call(new)
    assert gateway.record(answered)["key_id"] == rotated["id"] == gateway.ids["rotating"]
    (event,) = gateway.events("rotating", "key_rotated")
    assert (event["by"], event["grace_until"]) == (actor(), rotated["old_valid_until"])


def limited(gateway: Running, reply: Reply, limit: str, allowed: int) -> dict[str, Any]:
    """The 429 a client sees, and its audit record naming the limit."""
    assert reply.status == 429, reply.body
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    retry = int(reply.headers["retry-after"])
    assert retry >= 1 and reply.headers["x-should-retry"] == "true"
    assert int(reply.headers["retry-after-ms"]) <= retry * 1000
    record = gateway.record(reply)
    assert record["status"] == 429
    assert (
        record["error"]
        == f"rate_limit_exceeded: {limit} limit {allowed} reached; retry after {retry} s"
    )
    return record


def test_requests_per_minute_and_a_limit_changed_while_running(gateway: Running) -> None:
    key = gateway.new_key("rpm", "--rpm", "2")
    assert gateway.until(lambda: gateway.call(key).status == 200)
    assert gateway.call(key).status == 200
    record = limited(gateway, gateway.call(key), "rpm", 2)
    assert record["key_id"] == gateway.ids["rpm"]
    # Raised without a restart: the bucket grows at the new rate from where it was.
    gateway.cli("limits", "rpm", "--rpm", "6000")
    assert gateway.until(lambda: gateway.call(key).status == 200)
    (event,) = gateway.events("rpm", "key_limits_changed")
    assert (event["previous"]["rpm"], event["limits"]["rpm"], event["by"]) == (2, 6000, actor())


def test_tokens_per_minute_are_charged_from_reported_usage(gateway: Running) -> None:
    key = gateway.new_key("tpm", "--tpm", "10")
    first = gateway.until(lambda: (r := gateway.call(key, max_tokens=30)).status == 200 and r)
    used = gateway.record(first)
    assert used["completion_tokens"] == 30  # 30 + prompt of 10 a minute: in debt
    record = limited(gateway, gateway.call(key), "tpm", 10)
    retry = int(record["error"].rsplit(" ", 2)[1])
    debt = used["prompt_tokens"] + used["completion_tokens"] - 10
    assert retry == pytest.approx(debt * 6, abs=2)  # 10 a minute: 6 s a token


def test_concurrent_calls_over_the_limit_are_refused(gateway: Running) -> None:
    key = gateway.new_key("parallel", "--concurrent", "2")
    assert gateway.until(lambda: gateway.call(key).status == 200)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: gateway.call(key, x_delay=3), range(6)))
    assert sorted(r.status for r in replies) == [200, 200, 429, 429, 429, 429]
    for reply in replies:
        if reply.status == 429:
            limited(gateway, reply, "concurrent", 2)
    assert gateway.call(key).status == 200  # the slots are free again


def test_a_garbage_keys_file_keeps_the_last_good_keys(gateway: Running) -> None:
    good = gateway.keys_file.read_bytes()
    gateway.keys_file.write_text('{"version": 1, "keys": [{"id": ')
    try:
        health = gateway.until(lambda: (h := gateway.health())["keys_file"] != "ok" and h)
        assert "is not JSON" in health["keys_file"]
        assert gateway.call(gateway.keys["operator"]).status == 200
        assert "keys not reloaded, keeping the" in gateway.log.read_text()
    finally:
        gateway.keys_file.write_bytes(good)
    assert gateway.until(lambda: gateway.health()["keys_file"] == "ok")


def test_every_call_and_key_change_is_in_a_chain_that_verifies(gateway: Running) -> None:
    records = gateway.records()
    calls = [r for r in records if "request_id" in r]
    assert len(calls) == gateway.calls
    events = sorted((r["event"], r["name"]) for r in records if "event" in r)
    names = ["operator", "leaver", "trial", "rotating", "rpm", "tpm", "parallel"]
    assert events == sorted(
        [("key_created", n) for n in names]
        + [("key_revoked", "leaver"), ("key_expired", "trial"), ("key_rotated", "rotating"),
           ("key_limits_changed", "rpm")]
    )  # fmt: skip
    verify = subprocess.run(
        [str(BIN / "appliance"), "--json", "audit", "verify", "--dir", str(gateway.audit_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["records"] == len(records)
