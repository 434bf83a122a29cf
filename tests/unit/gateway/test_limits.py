"""Per-key limits: token buckets and the limiter, on an injected clock (no sleeping)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from appliance.gateway.keys import KeyRecord, Limits, new_key
from appliance.gateway.limits import (
    Limiter,
    LimitHit,
    TokenBucket,
    charge,
    estimate_prompt_tokens,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(**limits: int) -> KeyRecord:
    return new_key("k", ["*"])[1].model_copy(update={"limits": Limits(**limits)})


@dataclass(eq=False)  # told apart by identity, as the gateway's record.Call is
class Usage:
    """What the limiter reads of a call: the usage its backend reported."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_estimated: int | None = None


def call(prompt: int | None = None, completion: int | None = None) -> Usage:
    return Usage(prompt, completion)


def test_bucket_starts_full_refills_at_its_rate_and_never_above_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(60, clock)  # one a second
    assert bucket.available() == 60
    bucket.take(60)
    assert bucket.wait_s(1) == pytest.approx(1.0)
    clock.now += 0.5
    assert bucket.available() == pytest.approx(0.5)
    assert bucket.wait_s(1) == pytest.approx(0.5)
    clock.now += 3600
    assert bucket.available() == 60


def test_bucket_debt_is_paid_off_at_the_steady_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(600, clock)  # ten a second
    bucket.take(1600)  # one call used 1000 more than the whole minute
    assert bucket.available() == -1000
    assert bucket.wait_s(0) == pytest.approx(100.0)
    clock.now += 100
    assert bucket.available() == pytest.approx(0.0)


def test_resize_keeps_the_level_capped_to_the_new_size() -> None:
    clock = Clock()
    bucket = TokenBucket(100, clock)
    bucket.take(10)
    bucket.resize(50)
    assert (bucket.capacity, bucket.available()) == (50, 50)
    bucket.resize(1000)
    assert bucket.available() == 50  # growing does not hand out a free burst
    assert bucket.rate == pytest.approx(1000 / 60)


def test_a_key_without_limits_is_never_refused_nor_tracked() -> None:
    limiter = Limiter(Clock())
    unlimited = key()
    calls = [call() for _ in range(1000)]
    assert all(limiter.admit(unlimited, c) is None for c in calls)
    assert limiter.in_flight(unlimited.id) == 0


def test_rpm_refuses_the_call_past_the_minute_and_says_when_to_come_back() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limited = key(rpm=3)
    for _ in range(3):
        made = call()
        assert limiter.admit(limited, made) is None
        limiter.finish(made)
    hit = limiter.admit(limited, call())
    assert isinstance(hit, LimitHit)
    assert (hit.limit, hit.allowed, hit.retry_after) == ("rpm", 3, 20)  # a request per 20 s
    assert hit.headers() == {
        "Retry-After": "20",
        "retry-after-ms": "20000",
        "x-should-retry": "true",
    }
    assert "requests per minute: limit 3" in hit.message
    assert hit.audit_error == "rate_limit_exceeded: rpm limit 3 reached; retry after 20 s"
    clock.now += 20
    assert limiter.admit(limited, call()) is None
    assert limiter.hits == {(limited.id, "rpm"): 1}


def test_a_refused_call_uses_up_nothing() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limited = key(rpm=60, concurrent=1)
    first = call()
    assert limiter.admit(limited, first) is None
    for _ in range(100):  # refused for concurrency: the request bucket is not drawn down
        refused = limiter.admit(limited, call())
        assert refused is not None and refused.limit == "concurrent"
    limiter.finish(first)
    assert limiter.admit(limited, call()) is None


def test_tpm_charges_reported_usage_at_the_end_and_refuses_while_in_debt() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limited = key(tpm=600)  # ten a second
    big = call()
    assert limiter.admit(limited, big) is None
    # In flight, a call is not charged yet: another is admitted.
    other = call(prompt=10, completion=20)
    assert limiter.admit(limited, other) is None
    limiter.finish(other)
    big.prompt_tokens, big.completion_tokens = 400, 300
    limiter.finish(big)  # 730 used of 600: 130 in debt
    hit = limiter.admit(limited, call())
    assert hit is not None and (hit.limit, hit.allowed) == ("tpm", 600)
    assert hit.retry_after_s == pytest.approx(13.0)
    assert hit.retry_after == 13
    clock.now += 13
    assert limiter.admit(limited, call()) is None


def test_a_call_without_reported_usage_is_charged_nothing() -> None:
    limiter = Limiter(Clock())
    limited = key(tpm=1)
    for _ in range(5):
        made = call()
        assert limiter.admit(limited, made) is None
        limiter.finish(made)


def test_a_cut_off_call_is_charged_its_prompt_estimate_unless_usage_says() -> None:
    limiter = Limiter(Clock())
    limited = key(tpm=100)
    cut = Usage(None, 3, estimate_prompt_tokens(401))  # 401 bytes: 101 tokens
    assert estimate_prompt_tokens(401) == 101 and estimate_prompt_tokens(0) == 0
    assert limiter.admit(limited, cut) is None
    limiter.finish(cut)
    hit = limiter.admit(limited, call())  # 104 taken of 100: in debt
    assert hit is not None and hit.limit == "tpm"
    # Reported usage wins over an estimate.
    assert charge(Usage(7, 2, 500)) == 9 and charge(Usage(None, 2, 500)) == 502


def test_concurrency_counts_calls_in_flight_and_frees_them_at_the_end() -> None:
    limiter = Limiter(Clock())
    limited = key(concurrent=2)
    first, second = call(), call()
    assert limiter.admit(limited, first) is None and limiter.admit(limited, second) is None
    hit = limiter.admit(limited, call())
    assert hit is not None and (hit.limit, hit.retry_after) == ("concurrent", 1)
    assert limiter.in_flight(limited.id) == 2
    limiter.finish(first)
    limiter.finish(first)  # finishing twice frees one slot only
    assert limiter.in_flight(limited.id) == 1
    assert limiter.admit(limited, call()) is None


def test_changed_limits_apply_to_the_next_call_keeping_what_was_used() -> None:
    limiter = Limiter(Clock())  # the clock stands still: nothing refills
    limited = key(rpm=10)
    for _ in range(5):
        made = call()
        assert limiter.admit(limited, made) is None
        limiter.finish(made)
    # Five of ten left; the new size is four, so four are left, not a fresh minute's worth.
    tighter = limited.model_copy(update={"limits": Limits(rpm=4)})
    for _ in range(4):
        assert limiter.admit(tighter, call()) is None
    refused = limiter.admit(tighter, call())
    assert refused is not None and (refused.limit, refused.allowed) == ("rpm", 4)
    unlimited = limited.model_copy(update={"limits": Limits()})
    assert limiter.admit(unlimited, call()) is None
