"""appliance verify: gather evidence on every host through the bundle's verify role, then judge
it here, so the report lists every check, passed or failed, with what was seen."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.errors import InstallError, Problem, VerifyFailedError
from appliance.install import new_run_dir, runner_env
from appliance.install.inventory import load_inventory, single_box
from appliance.runner import TaskEvent, run_playbook


@dataclass(frozen=True)
class Check:
    host: str
    name: str
    passed: bool
    evidence: str


@dataclass(frozen=True)
class VerifyOptions:
    egress_targets: tuple[str, ...]
    internal_targets: tuple[str, ...] = ()
    inventory: Path | None = None
    root: Path = Path("/opt/appliance")


def verify(
    options: VerifyOptions, on_event: Callable[[TaskEvent], None] = lambda _e: None
) -> tuple[list[Check], Path]:
    """Run the checks; returns them and the path of the JSON report."""
    if not options.egress_targets:
        raise InstallError(
            "name at least one address outside the boundary to probe",
            hint="pass --egress-target URL (an address you own, outside the internal networks); "
            "a probe that proves nothing is not evidence",
        )
    release = (options.root / "current").resolve()
    project = release.with_name(f"{release.name}.ansible")
    if not project.is_dir():
        raise InstallError(
            f"no installed release under {options.root}",
            hint="run appliance install first (verify uses the installed release's playbooks)",
        )
    run_dir = new_run_dir(options.root)
    evidence_dir = run_dir / "evidence"
    evidence_dir.mkdir(mode=0o700)
    inventory = load_inventory(
        options.inventory or single_box(run_dir / "single-box.yml", sys.executable)
    )
    result = run_playbook(
        data_dir=run_dir,
        project_dir=project,
        playbook="playbooks/verify.yml",
        inventory=inventory.path.resolve(),
        extravars={
            "appliance_verify_egress_targets": list(options.egress_targets),
            "appliance_verify_internal_targets": list(options.internal_targets),
            "appliance_report_dir": str(evidence_dir),
        },
        envvars=runner_env(project),
        on_event=on_event,
    )
    checks: list[Check] = []
    for host in inventory.hosts:
        path = evidence_dir / f"{host}.json"
        if not path.is_file():
            failure = next((f.message for f in result.failures if f.host == host), "no evidence")
            checks.append(Check(host, "evidence gathered", False, failure))
            continue
        checks.extend(judge(json.loads(path.read_text())))
    report = run_dir / "verify-report.json"
    report.write_text(json.dumps([asdict(c) for c in checks], indent=2) + "\n")
    return checks, report


def judge(evidence: dict[str, Any]) -> list[Check]:
    host = evidence["host"]
    checks = []
    for probe in evidence["egress"]:
        reached = int(probe.get("status", -1)) != -1
        seen = (
            f"answered HTTP {probe.get('status')}"
            if reached
            else f"no answer ({probe.get('msg', '').strip() or 'timed out'})"
        )
        checks.append(Check(host, f"egress blocked: {probe['item']}", not reached, seen))
    for probe in evidence["internal"]:
        reached = int(probe.get("status", -1)) != -1
        seen = f"answered HTTP {probe.get('status')}" if reached else probe.get("msg", "")
        checks.append(Check(host, f"internal reachable: {probe['item']}", reached, seen))
    counter = evidence["counter"]
    packets = _dropped(counter["stdout"]) if int(counter["rc"]) == 0 else None
    checks.append(
        Check(
            host,
            "firewall loaded (nft table inet appliance)",
            packets is not None,
            f"egress_dropped counter: {packets} packets" if packets is not None else "no table",
        )
    )
    checks.append(
        Check(
            host,
            "firewall persistent (appliance-firewall.service)",
            evidence["firewall_unit"] == "active",
            evidence["firewall_unit"] or "unknown",
        )
    )
    sources = sorted(Path(p).name for p in evidence["sources"])
    legacy = int(evidence["legacy_sources_bytes"])
    only_bundle = sources == ["appliance.sources"] and legacy == 0
    checks.append(
        Check(
            host,
            "package sources: only the bundle's",
            only_bundle,
            ", ".join(sources) + (f"; sources.list has {legacy} bytes" if legacy else ""),
        )
    )
    return checks


def _dropped(stdout: str) -> int | None:
    try:
        for item in json.loads(stdout).get("nftables", []):
            if "counter" in item:
                return int(item["counter"]["packets"])
    except (ValueError, KeyError, TypeError):
        return None
    return None


def raise_if_failed(checks: list[Check], report: Path) -> None:
    failed = [c for c in checks if not c.passed]
    if failed:
        raise VerifyFailedError(
            f"{len(failed)} of {len(checks)} checks failed",
            hint=f"the full evidence is in {report}",
            problems=[Problem(f"{c.host}: {c.name}", c.evidence) for c in failed],
        )
