"""Soak: mixed valid, hostile and slow clients against ``appliance-gateway`` in front of the
stand-in backend (tests/fixtures/openai_backend.py), with the audit directory on a small tmpfs
that this script fills to the last byte and frees again, over and over. Bounded in time
(``--minutes``, default 10). Needs root (it mounts the tmpfs; unmounted at the end).

Afterwards it prints, and asserts nothing:

- calls made; calls answered; answers whose record is in the log (by X-Request-Id); 503
  answers given while the log could not be written, against the count the gateway's
  ``audit_outage`` records give for them; answers with no record and no such count (goal: 0);
- ``appliance audit verify`` on the directory;
- per fault (disk full, connection flood): how long after its end the gateway served again.

    sudo .venv/bin/python benchmarks/soak_gateway.py [--minutes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.errors import AuditError  # noqa: E402
from appliance.gateway.audit_retention import ship  # noqa: E402
from appliance.gateway.keys import add_key  # noqa: E402
from tests.fixtures.servers import free_port, wait_for  # noqa: E402

BIN = Path(sys.executable).parent
DISK_MIB = 8
RNG = random.Random(20261201)  # noqa: S311 - the same mix of clients on every run, not crypto


@dataclass
class Tally:
    made: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    no_answer: Counter[str] = field(default_factory=Counter)
    request_ids: dict[str, int] = field(default_factory=dict)  # id -> status
    audit_503: int = 0  # answers saying the audit log could not be written
    overloaded: int = 0  # connections refused at the limit (no call reached the gateway)
    served_at: list[float] = field(default_factory=list)  # probe successes, monotonic

    def answer(self, status: int, headers: Any, body: bytes) -> None:
        self.answered[status] += 1
        if status == 503 and b"overloaded" in body:
            self.overloaded += 1
            return
        request_id = headers.get("X-Request-Id") or headers.get("x-request-id")
        # Answered while the log could not be written: a 503, or a stream that ends with the
        # audit error event instead of [DONE] (its 200 was sent before).
        unrecorded = b"audit_unavailable" in body or (status == 503 and b"audit log" in body)
        if unrecorded:
            self.audit_503 += 1
        if request_id:
            self.request_ids[request_id] = -status if unrecorded else status


HOSTILE_BODIES = [
    b'{"model": "\\ud800", "prompt": "x"}',
    b'{"model": "stand-in", "model": "other"}',
    b'{"model": "stand-in", "MODEL": "other"}',
    b'{"model": "stand-in", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"model": "' + b"m" * 30000 + b'"}',
    b'{"model": "stand-in", "prompt": "\xff\xfe"}',
    b'{"model": "stand-in", "temperature": NaN}',
    b"\x00\x01\x02 not json",
]
ODD_HEADERS = [
    b"Authorization: Bearer \xed\xa0\x80",
    b"Authorization: Bearer apl_\xd9\xa0\xd9\xa1\xd9\xa2\xd9\xa3_x",
    b"X-Odd: \x01\x02",
    b"X-Long: " + b"h" * 20000,
    b"Bad Name: x",
]


async def raw_call(port: int, data: bytes, tally: Tally, timeout: float = 30) -> None:
    tally.made += 1
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except (OSError, TimeoutError) as error:
        tally.no_answer[type(error).__name__] += 1
        return
    if not answer:
        tally.no_answer["closed"] += 1
        return
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    tally.answer(int(lines[0].split()[1]), headers, body)


def request(path: str, body: bytes, key: str | None, extra: bytes = b"") -> bytes:
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n" if key else b""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + auth
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def valid_client(port: int, key: str, tally: Tally, stop: float) -> None:
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop:
            kind = RNG.choice(["plain", "stream", "chat", "embed"])
            path = {"embed": "/v1/embeddings", "chat": "/v1/chat/completions"}.get(
                kind, "/v1/completions"
            )
            body: dict[str, Any] = {"model": "stand-in", "max_tokens": RNG.randint(1, 8)}
            body.update(
                {"input": "a b"}
                if kind == "embed"
                else {"messages": [{"role": "user", "content": "hi"}]}
                if kind == "chat"
                else {"prompt": "x", "stream": kind == "stream"}
            )
            tally.made += 1
            try:
                async with session.post(url + path, json=body, headers=headers) as answer:
                    data = await answer.read()
                    tally.answer(answer.status, answer.headers, data)
            except (aiohttp.ClientError, TimeoutError) as error:
                tally.no_answer[type(error).__name__] += 1
            await asyncio.sleep(RNG.uniform(0.02, 0.1))


async def hostile_client(port: int, key: str, tally: Tally, stop: float) -> None:
    while time.monotonic() < stop:
        choice = RNG.random()
        if choice < 0.5:
            body = RNG.choice(HOSTILE_BODIES)
            await raw_call(port, request("/v1/completions", body, RNG.choice([key, None])), tally)
        elif choice < 0.8:
            extra = RNG.choice(ODD_HEADERS) + b"\r\n"
            await raw_call(
                port, request("/v1/completions", b'{"model":"stand-in"}', key, extra), tally
            )
        else:
            await raw_call(
                port, b"GET /\xff%ED%A0%80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tally
            )
        await asyncio.sleep(RNG.uniform(0.05, 0.2))


async def slow_client(port: int, key: str, tally: Tally, stop: float) -> None:
    """Slowloris (headers a byte at a time) and a body that never completes."""
    while time.monotonic() < stop:
        tally.made += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if RNG.random() < 0.5:
                for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaa":
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.4)
                    if reader.at_eof():
                        break
                answer = await asyncio.wait_for(reader.read(), 30)
            else:
                writer.write(
                    request("/v1/completions", b"", key).replace(
                        b"Content-Length: 0", b"Content-Length: 500"
                    )
                    + b'{"model"'
                )
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(), 30)
            writer.close()
        except (OSError, TimeoutError) as error:
            tally.no_answer[f"slow {type(error).__name__}"] += 1
            continue
        if not answer:
            tally.no_answer["slow client cut off"] += 1
            continue
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {
            k.decode().strip().lower(): v.decode("latin-1").strip()
            for k, _, v in (line.partition(b":") for line in lines[1:])
        }
        tally.answer(int(lines[0].split()[1]), headers, body)


async def prober(port: int, key: str, tally: Tally, stop: float) -> None:
    """A valid call every 50 ms: when the gateway serves, to the tenth of a second."""
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"model": "stand-in", "prompt": "probe", "max_tokens": 1}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < stop:
            tally.made += 1
            try:
                async with session.post(
                    url, json=body, headers={"Authorization": f"Bearer {key}"}
                ) as answer:
                    data = await answer.read()
                    tally.answer(answer.status, answer.headers, data)
                    if answer.status == 200:
                        tally.served_at.append(time.monotonic())
            except (aiohttp.ClientError, TimeoutError) as error:
                tally.no_answer[type(error).__name__] += 1
            await asyncio.sleep(0.05)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem holding ``directory``."""
    ballast = directory.parent / "ballast"
    with ballast.open("ab", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while out.write(b"\0" * size) == size:
                    pass
    return ballast


async def faults(
    audit_dir: Path, port: int, tally: Tally, stop: float, events: list[dict[str, Any]]
) -> None:
    await asyncio.sleep(15)
    cycle = 0
    while time.monotonic() < stop - 25:
        cycle += 1
        kind = "disk full" if cycle % 3 else "connection flood"
        started = time.monotonic()
        held: list[asyncio.StreamWriter] = []
        if kind == "disk full":
            ballast = await asyncio.to_thread(fill, audit_dir)
            await asyncio.sleep(8)
            ballast.unlink()
        else:
            for _ in range(260):  # over the gateway's max_connections (200)
                with contextlib.suppress(OSError):
                    held.append((await asyncio.open_connection("127.0.0.1", port))[1])
            await asyncio.sleep(5)
            for writer in held:
                writer.close()
        ended = time.monotonic()
        await asyncio.sleep(12)
        after = [t for t in tally.served_at if t > ended]
        events.append({
            "fault": kind, "lasted_s": round(ended - started, 1),
            "served_again_after_s": round(after[0] - ended, 3) if after else None,
        })  # fmt: skip
        await asyncio.sleep(5)


async def shipper(audit_dir: Path, shipped: Path, stop: float, counts: Counter[str]) -> None:
    """The operator's shipping job: rotated files off the small disk every 10 s, so the
    gateway may remove them (keep_rotated_bytes); it fails while the disk is full."""
    while time.monotonic() < stop:
        await asyncio.sleep(10)
        try:
            await asyncio.to_thread(ship, audit_dir, shipped)
            counts["ok"] += 1
        except (OSError, AuditError) as error:
            counts[f"failed: {type(error).__name__}"] += 1


async def soak(
    port: int, key: str, audit_dir: Path, shipped: Path, minutes: float
) -> tuple[Tally, list[Any], Counter[str]]:
    tally, shipping = Tally(), Counter[str]()
    events: list[dict[str, Any]] = []
    stop = time.monotonic() + minutes * 60
    await asyncio.gather(
        shipper(audit_dir, shipped, stop, shipping),
        *(valid_client(port, key, tally, stop) for _ in range(4)),
        *(hostile_client(port, key, tally, stop) for _ in range(2)),
        *(slow_client(port, key, tally, stop) for _ in range(2)),
        prober(port, key, tally, stop),
        faults(audit_dir, port, tally, stop, events),
    )
    return tally, events, shipping


def read_records(directory: Path) -> dict[int, dict[str, Any]]:
    paths = [*sorted(directory.glob("audit-*.jsonl")), directory / "audit.jsonl"]
    return {
        record["seq"]: record
        for path in paths
        if path.exists()
        for record in map(json.loads, path.read_bytes().splitlines())
    }


def verify(directory: Path) -> str:
    done = subprocess.run(
        [str(BIN / "appliance"), "--json", "audit", "verify", "--dir", str(directory)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode:
        return f"exit {done.returncode}: {(done.stdout or done.stderr).strip()[:400]}"
    result = json.loads(done.stdout)
    return (f"exit 0, {result['records']} records in {result['files']} file(s), seq "
            f"{result['last_seq']}, pruned through {result['pruned_through']}, "
            f"{len(result['gaps'])} gap(s)")  # fmt: skip


def report(
    tally: Tally, events: list[dict[str, Any]], audit_dir: Path, shipped: Path, seconds: float
) -> None:
    # The shipped copy and what is still on the small disk: together, every record.
    by_seq = {**read_records(shipped), **read_records(audit_dir)}
    records = [by_seq[seq] for seq in sorted(by_seq)]
    assert [r["seq"] for r in records] == list(range(len(records))), "seqs missing"
    by_id = {r["request_id"]: r for r in records if r.get("request_id")}
    outages = [r for r in records if r.get("event") == "audit_outage"]
    counted = sum(r["unrecorded_answers"] for r in outages)
    answered = sum(tally.answered.values())
    with_record = sum(1 for rid in tally.request_ids if rid in by_id)
    unrecorded = sum(1 for rid, status in tally.request_ids.items() if status < 0)
    missing = sum(1 for rid, status in tally.request_ids.items() if status > 0 and rid not in by_id)
    recorded_anyway = sum(
        1 for rid, status in tally.request_ids.items() if status < 0 and rid in by_id
    )
    print(f"soak: {seconds / 60:.1f} min, audit dir on a {DISK_MIB} MiB tmpfs")
    print(f"  calls made            {tally.made}")
    print(f"  answered              {answered}  by status {dict(sorted(tally.answered.items()))}")
    print(f"  no answer             {sum(tally.no_answer.values())}  {dict(tally.no_answer)}")
    print(f"  refused at the connection limit (no call reached the app): {tally.overloaded}")
    print(f"  answers with a request id {len(tally.request_ids)}: record found {with_record}; "
          f"answered while the log could not be written (503, or a stream ending in the audit "
          f"error event) {unrecorded}, of which recorded anyway {recorded_anyway}; the outage "
          f"records count {counted} (goal: {unrecorded - recorded_anyway}); other answers "
          f"without a record {missing} (goal 0)")  # fmt: skip
    print(f"  records in the log    {len(records)} ({len(outages)} outage, "
          f"{sum(1 for r in records if r.get('event') == 'audit_repair')} repair, "
          f"{sum(1 for r in records if r.get('event') == 'audit_gap')} gap)")  # fmt: skip
    print(f"  appliance audit verify (the small disk):   {verify(audit_dir)}")
    print(f"  appliance audit verify (the shipped copy): {verify(shipped)}")
    for event in events:
        print(f"  fault {event['fault']:16} lasted {event['lasted_s']:5.1f} s; served again "
              f"{event['served_again_after_s']} s after its end")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak_gateway.py mounts a tmpfs: run it as root")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        disk = root / "disk"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(disk)],
                       check=True)  # fmt: skip
        processes: list[subprocess.Popen[bytes]] = []
        try:
            audit_dir, shipped = disk / "audit", root / "shipped"
            backend_port, port = free_port(), free_port()
            backend = f"http://127.0.0.1:{backend_port}"
            command = [sys.executable, "-m", "tests.fixtures.openai_backend", "--port",
                       str(backend_port)]  # fmt: skip
            with (root / "backend.log").open("wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=log, cwd=ROOT))
            wait_for(backend + "/api/version", processes[0], {200}, root / "backend.log")
            config = {
                "listen": {"host": "127.0.0.1", "port": port, "plain_http": True},
                "keys_file": str(root / "keys.json"),
                "audit": {"dir": str(audit_dir), "max_bytes": 512 << 10,
                          "min_free_bytes": 2 << 20, "keep_rotated_bytes": 1 << 20},
                "max_connections": 200, "header_timeout_s": 3, "body_timeout_s": 3,
                "models": [{"name": "stand-in", "digest": "sha256:" + "5" * 64,
                            "backend": backend, "health_path": "/api/version"}],
            }  # fmt: skip
            (root / "config.json").write_text(json.dumps(config))
            key, _ = add_key(root / "keys.json", "soak", ["*"])
            with (root / "gateway.log").open("wb") as log:
                gateway = subprocess.Popen(
                    [str(BIN / "appliance-gateway"), "--config", str(root / "config.json")],
                    stdout=log, stderr=log,
                )  # fmt: skip
            processes.append(gateway)
            wait_for(f"http://127.0.0.1:{port}/health", gateway, {200}, root / "gateway.log")
            started = time.monotonic()
            tally, events, shipping = asyncio.run(soak(port, key, audit_dir, shipped, args.minutes))
            seconds = time.monotonic() - started
            descriptors = sum(1 for _ in Path(f"/proc/{gateway.pid}/fd").iterdir())
            gateway.terminate()
            gateway.wait(timeout=60)
            ship(audit_dir, shipped)  # what rotated since the last run of the job
            report(tally, events, audit_dir, shipped, seconds)
            print(f"  shipping job runs: {dict(shipping)}; gateway's open descriptors at the "
                  f"end: {descriptors}")  # fmt: skip
            log_text = (root / "gateway.log").read_text(errors="replace")
            counts = [
                log_text.count(word) for word in ("audit write failed", "disk low", "Traceback")
            ]
            print(f"  gateway log: {counts[0]} outage(s) logged, {counts[1]} disk-low alarm(s), "
                  f"{counts[2]} traceback(s); exit {gateway.returncode}")  # fmt: skip
            lines = log_text.splitlines()
            for at in [n for n, line in enumerate(lines) if line.startswith("Traceback")][:3]:
                print("  ---", *lines[max(0, at - 2) : at + 30], sep="\n    ")
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=30)
            subprocess.run(["umount", str(disk)], check=False)
            shutil.rmtree(disk, ignore_errors=True)


if __name__ == "__main__":
    main()
