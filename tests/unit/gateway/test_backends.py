"""The gateway's backend connections (backends.py): kept alive, and a backend that drops them
after a stream (as llama.cpp's server does) still answers every call."""

from __future__ import annotations

import asyncio

from appliance.gateway.backends import Backends
from tests.fixtures.closing_backend import closing_backend
from tests.fixtures.openai_backend import serve_in_thread
from tests.fixtures.servers import free_port

BODY = b'{"model": "m", "prompt": "x", "max_tokens": 2, "stream": true}'


async def streams(base: str, rounds: list[int]) -> tuple[list[int], set[str]]:
    """Streamed calls in rounds of so many at once; their statuses, and the backends the
    gateway found to drop connections."""
    backends = Backends(timeout_s=10)
    await backends.start()
    statuses: list[int] = []

    async def one() -> None:
        async with await backends.post(base, "/v1/completions", BODY, stream=True) as answer:
            await answer.read()
            statuses.append(answer.status)

    try:
        for at_once in rounds:
            await asyncio.gather(*(one() for _ in range(at_once)))
    finally:
        await backends.close()
    return statuses, backends.closes_after_streams


def test_a_backend_that_drops_connections_after_streams_answers_every_call() -> None:
    with closing_backend() as base:
        # Eight connections in the pool, each dropped once used again: a call asked again on
        # another pooled one would fail too.
        statuses, closers = asyncio.run(streams(base, [8, 1, 1, 1, 1]))
    assert statuses == [200] * 12
    assert closers == {base}  # from then on each stream to it has a connection of its own


def test_a_backend_that_keeps_connections_keeps_them_for_streams() -> None:
    with serve_in_thread(free_port()) as base:
        statuses, closers = asyncio.run(streams(base, [4, 4, 4]))
    assert statuses == [200] * 12
    assert closers == set()
