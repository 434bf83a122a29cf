"""The audit log's share of a gateway call, without the network: how long an answer waits for
its record (one call at a time), and the CPU per record (one at a time, and 32 at a time as
under load), through ``AuditWriter.write`` on an event loop, as the request path calls it.

A few hundred microseconds of a call's few milliseconds, so it drowns in benchmarks/gateway.py
on a busy machine; here it does not. ``--compare DIR`` measures another checkout (e.g. main)
too, in turns with this one (each run in a process of its own), and prints medians.

    .venv/bin/python benchmarks/audit_write.py [--compare DIR] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# A call's record as the gateway writes it, give or take the values.
RECORD: dict[str, Any] = {
    "time": "2026-12-01T00:00:00.000Z",
    "request_id": "0b3c0e5e-7c1f-4a51-9d55-0123456789ab",
    "client_request_id": None,
    "key_id": "k-0000abcd",
    "client": "127.0.0.1",
    "client_cert": None,
    "method": "POST",
    "path": "/v1/completions",
    "model": "gpu-like",
    "model_digest": "sha256:" + "5" * 64,
    "user": None,
    "status": 200,
    "prompt_sha256": "a" * 64,
    "response_sha256": "b" * 64,
    "prompt_tokens": 4,
    "completion_tokens": 16,
    "latency_ms": 12.3,
    "stream": False,
    "error": None,
}


async def _measure(directory: Path, sequential: int, bursts: int) -> dict[str, float]:
    from appliance.gateway.audit import AuditLog
    from appliance.gateway.audit_writer import AuditWriter

    log = AuditLog(directory)
    log.open()
    writer = AuditWriter(log)
    waits = []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(sequential):
        started = time.perf_counter()
        await writer.write(dict(RECORD))
        waits.append(time.perf_counter() - started)
    cpu_one = (time.process_time() - cpu) / sequential
    cpu = time.process_time()
    for _ in range(bursts):
        await asyncio.gather(*(writer.write(dict(RECORD)) for _ in range(32)))
    cpu_many = (time.process_time() - cpu) / (32 * bursts)
    await asyncio.get_running_loop().run_in_executor(None, writer.close)
    return {
        "wait_p50_us": statistics.median(waits) * 1e6,
        "wait_mean_us": statistics.fmean(waits) * 1e6,
        "cpu_one_us": cpu_one * 1e6,
        "cpu_many_us": cpu_many * 1e6,
        "wall_s": time.perf_counter() - wall,
    }


def child(source: str, scratch: str | None) -> None:
    """One measurement of ``source``'s audit code, printed as JSON."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
    sys.path.insert(0, source)
    with tempfile.TemporaryDirectory(dir=scratch) as directory:
        print(json.dumps(asyncio.run(_measure(Path(directory), 2000, 100))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="another checkout, measured in turns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where the logs go (its filesystem counts); default: TMPDIR")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir)
        return
    sources = {"this checkout": ROOT}
    if args.compare is not None:
        sources[f"{args.compare}"] = args.compare.resolve()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for _ in range(args.rounds):
        for name, source in sources.items():
            command = [sys.executable, __file__, "--child", str(source)]
            command += ["--dir", args.dir] if args.dir else []
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(output))
    where = args.dir or tempfile.gettempdir()
    print(f"audit writes in {where}, medians of {args.rounds} runs (2000 one at a time, then "
          "3200 as 100 bursts of 32):")  # fmt: skip
    print(f"  {'':28} wait p50   wait mean  CPU/record one  CPU/record 32 at a time")
    for name, results in runs.items():

        def median(key: str, results: list[dict[str, float]] = results) -> float:
            return statistics.median(r[key] for r in results)

        print(f"  {name[-28:]:28} {median('wait_p50_us'):6.0f} us  {median('wait_mean_us'):6.0f} us"
              f"  {median('cpu_one_us'):9.0f} us  {median('cpu_many_us'):11.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
