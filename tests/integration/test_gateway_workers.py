"""The gateway with two worker processes (config ``workers: 2``), as the real
``appliance-gateway`` process: calls spread over both workers land in one audit chain that
verifies, a key's rate limit holds across them, a revocation reaches both, ``/metrics`` counts
the whole gateway, and a worker killed mid-load is started again without losing a record.

Which worker served a call shows only on ``/metrics`` (``worker_records_total`` per worker
pid): the kernel hands each connection to whichever worker accepts first, so a test that needs
both workers involved repeats its round until they were (asserting every round).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.gateway import Reply
from tests.fixtures.gateway_process import BIN, Running, gateway_process
from tests.fixtures.openai_backend import serve_in_thread
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.slow

_WORKER = re.compile(
    r'^appliance_gateway_worker_records_total\{worker="(\d+)",pid="(\d+)"\} (\d+)$'
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("gateway-workers")
    with serve_in_thread(free_port()) as backend, gateway_process(root, backend, 2) as running:
        yield running


def metrics(gateway: Running) -> str:
    """The page as it is now: with an operator key (a scrape without one may be served a page up
    to a second old, see test_a_flood_of_anonymous_scrapes_costs_the_owner_a_page_a_second)."""
    reply = gateway.get("/metrics", gateway.keys["operator"])
    assert reply.status == 200
    return reply.body.decode()


def metric(text: str, name: str) -> float:
    (value,) = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def per_worker(gateway: Running) -> dict[int, int]:
    """Records written so far for each worker now running, by pid."""
    found = [_WORKER.match(line) for line in metrics(gateway).splitlines()]
    return {int(m[2]): int(m[3]) for m in found if m}


def burst(gateway: Running, key: str, n: int) -> tuple[list[Reply], set[int]]:
    """``n`` calls at once: the replies, and the pids of the workers that recorded meanwhile."""
    before = per_worker(gateway)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: gateway.call(key), range(n)))
    after = per_worker(gateway)
    return replies, {pid for pid, count in after.items() if count > before.get(pid, 0)}


def in_force_everywhere(gateway: Running) -> None:
    """Wait out the bound within which every worker uses the keys file as last written."""
    time.sleep(max(0.0, gateway.keys_file.stat().st_mtime + 1.0 - time.time()))


def test_calls_spread_over_both_workers_in_one_chain(gateway: Running) -> None:
    served: set[int] = set()
    for _ in range(10):
        replies, pids = burst(gateway, gateway.keys["operator"], 40)
        assert [r.status for r in replies] == [200] * 40
        for reply in replies:
            assert gateway.record(reply)["status"] == 200  # exactly one record each
        served |= pids
        if len(served) >= 2:
            break
    assert len(served) == 2, f"only worker pids {served} served"
    assert len(per_worker(gateway)) == 2
    health = json.loads(
        gateway.get("/health", gateway.keys["operator"]).body  # the operator's view
    )
    assert health["status"] == "ok" and health["connections"]["workers"] == 2


def test_a_rate_limit_holds_across_workers(gateway: Running) -> None:
    """rpm 10 refills one call per 6 s: a burst well inside that admits exactly 10."""
    for attempt in range(5):
        key = gateway.new_key(f"rpm-{attempt}", "--rpm", "10")
        first = gateway.until(lambda: (r := gateway.call(key)).status != 401 and r)  # noqa: B023
        assert first.status == 200
        in_force_everywhere(gateway)
        replies, pids = burst(gateway, key, 30)
        statuses = [r.status for r in replies]
        assert statuses.count(200) == 9 and statuses.count(429) == 21, statuses
        if len(pids) == 2:  # both workers decided on calls of this key
            return
    pytest.fail("no burst reached both workers")


def test_a_revocation_reaches_every_worker(gateway: Running) -> None:
    key = gateway.new_key("leaver")
    assert gateway.until(lambda: gateway.call(key).status == 200)
    gateway.cli("revoke", "leaver")
    written = gateway.keys_file.stat().st_mtime
    gateway.until(lambda: gateway.call(key).status == 401, seconds=5)
    assert time.time() - written < 1.0
    in_force_everywhere(gateway)  # every worker, whichever takes the calls below
    refused: set[int] = set()
    for _ in range(10):
        replies, pids = burst(gateway, key, 20)
        assert [r.status for r in replies] == [401] * 20
        refused |= pids
        if len(refused) == 2:
            break
    assert len(refused) == 2, f"only worker pids {refused} were asked"
    revoked = [r for r in gateway.records() if r.get("event") == "key_revoked"]
    assert [r["key_id"] for r in revoked] == [gateway.ids["leaver"]]  # once, not per worker


def test_metrics_count_the_whole_gateway(gateway: Running) -> None:
    text = metrics(gateway)
    calls = [r for r in gateway.records() if "request_id" in r]
    answered = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("appliance_gateway_requests_total{")
    )
    assert answered == len(calls) == gateway.calls
    assert metric(text, "appliance_gateway_audit_records_total") == len(calls)
    assert metric(text, "appliance_gateway_workers") == 2
    assert sum(per_worker(gateway).values()) == len(calls)


def test_series_by_key_follow_the_caller_across_workers(gateway: Running) -> None:
    """The owner renders the page for whichever worker asks: the series by API key only for an
    operator key, as a single process does."""
    series = "appliance_gateway_key_requests_total{"
    anyone = gateway.get("/metrics").body.decode()
    assert series not in anyone
    assert "# Series by API key: scrape with an operator key or the metrics token." in anyone
    for _ in range(4):  # connections land on either worker: each must pass the right on
        operator = gateway.get("/metrics", gateway.keys["operator"]).body.decode()
        assert series in operator


def test_a_flood_of_anonymous_scrapes_costs_the_owner_a_page_a_second(gateway: Running) -> None:
    """Every worker answers /metrics with the whole gateway's page, which the owner (also the
    audit writer) renders: unauthenticated scrapes share a page at most a second old per
    worker, so 200 of them at once cost the owner a few pages, not 200."""
    before = metric(metrics(gateway), "appliance_gateway_metrics_pages_total")
    began = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: gateway.get("/metrics"), range(200)))
    took = time.monotonic() - began
    assert {r.status for r in replies} == {200}
    assert all(b"appliance_gateway_requests_total" in r.body for r in replies)
    after = metric(metrics(gateway), "appliance_gateway_metrics_pages_total")
    # Per worker one page per started second of the flood, and the operator's scrape itself.
    assert after - before <= 2 * (int(took) + 1) + 1, (after - before, took)


def test_a_killed_worker_is_started_again_and_no_record_is_lost(gateway: Running) -> None:
    victim = min(per_worker(gateway))
    key = gateway.keys["operator"]
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(gateway.call, key, x_delay=0.05) for _ in range(120)]
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        replies = []
        for future in pending:
            # A call the dead worker held has no answer and is not counted; its record may be
            # there (written before the answer went).
            with contextlib.suppress(ConnectionError, OSError):
                replies.append(future.result())
    for reply in replies:
        assert gateway.record(reply)["status"] == reply.status
    workers = gateway.until(lambda: len(w := per_worker(gateway)) == 2 and victim not in w and w)
    assert victim not in workers
    log = gateway.log.read_text()
    assert f"(pid {victim}) exited (killed by SIGKILL)" in log
    assert metric(metrics(gateway), "appliance_gateway_worker_restarts_total") == 1
    assert [gateway.call(key).status for _ in range(10)] == [200] * 10


def test_one_chain_verifies_and_sigterm_stops_every_process(gateway: Running) -> None:
    pids = set(per_worker(gateway))
    records = gateway.records()
    calls = [r for r in records if "request_id" in r]
    # A call cut off with its worker may have its record (written before the answer went).
    assert len(calls) >= gateway.calls
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert gateway.process is not None
    gateway.process.terminate()
    assert gateway.process.wait(timeout=60) == 0, gateway.log.read_text()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} still runs"
    verify = subprocess.run(
        [str(BIN / "appliance"), "--json", "audit", "verify", "--dir", str(gateway.audit_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["records"] == len(gateway.records()) == len(records)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_started_again_while_the_keys_file_is_broken_serves_the_last_good_keys(
    tmp_path: Path,
) -> None:
    """A keys file that does not load leaves the last good keys in use (key_events.py): also
    in a worker started again meanwhile, which takes them from the owner, not the file (else it
    could not start, and the connections the kernel queues for it would wait in vain)."""
    with serve_in_thread(free_port()) as backend, gateway_process(tmp_path, backend, 2) as gw:
        key = gw.keys["operator"]
        victim = min(gw.until(lambda: len(w := per_worker(gw)) == 2 and w))
        gw.keys_file.write_text("{ not the keys file")
        gw.until(lambda: "keys not reloaded" in gw.log.read_text())
        os.kill(victim, signal.SIGKILL)
        workers = gw.until(
            lambda: len(w := per_worker(gw)) == 2 and victim not in w and w, seconds=15
        )
        assert victim not in workers
        for _ in range(4):
            replies, _pids = burst(gw, key, 20)
            assert [r.status for r in replies] == [200] * 20
