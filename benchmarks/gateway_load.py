"""The load benchmarks/gateway.py sends: one call read to its end, calls one after another
(alternating targets), and calls ``c`` at a time; with the percentile and the unit it prints."""

from __future__ import annotations

import asyncio
import time

import aiohttp

Target = tuple[str, dict[str, str]]


async def one(session: aiohttp.ClientSession, target: Target, body: bytes) -> float:
    url, headers = target
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as answer:
        async for _ in answer.content.iter_any():
            pass
        if answer.status != 200:
            raise RuntimeError(f"{url}: {answer.status}")
    return time.perf_counter() - started


async def latency(
    session: aiohttp.ClientSession, targets: dict[str, Target], body: bytes, n: int
) -> dict[str, list[float]]:
    """Sequential calls, alternating targets (the gateways in reverse every other call) so
    drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    first, *others = targets
    for number in range(n):
        for name in [first, *(reversed(others) if number % 2 else others)]:
            times[name].append(await one(session, targets[name], body))
    return times


async def throughput(
    session: aiohttp.ClientSession, target: Target, body: bytes, n: int, c: int
) -> tuple[float, list[float]]:
    """Calls per second with ``c`` at a time, and each call's time."""
    queue = list(range(n))
    times: list[float] = []

    async def worker() -> None:
        while queue:
            queue.pop()
            times.append(await one(session, target, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return n / (time.perf_counter() - started), times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"
