"""Key lifecycle and per-key limits against the real ``appliance-gateway`` process, driven by
the real ``appliance gateway`` commands: revocation within a second (measured), expiry,
rotation with a grace period, 429s for each limit, a keys file edited into garbage, and the
audit chain recording all of it and still verifying.

The backend is the stand-in (tests/fixtures/openai_backend.py): these tests are about the
gateway's own decisions, and the stand-in reports usage and holds calls (``x_delay``) on demand.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.audit import CURRENT
from appliance.gateway.key_admin import actor
from tests.fixtures.gateway import Reply, gateway_config
from tests.fixtures.openai_backend import serve_in_thread
from tests.fixtures.servers import free_port, wait_for

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@dataclass
class Running:
    port: int
    root: Path
    keys_file: Path
    audit_dir: Path
    log: Path
    calls: int = 0  # API calls made, each of which must have exactly one record
    keys: dict[str, str] = field(default_factory=dict)  # name -> plaintext
    ids: dict[str, str] = field(default_factory=dict)  # name -> key id

    def cli(self, *argv: str) -> dict[str, Any]:
        done = subprocess.run(
            [str(BIN / "appliance"), "--json", "gateway", argv[0], "--keys-file",
             str(self.keys_file), *argv[1:]],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def new_key(self, name: str, *options: str) -> str:
        made = self.cli("new-key", "--name", name, "--model", "*", *options)
        self.keys[name], self.ids[name] = made["key"], made["id"]
        return str(made["key"])

    def call(self, key: str, **extra: Any) -> Reply:
        body = json.dumps({"model": "stand-in", "prompt": "hi", "max_tokens": 2, **extra})
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(
                "POST", "/v1/completions", body=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )  # fmt: skip
            response = connection.getresponse()
            reply = Reply(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()
        self.calls += 1
        return reply

    def health(self) -> dict[str, Any]:
        """/health as the operator sees it (the keys file's state is an operator's detail)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            auth = {"Authorization": f"Bearer {self.keys['operator']}"}
            connection.request("GET", "/health", headers=auth)
            return json.loads(connection.getresponse().read())  # type: ignore[no-any-return]
        finally:
            connection.close()

    def records(self) -> list[dict[str, Any]]:
        paths = [*sorted(self.audit_dir.glob("audit-*.jsonl")), self.audit_dir / CURRENT]
        return [json.loads(line) for path in paths for line in path.read_text().splitlines()]

    def record(self, reply: Reply) -> dict[str, Any]:
        (found,) = [
            r for r in self.records() if r.get("request_id") == reply.headers["x-request-id"]
        ]
        return found

    def events(self, key: str, kind: str) -> list[dict[str, Any]]:
        return [
            r for r in self.records() if r.get("event") == kind and r["key_id"] == self.ids[key]
        ]

    def until(self, check: Any, seconds: float = 5.0) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if value := check():
                return value
            time.sleep(0.05)
        raise AssertionError(f"not so after {seconds} s: {check}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("gateway-keys")
    with serve_in_thread(free_port()) as backend:
        config = gateway_config(root, backend)
        (root / "config.json").write_text(config.model_dump_json())
        running = Running(config.listen.port, root, config.keys_file, config.audit.dir,
                          root / "gateway.log")  # fmt: skip
        running.new_key("operator")
        with running.log.open("wb") as sink:
            process = subprocess.Popen(
                [str(BIN / "appliance-gateway"), "--config", str(root / "config.json")],
                stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{running.port}/health", process, {200}, running.log)
            yield running
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0, running.log.read_text()


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
