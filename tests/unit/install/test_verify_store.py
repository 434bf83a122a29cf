"""appliance verify's model checks, judged from evidence as the verify role gathers it."""

from __future__ import annotations

from appliance.install.verify import judge
from appliance.install.verify_models import Allowed, judge_routes, judge_served, judge_store

A, B, C = "a" * 64, "b" * 64, "c" * 64
ALLOWED = Allowed.of(
    [
        {"digest": f"sha256:{A}", "files": [{"sha256": A}]},
        {"digest": "sha256:" + "d" * 64, "files": [{"sha256": B}, {"sha256": C}]},
    ]
)


def test_a_store_without_problems_passes_with_its_count() -> None:
    (check,) = judge_store("depot-1", {"objects": 3, "problems": [], "error": ""})
    assert (check.name, check.passed, check.evidence) == (
        "object store: every object matches its digest",
        True,
        "3 objects read, each matches its sha256",
    )


def test_a_store_problem_or_an_unreadable_store_fails() -> None:
    problem = {"key": f"sha256/{A}", "problem": f"bytes have sha256 {B}"}
    (check,) = judge_store("depot-1", {"objects": 1, "problems": [problem], "error": ""})
    assert not check.passed and check.evidence == f"sha256/{A}: bytes have sha256 {B}"
    (check,) = judge_store("depot-1", {"objects": 0, "problems": [], "error": "HTTP 403"})
    assert not check.passed and check.evidence == "HTTP 403"
    assert judge_store("gpu-1", None) == []


def test_a_served_model_with_a_file_in_no_manifest_fails() -> None:
    served = [
        {"path": "/etc/appliance/llamacpp/tiny.sha256", "rc": 0, "output": [],
         "lines": [f"{A}  /var/lib/appliance/models/tiny/tiny.gguf"]},
        {"path": "/etc/appliance/llamacpp/rogue.sha256", "rc": 0, "output": [],
         "lines": [f"{'e' * 64}  /var/lib/appliance/models/rogue/rogue.gguf"]},
    ]  # fmt: skip
    checks = judge_served("gpu-1", served, ALLOWED)
    assert [(c.name, c.passed, c.evidence) for c in checks] == [
        ("served model in the manifest: /etc/appliance/llamacpp/tiny.sha256", True,
         "1 files, each in the manifest"),
        ("served model files match their digests: /etc/appliance/llamacpp/tiny.sha256", True,
         "sha256sum --check: all OK"),
        ("served model in the manifest: /etc/appliance/llamacpp/rogue.sha256", False,
         f"not in the bundle's or the site's manifest: {'e' * 64}"),
        ("served model files match their digests: /etc/appliance/llamacpp/rogue.sha256", True,
         "sha256sum --check: all OK"),
    ]  # fmt: skip


def test_a_served_model_whose_file_changed_fails_with_what_sha256sum_said() -> None:
    served = [
        {"path": "/etc/appliance/llamacpp/tiny.sha256", "rc": 1,
         "lines": [f"{A}  /var/lib/appliance/models/tiny/tiny.gguf"],
         "output": ["/var/lib/appliance/models/tiny/tiny.gguf: FAILED",
                    "sha256sum: WARNING: 1 computed checksum did NOT match"]},
    ]  # fmt: skip
    _, files = judge_served("gpu-1", served, ALLOWED)
    assert not files.passed
    assert files.evidence == (
        "/var/lib/appliance/models/tiny/tiny.gguf: FAILED | "
        "sha256sum: WARNING: 1 computed checksum did NOT match"
    )


def test_the_gateway_routes_only_to_models_in_a_manifest() -> None:
    gateway = {"models": [{"name": "tiny", "digest": f"sha256:{A}"},
                          {"name": "rogue", "digest": f"sha256:{'e' * 64}"}]}  # fmt: skip
    checks = judge_routes("depot-1", gateway, ALLOWED)
    assert [(c.name, c.passed) for c in checks] == [
        ("gateway model in the manifest: tiny", True),
        ("gateway model in the manifest: rogue", False),
    ]
    site = Allowed(frozenset({f"sha256:{'e' * 64}"}), frozenset())
    assert all(c.passed for c in judge_routes("depot-1", gateway, ALLOWED | site))


def test_judge_adds_the_model_checks_to_a_hosts_evidence() -> None:
    evidence = {
        "host": "depot-1", "egress": [], "internal": [], "counter": {"rc": 1, "stdout": ""},
        "firewall_unit": "active", "sources": [], "legacy_sources_bytes": 0,
        "store": {"objects": 2, "problems": [], "error": ""},
        "served_models": [{"path": "/etc/appliance/llamacpp/tiny.sha256", "rc": 0,
                           "output": [], "lines": [f"{A}  /m/tiny/tiny.gguf"]}],
    }  # fmt: skip
    names = [c.name for c in judge(evidence, False, ALLOWED)]
    assert "object store: every object matches its digest" in names
    assert "served model in the manifest: /etc/appliance/llamacpp/tiny.sha256" in names
    # Without the manifests' digests (an older caller), the served models are not judged.
    assert not any(n.startswith("served model") for n in (c.name for c in judge(evidence)))


def test_an_egress_probe_passes_only_on_no_answer() -> None:
    """The host's probes come from appliance_runtime_egress: reached true fails, false passes,
    and null (the probe could not run, so it proves nothing) fails too."""
    url = "http://198.19.255.10/"
    evidence = {
        "host": "depot-1", "internal": [], "counter": {"rc": 1, "stdout": ""},
        "firewall_unit": "active", "sources": [], "legacy_sources_bytes": 0,
        "egress": [
            {"target": url, "reached": False, "detail": "no answer (timed out)"},
            {"target": url + "a", "reached": True, "detail": "answered HTTP 200"},
            {"target": url + "b", "reached": None, "detail": "[Errno 2] python3"},
        ],
    }  # fmt: skip
    checks = {c.name: c for c in judge(evidence) if c.name.startswith("egress blocked")}
    assert checks[f"egress blocked: {url}"].passed
    assert checks[f"egress blocked: {url}"].evidence == "no answer (timed out)"
    assert not checks[f"egress blocked: {url}a"].passed
    assert checks[f"egress blocked: {url}a"].evidence == "answered HTTP 200"
    assert not checks[f"egress blocked: {url}b"].passed
    assert checks[f"egress blocked: {url}b"].evidence.startswith("the probe could not run")
