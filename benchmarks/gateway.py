"""appliance-gateway overhead: the same requests sent to the runtime directly and through the
gateway, in one run. Prints added p50/p99 latency (goal: p50 <= 2 ms) and the throughput
ratio (goal: >= 95%), non-streaming and streaming. Asserts nothing.

Runtimes: the real llama.cpp server (xllamacpp, through the llamacpp role's launcher) serving
the tiny GGUF model from examples/tiny_model.py, and the stand-in backend
(tests/fixtures/openai_backend.py), whose near-zero work isolates the gateway's own cost.
Everything runs on this machine, on 127.0.0.1; the load generator, the gateway and the runtime
share its cores, so the throughput ratio also counts the gateway's CPU taken from the runtime.

    .venv/bin/python benchmarks/gateway.py [--requests 300] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.gateway.keys import add_key  # noqa: E402
from tests.fixtures.servers import LAUNCHER, free_port, wait_for  # noqa: E402

BIN = Path(sys.executable).parent


def start(command: list[str], log: Path, health: str, accept: set[int]) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    wait_for(health, process, accept, log)
    return process


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> float:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as answer:
        async for _ in answer.content.iter_any():
            pass
        if answer.status != 200:
            raise RuntimeError(f"{url}: {answer.status}")
    return time.perf_counter() - started


async def latency(
    session: aiohttp.ClientSession,
    targets: dict[str, tuple[str, dict[str, str]]],
    body: bytes,
    n: int,
) -> dict[str, list[float]]:
    """Sequential calls, alternating targets so drift hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(n):
        for name, (url, headers) in targets.items():
            times[name].append(await one(session, url, body, headers))
    return times


async def throughput(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, n: int, c: int
) -> float:
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            queue.pop()
            await one(session, url, body, headers)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return n / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    label: str, backend: str, gateway: str, key: str, body: dict[str, Any], n: int, c: int
) -> None:
    data = json.dumps(body).encode()
    plain = {"Content-Type": "application/json"}
    # llama.cpp closes the connection after each stream: say so, or the next call fails.
    direct = {**plain, "Connection": "close"} if body.get("stream") else plain
    targets = {
        "direct": (f"{backend}/v1/completions", direct),
        "gateway": (f"{gateway}/v1/completions", {**plain, "Authorization": f"Bearer {key}"}),
    }
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        await latency(session, targets, data, 20)  # warm up connections and caches
        times = await latency(session, targets, data, n)
        rates = {}
        for name, (url, headers) in targets.items():
            rates[name] = await throughput(session, url, headers, data, n, c)
    direct, via = times["direct"], times["gateway"]
    added50 = (statistics.median(via) - statistics.median(direct)) * 1000
    added99 = (pct(via, 0.99) - pct(direct, 0.99)) * 1000
    ratio = rates["gateway"] / rates["direct"]
    print(f"{label}")
    print(
        f"  latency  direct p50 {statistics.median(direct) * 1000:7.2f} ms  p99 "
        f"{pct(direct, 0.99) * 1000:7.2f} ms | gateway p50 {statistics.median(via) * 1000:7.2f} ms"
        f"  p99 {pct(via, 0.99) * 1000:7.2f} ms"
    )
    print(
        f"  added    p50 {added50:+.2f} ms (goal <= 2)  p99 {added99:+.2f} ms"
        f"  [{n} sequential calls each]"
    )
    print(
        f"  rate     direct {rates['direct']:7.1f}/s  gateway {rates['gateway']:7.1f}/s  "
        f"ratio {ratio:.1%} (goal >= 95%)  [{n} calls, {c} at a time]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    # llama.cpp's compute threads spin while they wait; on a small machine with every thread
    # taken they starve the gateway's one Python thread, and the ratio measures that instead.
    parser.add_argument("--runtime-threads", type=int, default=1)
    args = parser.parse_args()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = root / "tiny.gguf"
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "gguf", str(model)],
            check=True,
        )
        llama_port, stand_in_port, gateway_port = free_port(), free_port(), free_port()
        llama, stand_in = f"http://127.0.0.1:{llama_port}", f"http://127.0.0.1:{stand_in_port}"
        try:
            runtime = [sys.executable, str(LAUNCHER), "--model", str(model), "--alias",
                       "tiny-llama", "--port", str(llama_port), "--ctx-size", "2048",
                       "--parallel", str(args.concurrency),
                       "--threads", str(args.runtime_threads)]  # fmt: skip
            processes.append(start(runtime, root / "llama.log", llama + "/health", {200}))
            fixture = "tests.fixtures.openai_backend"
            backend = [sys.executable, "-m", fixture, "--port", str(stand_in_port)]
            processes.append(
                start(backend, root / "stand-in.log", stand_in + "/api/version", {200})
            )
            digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
            config = {
                "listen": {"host": "127.0.0.1", "port": gateway_port},
                "keys_file": str(root / "keys.json"),
                "audit": {"dir": str(root / "audit")},
                "models": [
                    {"name": "tiny-llama", "digest": digest, "backend": llama},
                    {
                        "name": "stand-in",
                        "digest": "sha256:" + "5" * 64,
                        "backend": stand_in,
                        "health_path": "/api/version",
                    },
                ],
            }
            (root / "config.json").write_text(json.dumps(config))
            key, _ = add_key(root / "keys.json", "bench", ["*"])
            gateway = f"http://127.0.0.1:{gateway_port}"
            processes.append(start(
                [str(BIN / "appliance-gateway"), "--config", str(root / "config.json")],
                root / "gateway.log", gateway + "/health", {200},
            ))  # fmt: skip
            n, c, tokens = args.requests, args.concurrency, args.max_tokens
            for model_name, backend in (("tiny-llama", llama), ("stand-in", stand_in)):
                for stream in (False, True):
                    body = {"model": model_name, "prompt": "the appliance answers",
                            "max_tokens": tokens, "ignore_eos": True, "temperature": 0,
                            "stream": stream}  # fmt: skip
                    if stream:
                        body["stream_options"] = {"include_usage": True}  # same bytes both ways
                    kind = "streaming" if stream else "non-streaming"
                    label = f"{model_name}, {kind}, {tokens} tokens"
                    asyncio.run(measure(label, backend, gateway, key, body, n, c))
            records = sum(1 for _ in (root / "audit" / "audit.jsonl").open())
            print(f"audit records written: {records}")
        except Exception:
            for log in sorted(root.glob("*.log")):
                print(f"--- {log.name}", *log.read_text().splitlines()[-15:], sep="\n")
            raise
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
