"""Per-key limits: requests per minute, tokens per minute, calls in flight.

Requests and tokens are token buckets that hold a minute's allowance and refill continuously
(``rpm / 60`` per second), so a key may burst its whole minute at once and then goes at the
steady rate. A call is admitted only when every limit of its key allows it; a refused call
uses up nothing.

Tokens are charged when a call finishes, from the usage its backend reported (prompt plus
completion tokens; a stream's from its final usage chunk). How many tokens a call will use is
unknown when it starts, so the token limit is checked, not reserved, on admission: a call is
admitted while the key's token bucket is not in debt, and its tokens are taken when it ends,
which may leave the bucket in debt; the key then waits until the debt is paid off at its
steady rate. Calls in flight are therefore not charged until they end: a key can overshoot
by what its concurrent calls use (the ``concurrent`` limit bounds that). A stream cut off
before its backend reported usage (the client left, the backend broke) is charged one
completion token per event with generated text the client was sent (relay.py), and for its
prompt by an estimate from the request body's size (one token per ``BYTES_PER_TOKEN`` bytes,
OpenAI's rule of thumb for English text; JSON framing makes it an over-estimate): a key cannot
have large prompts prefilled for free by leaving before the usage. The record keeps
``prompt_tokens`` null and gives ``prompt_tokens_estimated``.

A refused call (429) uses up nothing, as in LiteLLM's proxy (its parallel-request limiter
raises 429 before it increments the minute's request count); vLLM's server has no limits. A
client that ignores ``Retry-After`` and asks again at once is refused again at no cost to the
backend, and each refusal is still audited.

The state lives in the memory of one process: the gateway's, or with several workers the
owner's (supervisor.py), which admits and charges the calls of every worker over their channels
(``LimitGate`` is what a worker holds), so a key's limits hold across workers. It starts full at
each start, and a limit changed in the keys file applies from the next call (the bucket keeps its
level, capped to the new size).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.gateway.keys import KeyRecord, Limits

Clock = Callable[[], float]


class LimitGate(Protocol):
    """What the request path holds: this process's Limiter, or a worker's link to the owner's."""

    async def acquire(self, key: KeyRecord, call: Metered) -> LimitHit | None: ...

    def finish(self, call: Metered) -> None: ...


class Metered(Protocol):
    """A call as the limiter sees it (record.Call): told apart by identity, charged by usage."""

    prompt_tokens: int | None
    prompt_tokens_estimated: int | None
    completion_tokens: int | None


BYTES_PER_TOKEN = 4


def estimate_prompt_tokens(body_bytes: int) -> int:
    """A prompt's tokens when its backend never said (a stream cut off before its usage)."""
    return -(-body_bytes // BYTES_PER_TOKEN)


def charge(call: Metered) -> int:
    """The tokens a finished call costs its key: as reported, else as estimated."""
    prompt = call.prompt_tokens if call.prompt_tokens is not None else call.prompt_tokens_estimated
    return (prompt or 0) + (call.completion_tokens or 0)


class Limited(Protocol):
    """A key as the limiter sees it: its id and its limits (a KeyRecord, or a worker's word)."""

    @property
    def id(self) -> str: ...

    @property
    def limits(self) -> Limits: ...


_NAMES = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrent": "concurrent requests",
}


class TokenBucket:
    """``per_minute`` units, refilled continuously; may go below zero (a debt)."""

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.clock = clock
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self) -> float:
        self._refill()
        return self.level

    def wait_s(self, need: float) -> float:
        """Seconds until ``need`` units are there (0 when they are now)."""
        self._refill()
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def resize(self, per_minute: int) -> None:
        self._refill()
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.level = min(self.level, self.capacity)


@dataclass(frozen=True)
class LimitHit:
    """A refused call: which limit, its value, and when to try again."""

    key_id: str
    limit: str  # rpm, tpm or concurrent
    allowed: int
    retry_after_s: float

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.retry_after_s))

    @property
    def message(self) -> str:
        return (
            f"Rate limit reached for key {self.key_id} on {_NAMES[self.limit]}: limit "
            f"{self.allowed}. Please try again in {self.retry_after}s."
        )

    @property
    def audit_error(self) -> str:
        return (
            f"rate_limit_exceeded: {self.limit} limit {self.allowed} reached; "
            f"retry after {self.retry_after} s"
        )

    def headers(self) -> dict[str, str]:
        # The openai SDKs read retry-after-ms first, then Retry-After; 429 is worth retrying.
        return {
            "Retry-After": str(self.retry_after),
            "retry-after-ms": str(max(1, math.ceil(self.retry_after_s * 1000))),
            "x-should-retry": "true",
        }


class _KeyState:
    def __init__(self, limits: Limits, clock: Clock) -> None:
        self.limits = limits
        self.clock = clock
        self.requests = TokenBucket(limits.rpm, clock) if limits.rpm else None
        self.tokens = TokenBucket(limits.tpm, clock) if limits.tpm else None
        self.in_flight = 0

    def follow(self, limits: Limits) -> None:
        """Take on changed limits, keeping what the key has used."""
        if limits == self.limits:
            return
        self.requests = _resized(self.requests, limits.rpm, self.clock)
        self.tokens = _resized(self.tokens, limits.tpm, self.clock)
        self.limits = limits


def _resized(
    bucket: TokenBucket | None, per_minute: int | None, clock: Clock
) -> TokenBucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return TokenBucket(per_minute, clock)
    bucket.resize(per_minute)
    return bucket


class Limiter:
    """Admits calls per key and charges them when they end (``admit`` then ``finish``)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._admitted: dict[Metered, _KeyState] = {}
        self.hits: dict[tuple[str, str], int] = {}

    async def acquire(self, key: KeyRecord, call: Metered) -> LimitHit | None:
        return self.admit(key, call)

    def admit(self, key: KeyRecord | Limited, call: Metered) -> LimitHit | None:
        """None and the call counted in flight, or the limit that refuses it."""
        limits = key.limits
        state = self._keys.get(key.id)
        if state is None:
            if limits == Limits():
                return None  # no limits: nothing to keep
            state = self._keys[key.id] = _KeyState(limits, self.clock)
        state.follow(limits)
        hit = self._check(key.id, state)
        if hit is not None:
            self.hits[(key.id, hit.limit)] = self.hits.get((key.id, hit.limit), 0) + 1
            return hit
        if state.requests is not None:
            state.requests.take(1)
        state.in_flight += 1
        self._admitted[call] = state
        return None

    @staticmethod
    def _check(key_id: str, state: _KeyState) -> LimitHit | None:
        limits = state.limits
        if limits.concurrent is not None and state.in_flight >= limits.concurrent:
            # No telling when a call in flight ends: a second is a polite guess.
            return LimitHit(key_id, "concurrent", limits.concurrent, 1.0)
        if state.requests is not None and limits.rpm is not None:
            wait = state.requests.wait_s(1)
            if wait > 0:
                return LimitHit(key_id, "rpm", limits.rpm, wait)
        if state.tokens is not None and limits.tpm is not None:
            # Out of debt is enough: a call's size is known only at its end (see above).
            wait = state.tokens.wait_s(0)
            if wait > 0:
                return LimitHit(key_id, "tpm", limits.tpm, wait)
        return None

    def finish(self, call: Metered) -> None:
        """The call ended: out of flight, and its reported tokens charged."""
        state = self._admitted.pop(call, None)
        if state is None:
            return
        state.in_flight -= 1
        if state.tokens is not None:
            state.tokens.take(charge(call))

    def in_flight(self, key_id: str) -> int:
        state = self._keys.get(key_id)
        return state.in_flight if state else 0
