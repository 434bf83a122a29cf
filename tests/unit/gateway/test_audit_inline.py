"""A call's record written in the event loop's thread when the writer is idle (audit_writer):
the same chain, the same fault handling, and the thread's way whenever it must be taken."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.audit import CURRENT, AuditLog
from appliance.gateway.audit_verify import verify_log
from appliance.gateway.audit_writer import AuditWriter


def fields(number: int) -> dict[str, object]:
    return {"request_id": f"req-{number}", "status": 200, "model": "m"}


class Spy:
    """Which thread wrote each batch (the log's own append, wrapped)."""

    def __init__(self, log: AuditLog) -> None:
        self.threads: list[str] = []
        self._append = log.append_many

        def append_many(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            self.threads.append(threading.current_thread().name)
            return self._append(batch)

        log.append_many = append_many  # type: ignore[method-assign]


def writer_for(directory: Path, fsync: bool = False) -> tuple[AuditWriter, Spy]:
    log = AuditLog(directory, fsync=fsync)
    log.open()
    spy = Spy(log)
    return AuditWriter(log), spy


def test_an_idle_writer_writes_the_callers_record_in_the_callers_thread(tmp_path: Path) -> None:
    writer, spy = writer_for(tmp_path)
    records = asyncio.run(_sequential(writer, 5))
    writer.close()
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert spy.threads == ["MainThread"] * 5
    assert verify_log(tmp_path).records == 5


async def _sequential(writer: AuditWriter, count: int) -> list[dict[str, Any]]:
    return [await writer.write(fields(n)) for n in range(count)]


def test_an_fsynced_log_is_written_by_the_writer_thread(tmp_path: Path) -> None:
    """The loop must not wait for the disk."""
    writer, spy = writer_for(tmp_path, fsync=True)
    records = asyncio.run(_sequential(writer, 3))
    writer.close()
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert spy.threads == ["audit-writer"] * 3


def test_a_write_in_progress_sends_the_next_record_to_the_thread(tmp_path: Path) -> None:
    writer, spy = writer_for(tmp_path)

    async def main() -> dict[str, Any]:
        writer._busy.acquire()  # another thread is writing
        pending = asyncio.ensure_future(writer.write(fields(0)))
        await asyncio.sleep(0.05)
        assert not pending.done()  # it waits its turn, it does not write beside the other
        writer._busy.release()
        return await asyncio.wait_for(pending, 10)

    record = asyncio.run(main())
    writer.close()
    assert record["seq"] == 0
    assert spy.threads == ["audit-writer"]


def test_a_failed_inline_write_fails_the_call_and_heals_through_the_thread(
    tmp_path: Path,
) -> None:
    writer, spy = writer_for(tmp_path)
    log = writer.log
    real = log.append_many
    broken = [True]

    def append_many(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if broken[0]:
            raise OSError(28, "No space left on device")
        return real(batch)

    log.append_many = append_many  # type: ignore[method-assign]

    async def main() -> dict[str, Any]:
        with pytest.raises(OSError, match="No space left"):
            await writer.write(fields(0))
        assert writer.failed is not None
        writer.unrecorded()  # the gateway answered that call 503
        broken[0] = False
        # The thread heals the log by itself (an outage record), with no call to carry it.
        for _ in range(200):
            if writer.failed is None:
                break
            await asyncio.sleep(0.05)
        assert writer.failed is None
        return await asyncio.wait_for(writer.write(fields(1)), 10)

    record = asyncio.run(main())
    writer.close()
    lines = (tmp_path / CURRENT).read_text().splitlines()
    assert [line.count('"audit_outage"') for line in lines] == [1, 0]
    assert record["seq"] == 1
    # The failed write was refused before the spy; the outage record came from the thread.
    assert spy.threads == ["audit-writer", "MainThread"]
    assert verify_log(tmp_path).records == 2


def test_records_from_the_loop_and_other_threads_make_one_chain(tmp_path: Path) -> None:
    """Inline writes, the thread's batches and writes from other threads interleave: every
    record once, seqs without a gap, the chain whole."""
    writer, spy = writer_for(tmp_path)
    others: list[Any] = []

    def elsewhere() -> None:  # as the keys watcher or a malformed request's record
        for n in range(100):
            others.append(writer.submit(fields(1000 + n)))
            time.sleep(0.001)

    async def main() -> list[dict[str, Any]]:
        side = threading.Thread(target=elsewhere)
        side.start()
        sequential = await _sequential(writer, 100)
        together = await asyncio.gather(*(writer.write(fields(100 + n)) for n in range(200)))
        await asyncio.get_running_loop().run_in_executor(None, side.join)
        return sequential + list(together)

    results = asyncio.run(main())
    written = [future.result(timeout=10) for future in others] + results
    writer.close()
    assert sorted(r["seq"] for r in written) == list(range(400))
    assert len({r["request_id"] for r in written}) == 400
    assert verify_log(tmp_path).records == 400
    assert {"MainThread", "audit-writer"} <= set(spy.threads)


def test_a_closed_writer_writes_nothing_inline(tmp_path: Path) -> None:
    writer, spy = writer_for(tmp_path)
    writer.close()

    async def main() -> None:
        pending = asyncio.ensure_future(writer.write(fields(0)))
        await asyncio.sleep(0.05)
        assert not pending.done()
        pending.cancel()

    asyncio.run(main())
    assert spy.threads == []
