"""The owner of the audit chain for several workers (owner.py), driven over real socketpairs
by this test in the workers' place: one chain for all of them, batched, the limits shared, the
slots of a worker that went away given back, and the worker count in the config."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import GatewayConfigError
from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_verify import verify_log
from appliance.gateway.channel import frame, open_channel, read_message
from appliance.gateway.config import load_config
from appliance.gateway.keys import KeyStore, add_key, load_keys
from appliance.gateway.owner import Owner
from appliance.gateway.supervisor import Supervisor, bind
from appliance.gateway.worker import RemoteAudit
from tests.fixtures.gateway import gateway_config


class FakeWorker:
    """This test on a worker's end of a channel: requests and their answers, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ids = 0
        self.pushes: list[dict[str, Any]] = []

    def send(self, op: str, **fields: Any) -> int:
        self.ids += 1
        self.writer.write(frame({"op": op, "id": self.ids, **fields}))
        return self.ids

    async def answer(self) -> dict[str, Any]:
        while "push" in (message := await read_message(self.reader)):
            self.pushes.append(message)
        return message


@asynccontextmanager
async def owner_with(tmp_path: Path, workers: int) -> AsyncIterator[tuple[Owner, list[FakeWorker]]]:
    config = gateway_config(tmp_path, "http://127.0.0.1:9", workers=workers)
    add_key(config.keys_file, "tester", ["*"])
    log = AuditLog(config.audit.dir)
    log.open()
    owner = Owner(config, KeyStore(load_keys(config.keys_file)), log)
    fakes, tasks = [], []
    for index in range(workers):
        ours, theirs = socket.socketpair()
        reader, writer = await open_channel(ours)
        link = owner.attach(index, 1000 + index, writer)
        tasks.append(asyncio.create_task(owner.serve(link, reader)))
        fakes.append(FakeWorker(*await open_channel(theirs)))
    try:
        yield owner, fakes
    finally:
        for fake in fakes:
            fake.writer.close()
        await asyncio.gather(*tasks)
        await asyncio.get_running_loop().run_in_executor(None, owner.writer.close)


def call(n: int) -> dict[str, Any]:
    return {"time": "t", "request_id": f"r{n}", "key_id": "k-1", "model": "stand-in",
            "status": 200, "latency_ms": 1.5, "prompt_tokens": 3,
            "completion_tokens": 4}  # fmt: skip


def test_records_of_every_worker_go_into_one_chain(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with owner_with(tmp_path, 3) as (owner, fakes):
            for fake in fakes:
                hello = await read_message(fake.reader)
                assert hello["push"] == "hello" and hello["audit"]["failed"] is None
                assert hello["config"]["listen"]["port"] == owner.config.listen.port
            for n in range(30):  # interleaved, not awaited one by one: they batch
                fakes[n % 3].send("write", fields=call(n))
            answers = [[await fake.answer() for _ in range(10)] for fake in fakes]
            seqs = sorted(a["seq"] for batch in answers for a in batch)
            assert seqs == list(range(30))
            for batch in answers:  # each worker's records in the order it sent them
                assert [a["seq"] for a in batch] == sorted(a["seq"] for a in batch)
            page = owner.render()
            assert 'appliance_gateway_requests_total{model="stand-in",status="200"} 30' in page
            assert 'appliance_gateway_worker_records_total{worker="1",pid="1001"} 10' in page

    asyncio.run(scenario())
    report = verify_log(tmp_path / "audit")
    assert (report.records, report.last_seq, report.gaps) == (30, 29, ())


def test_limits_are_shared_and_a_gone_worker_gives_its_slots_back(tmp_path: Path) -> None:
    limits = {"rpm": None, "tpm": None, "concurrent": 2}

    async def scenario() -> None:
        async with owner_with(tmp_path, 2) as (owner, fakes):
            first, second = fakes
            first.send("admit", key="k-1", limits=limits)
            second.send("admit", key="k-1", limits=limits)
            tickets = [(await first.answer())["ticket"], (await second.answer())["ticket"]]
            first.send("admit", key="k-1", limits=limits)
            assert (await first.answer())["hit"] == ["concurrent", 2, 1.0]
            first.writer.write(frame({"op": "finish", "ticket": tickets[0]}))
            second.writer.close()  # the worker died with its call in flight
            await asyncio.sleep(0.2)
            assert owner.limiter.in_flight("k-1") == 0
            first.send("admit", key="k-1", limits=limits)
            assert "ticket" in await first.answer()

    asyncio.run(scenario())


@pytest.mark.parametrize("workers", [0, 65, "many", 2.5, True, "4"])
def test_the_worker_count_is_checked(tmp_path: Path, workers: object) -> None:
    config = tmp_path / "config.json"
    document = gateway_config(tmp_path, "http://127.0.0.1:9").model_dump(mode="json")
    config.write_text(json.dumps({**document, "workers": workers}))
    with pytest.raises(GatewayConfigError) as caught:
        load_config(config)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("workers", "Value error, a number of worker processes from 1 to 64, or 'auto'")
    ]


def test_a_second_gateway_cannot_share_the_port() -> None:
    """SO_REUSEPORT lets any process of the same user join the port: a second gateway started by
    mistake would take half the connections and append to the same audit chain as a second
    owner. The port is refused when anything listens on it already, as a single process is."""
    first = bind("127.0.0.1", 0, 1)
    port = first[0][0].getsockname()[1]
    try:
        with pytest.raises(OSError) as refused:
            bind("127.0.0.1", port, 2)
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        for sock in first[0]:
            sock.close()
    again = bind("127.0.0.1", port, 2)  # free again: a restart binds at once
    for sock in (s for own in again for s in own):
        sock.close()


def test_a_worker_started_while_the_gateway_stops_is_stopped_too(tmp_path: Path) -> None:
    """SIGTERM while a worker is being started (again): that worker is told to stop as well,
    not left serving until the supervisor's 45 s are up and it is killed mid-call."""
    config = gateway_config(tmp_path, "http://127.0.0.1:9", workers=1)
    add_key(config.keys_file, "tester", ["*"])
    log = AuditLog(config.audit.dir)
    log.open()
    listeners = bind(config.listen.host, config.listen.port, 1)

    async def scenario() -> Supervisor:
        supervisor = Supervisor(Owner(config, KeyStore(load_keys(config.keys_file)), log),
                                listeners)  # fmt: skip
        spawn = supervisor._spawn

        async def spawn_as_sigterm_comes(index: int) -> Any:
            supervisor.stopping.set()
            return await spawn(index)

        supervisor._spawn = spawn_as_sigterm_comes  # type: ignore[method-assign]
        await asyncio.wait_for(supervisor.run(), 20)
        return supervisor

    try:
        supervisor = asyncio.run(scenario())
    finally:
        for sock in listeners[0]:
            sock.close()
    assert supervisor.failed_start is None  # a stop, not a worker that failed to start
    assert all(p.returncode is not None for p in supervisor.processes.values())


def test_a_worker_whose_owner_is_gone_serves_no_call() -> None:
    """The request path refuses calls (503) while the audit sink says it failed; a worker that
    lost its owner must say so, not keep the owner's last 'ok' while it drains."""
    audit = RemoteAudit(None, {"failed": None})  # type: ignore[arg-type]  # no call sent
    assert audit.failed is None
    audit.owner_gone()
    assert str(audit.failed) == "the audit owner is gone"
    assert audit.failed_since is not None
