"""The egress probes run in one background job: a job that failed, timed out or never started
leaves no probe result, and that proves nothing, so it fails verify."""

from __future__ import annotations

from typing import Any

from appliance.install.verify import judge


def evidence(**overrides: Any) -> dict[str, Any]:
    return {
        "host": "depot-1", "egress": [], "internal": [], "counter": {"rc": 1, "stdout": ""},
        "firewall_unit": "active", "sources": [], "legacy_sources_bytes": 0,
        **overrides,
    }  # fmt: skip


def test_no_egress_result_fails_verify() -> None:
    checks = [c for c in judge(evidence(egress_error="async task did not complete within the "
                                        "requested time")) if "egress" in c.name]  # fmt: skip
    assert [(c.name, c.passed) for c in checks] == [("egress probes ran", False)]
    assert "did not complete within the requested time" in checks[0].evidence


def test_no_egress_result_without_the_jobs_message_still_fails() -> None:
    checks = [c for c in judge(evidence()) if c.name == "egress probes ran"]
    assert [c.passed for c in checks] == [False]
    assert "no egress probe result" in checks[0].evidence


def test_probe_results_make_no_extra_check() -> None:
    probe = {"target": "http://198.19.255.10/", "reached": False, "detail": "no answer"}
    names = [c.name for c in judge(evidence(egress=[probe]))]
    assert "egress probes ran" not in names
    assert "egress blocked: http://198.19.255.10/" in names
