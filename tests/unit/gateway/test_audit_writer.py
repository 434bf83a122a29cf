"""Who writes a batch: the event loop itself (no fsync), or the writer thread (fsync, a failed
log, records submitted from other threads)."""

from __future__ import annotations

import asyncio
import resource
import signal
import threading
from pathlib import Path
from typing import Any

from appliance.gateway.audit import AuditLog
from appliance.gateway.audit_verify import verify_log
from appliance.gateway.audit_writer import AuditWriter


def fields(number: int) -> dict[str, object]:
    return {"request_id": f"req-{number}", "status": 200}


class Batches(AuditLog):
    """The real log, noting each batch's size and the thread that wrote it."""

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        super().__init__(directory, fsync=fsync)
        self.batches: list[tuple[int, str]] = []

    def append_many(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches.append((len(batch), threading.current_thread().name))
        return super().append_many(batch)


async def write_all(writer: AuditWriter, count: int) -> list[int]:
    records = await asyncio.gather(*(writer.write(fields(n)) for n in range(count)))
    return [record["seq"] for record in records]


def test_the_loop_writes_one_turns_records_as_one_batch(tmp_path: Path) -> None:
    log = Batches(tmp_path)
    log.open()
    writer = AuditWriter(log)
    seqs = asyncio.run(write_all(writer, 50))
    writer.close()
    assert seqs == list(range(50))
    assert log.batches == [(50, threading.main_thread().name)]
    assert verify_log(tmp_path).records == 50


def test_with_fsync_the_thread_writes(tmp_path: Path) -> None:
    log = Batches(tmp_path, fsync=True)
    log.open()
    writer = AuditWriter(log)
    seqs = asyncio.run(write_all(writer, 20))
    writer.close()
    assert seqs == list(range(20))
    assert {name for _, name in log.batches} == {"audit-writer"}
    assert sum(size for size, _ in log.batches) == 20


def test_a_failed_write_on_the_loop_leaves_the_retries_to_the_thread(tmp_path: Path) -> None:
    log = Batches(tmp_path)
    log.open()
    writer = AuditWriter(log, retry_s=0.05)

    async def scenario() -> list[int]:
        await write_all(writer, 2)
        size = (tmp_path / "audit.jsonl").stat().st_size
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 30, old[1]))  # part of one record
        try:
            failed = await asyncio.gather(writer.write(fields(2)), return_exceptions=True)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, previous)
        assert isinstance(failed[0], OSError) and writer.failed is not None
        return await write_all(writer, 3)

    seqs = asyncio.run(scenario())
    writer.close()
    assert writer.failed is None
    loop, thread = threading.main_thread().name, "audit-writer"
    assert [name for _, name in log.batches[:2]] == [loop, loop]  # the two, then the failed
    assert thread in [name for _, name in log.batches[2:]]
    # The outage record, then the three: the chain went on where the failed batch left it.
    assert seqs == [3, 4, 5]
    assert verify_log(tmp_path).records == 6
