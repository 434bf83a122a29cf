"""Usage from the audit log (``appliance audit usage``) and /metrics by key, against the real
gateway app: calls made are counted from the records it wrote, rotated files included."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import AuditError
from appliance.gateway.audit import AuditLog, rotated_name
from appliance.gateway.metrics import MAX_KEYS, Metrics
from appliance.gateway.usage import parse_time, percentile, summarise
from tests.fixtures.cli import run_cli
from tests.fixtures.gateway import gateway_in_thread


def body(max_tokens: int, **extra: Any) -> bytes:
    return json.dumps(
        {"model": "stand-in", "prompt": "one two", "max_tokens": max_tokens, **extra}
    ).encode()


TOKEN = "metrics-scraper-token-1"  # noqa: S105 - a test token for a loopback gateway


def test_only_an_operator_or_the_metrics_token_sees_the_series_by_key(tmp_path: Path) -> None:
    token_sha256 = hashlib.sha256(TOKEN.encode()).hexdigest()
    with gateway_in_thread(
        tmp_path, extra_keys={"user": ["stand-in"]}, metrics_token_sha256=token_sha256
    ) as gateway:
        for key in (gateway.key, gateway.keys["user"]):
            reply = gateway.post("/v1/completions", body(1), key=key)
            assert reply is not None and reply.status == 200
        series = "appliance_gateway_key_requests_total{key="
        hidden = "# Series by API key: scrape with an operator key or the metrics token."
        for who in (None, gateway.keys["user"], "metrics-scraper-token-2", TOKEN[:-1]):
            page = gateway.get("/metrics", who).body.decode()
            assert series not in page and gateway.key_id not in page, who
            assert hidden in page.splitlines()
            # The rest of the page is everyone's.
            assert 'appliance_gateway_requests_total{model="stand-in",status="200"} 2' in page
        for who in (gateway.key, TOKEN):
            page = gateway.get("/metrics", who).body.decode()
            assert f'{series}"{gateway.key_id}",status="200"}} 1' in page, who
            assert hidden not in page
            assert page.count(series) == 2  # the operator's and the user's


def test_usage_and_metrics_from_real_calls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # 1 MiB files by default: 4 KiB ones make the gateway rotate while these calls are made.
    with gateway_in_thread(tmp_path, audit={"max_bytes": 4096}) as gateway:
        for tokens in (1, 2, 3, 4):
            reply = gateway.post("/v1/completions", body(tokens), key=gateway.key)
            assert reply is not None and reply.status == 200
        failed = gateway.post("/v1/completions", body(1, x_status=500), key=gateway.key)
        assert failed is not None and failed.status == 500
        unknown = gateway.post("/v1/completions", body(1), key="apl_00000000_nope")
        assert unknown is not None and unknown.status == 401
        metrics = gateway.get("/metrics", gateway.key).body.decode()  # an operator's key
        records = gateway.records()
    assert any(path.name == rotated_name(0) for path in (tmp_path / "audit").iterdir())
    key = gateway.key_id
    assert f'appliance_gateway_key_requests_total{{key="{key}",status="200"}} 4' in metrics
    assert f'appliance_gateway_key_requests_total{{key="{key}",status="500"}} 1' in metrics
    assert f'appliance_gateway_key_tokens_total{{key="{key}",kind="completion"}} 10' in metrics
    assert gateway.key.split("_", 2)[2] not in metrics  # never the secret, "_" and all
    assert 'key="-"' not in metrics and "nope" not in metrics  # unknown keys make no series

    usage = summarise(tmp_path / "audit", "key")
    calls = [r for r in records if "event" not in r]
    assert usage["total"]["calls"] == len(calls) == 6
    assert usage["last_seq"] == records[-1]["seq"]
    rows = {row["name"]: row for row in usage["groups"]}
    assert sorted(rows) == ["(none)", key]
    mine = rows[key]
    assert (mine["calls"], mine["errors"], mine["completion_tokens"]) == (5, 1, 10)
    assert mine["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in calls)
    latencies = sorted(r["latency_ms"] for r in calls if r["key_id"] == key)
    assert (mine["latency_ms_p50"], mine["latency_ms_p95"]) == (latencies[2], latencies[4])
    assert (rows["(none)"]["calls"], rows["(none)"]["errors"]) == (1, 1)

    code, out, err = run_cli(
        capsys, "--json", "audit", "usage", "--dir", str(tmp_path / "audit"), "--by", "model"
    )
    assert (code, err) == (0, "")
    by_model = {row["name"]: row["calls"] for row in json.loads(out)["groups"]}
    assert by_model == {"stand-in": 6}


def fill(directory: Path, records: list[dict[str, Any]]) -> None:
    log = AuditLog(directory, max_bytes=4096)
    log.open()
    for record in records:
        log.append(record)
    log.close()


def call(when: str, key: str | None, status: int, latency: float, tokens: int) -> dict[str, Any]:
    return {
        "time": when, "request_id": when, "key_id": key, "path": "/v1/chat/completions",
        "model": "m", "status": status, "prompt_tokens": tokens, "completion_tokens": tokens,
        "latency_ms": latency,
    }  # fmt: skip


def test_since_until_and_event_records(tmp_path: Path) -> None:
    fill(
        tmp_path,
        [
            call("2026-11-01T10:00:00.000Z", "k-aaaaaaaa", 200, 10.0, 1),
            {"event": "key_created", "time": "2026-11-01T11:00:00.000Z", "key_id": "k-aaaaaaaa"},
            call("2026-11-02T10:00:00.000Z", "k-aaaaaaaa", 429, 1.0, 0),
            call("2026-11-03T10:00:00.000Z", "k-bbbbbbbb", 200, 30.0, 7),
        ],
    )
    since, until = parse_time("2026-11-02"), parse_time("2026-11-03T10:00Z")
    usage = summarise(tmp_path, "key", since, until)
    assert usage["groups"] == [
        {"name": "k-aaaaaaaa", "calls": 1, "errors": 1, "prompt_tokens": 0,
         "completion_tokens": 0, "latency_ms_p50": 1.0, "latency_ms_p95": 1.0},
    ]  # fmt: skip
    assert summarise(tmp_path, "key")["total"]["calls"] == 3


def test_times_and_percentiles() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_time("24h", now) == datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert parse_time("2026-11-30T14:00:00+01:00") == datetime(2026, 11, 30, 13, tzinfo=UTC)
    with pytest.raises(ValueError, match="is not a time"):
        parse_time("yesterday")
    from array import array

    assert percentile(array("d", [5.0, 1.0, 3.0, 2.0, 4.0]), 0.5) == 3.0
    assert percentile(array("d", range(1, 101)), 0.95) == 95.0
    assert percentile(array("d"), 0.5) is None


def test_usage_table_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fill(tmp_path / "a", [call("2026-11-01T10:00:00.000Z", "k-aaaaaaaa", 200, 12.0, 3)])
    code, out, err = run_cli(capsys, "audit", "usage", "--dir", str(tmp_path / "a"))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{tmp_path / 'a'}: seq 0..0 in 1 file(s), calls from the first record .. now",
        "key          calls   errors   prompt tok   completion tok   p50 ms   p95 ms",
        "─" * 75,
        "k-aaaaaaaa       1        0            3                3     12.0     12.0",
        "total            1        0            3                3     12.0     12.0",
    ]
    code, _, err = run_cli(capsys, "audit", "usage", "--dir", str(tmp_path / "a"), "--since", "x")
    assert code == 2 and "'x' is not a time" in err
    code, _, err = run_cli(capsys, "audit", "usage", "--dir", str(tmp_path / "none"))
    assert (code, err.splitlines()[0]) == (34, f"Error: {tmp_path / 'none'} is not an audit "
                                               "directory")  # fmt: skip
    (tmp_path / "a" / "audit.jsonl").write_text("{broken\n")
    with pytest.raises(AuditError, match=r"audit\.jsonl:1 is not a JSON record"):
        summarise(tmp_path / "a", "key")


def test_key_series_are_bounded() -> None:
    metrics = Metrics()
    for number in range(MAX_KEYS + 5):
        metrics.observe("m", 200, 0.01, 1, 1, f"k-{number:08x}")
    page = metrics.render([], by_key=True)
    assert page.count("appliance_gateway_key_requests_total{") == MAX_KEYS + 1
    assert 'appliance_gateway_key_requests_total{key="other",status="200"} 5' in page
