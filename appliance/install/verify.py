"""appliance verify: gather evidence on every host through the bundle's verify role, then judge
it here, so the report lists every check, passed or failed, with what was seen."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.bundle.inspect import read_manifest
from appliance.bundle.manifest import Manifest
from appliance.errors import InstallError, Problem, VerifyFailedError
from appliance.gpu.checks import judge_gpus, unit_from_show
from appliance.install import new_run_dir, runner_env
from appliance.install.inventory import load_inventory, single_box
from appliance.install.verify_engines import judge_engines
from appliance.install.verify_k3s import judge_k3s, k3s_expect
from appliance.install.verify_models import (
    Allowed,
    Check,
    judge_registry,
    judge_routes,
    judge_served,
    judge_store,
)
from appliance.mirrors import upstream_registries
from appliance.registry import images as registry_images
from appliance.runner import TaskEvent, run_playbook
from appliance.site.models import DEFAULT_SITE_DIR
from appliance.site.verify import site_allowed


@dataclass(frozen=True)
class VerifyOptions:
    egress_targets: tuple[str, ...]
    internal_targets: tuple[str, ...] = ()
    inventory: Path | None = None
    root: Path = Path("/opt/appliance")
    site_dir: Path = DEFAULT_SITE_DIR
    # The release to judge the hosts against; default: the one ``current`` points at. An
    # upgrade verifies its release before ``current`` moves to it.
    release: Path | None = None
    # Evidence not gathered (verify role tags): an upgrade skips what its play did not touch
    # (upgrade_scope.verify_skips); appliance verify itself gathers everything.
    skip: tuple[str, ...] = ()


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
    release = (options.release or options.root / "current").resolve()
    project = release.with_name(f"{release.name}.ansible")
    if not project.is_dir():
        raise InstallError(
            f"no installed release under {options.root}",
            hint="run appliance install first (verify uses the installed release's playbooks)",
        )
    manifest = read_manifest(release)
    # The installed release serves models: runtimes and the gateway must be there too.
    expect_inference = any(c.kind == "model" for c in manifest.components)
    # What a runtime may serve: the bundle's models and the site's (signature checked first).
    site_models, site_check = site_allowed(options.site_dir)
    allowed = Allowed.of(manifest.models()) | Allowed.of(site_models)
    driver_version = _driver_version(manifest)
    on_k3s = manifest.stack.get("orchestrator") == "k3s"
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
            "appliance_verify_model_file_digests": sorted(allowed.files),
            "appliance_verify_image_registries": upstream_registries(
                c.name for c in manifest.components if c.kind == "image"
            ),
            "appliance_verify_registry_images": _registry_images(manifest),
            "appliance_root": str(options.root),
            "appliance_verify_k3s": on_k3s,
        },
        envvars=runner_env(project),
        on_event=on_event,
        skip_tags=options.skip,
    )
    checks: list[Check] = [site_check] if site_check is not None else []
    gathered: dict[str, dict[str, Any]] = {}
    for host in inventory.hosts:
        path = evidence_dir / f"{host}.json"
        if not path.is_file():
            failure = next((f.message for f in result.failures if f.host == host), "no evidence")
            checks.append(Check(host, "evidence gathered", False, failure))
            continue
        gathered[host] = json.loads(path.read_text())
        checks.extend(judge(gathered[host], expect_inference, allowed, driver_version))
    if on_k3s:
        checks.extend(_judge_cluster(manifest, release, gathered))
    if expect_inference and not any(c.name.startswith("gateway ") for c in checks):
        checks.append(
            Check("all", "gateway running", False, "no host has the gateway's configuration")
        )
    report = run_dir / "verify-report.json"
    report.write_text(json.dumps([asdict(c) for c in checks], indent=2) + "\n")
    return checks, report


def _judge_cluster(
    manifest: Manifest, release: Path, gathered: dict[str, dict[str, Any]]
) -> list[Check]:
    """The k3s checks, judged once from the server's view of the whole cluster."""
    servers = [host for host, found in gathered.items() if found.get("k3s")]
    if not servers:
        return [
            Check(
                "all",
                "k3s: cluster state read",
                False,
                "no host has the k3s server's kubeconfig (/etc/rancher/k3s/k3s.yaml); "
                "run appliance install (orchestrator: k3s puts the server on the depot)",
            ),
        ]
    expect = k3s_expect(manifest, release, gathered)
    return [c for host in servers for c in judge_k3s(host, gathered[host]["k3s"], expect)]


def _registry_images(manifest: Manifest) -> list[dict[str, str]]:
    """The images the registry must hold (none without a registry in the stack)."""
    if manifest.stack.get("registry", "none") == "none":
        return []
    keys = ("ref", "repository", "digest")
    return [{key: image[key] for key in keys} for image in registry_images(manifest)]


def _driver_version(manifest: Manifest) -> str | None:
    """The NVIDIA driver version the bundle carries (its manifest's nvidia section), if any."""
    return None if manifest.nvidia is None else str(manifest.nvidia.driver.version)


def judge(
    evidence: dict[str, Any],
    expect_inference: bool = False,
    allowed: Allowed | None = None,
    driver_version: str | None = None,
) -> list[Check]:
    """Every check of one host's evidence; ``allowed``: the models the manifests name (None:
    the model checks are not judged); ``driver_version``: the NVIDIA driver the bundle carries."""
    host = evidence["host"]
    checks = []
    if not evidence["egress"]:
        # verify always has a target to probe: no result means the background probe job failed,
        # timed out or never started, and proves nothing (nor do the runtimes' probes it ran).
        seen = str(evidence.get("egress_error") or "")
        seen = "no egress probe result" + (f": {seen}" if seen else " (the probe job gave none)")
        checks.append(Check(host, "egress probes ran", False, seen))
    for probe in evidence["egress"]:
        # reached: true (it answered), false (no answer), null (the probe could not run: that
        # proves nothing, so it fails too).
        reached = probe.get("reached")
        seen = str(probe.get("detail") or "")
        if reached is None:
            seen = f"the probe could not run: {seen}"
        checks.append(Check(host, f"egress blocked: {probe['target']}", reached is False, seen))
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
    checks.extend(_judge_runtimes(host, evidence, expect_inference))
    checks.extend(judge_store(host, evidence.get("store")))
    checks.extend(judge_engines(host, evidence.get("engines")))
    checks.extend(judge_registry(host, evidence.get("registry")))
    if allowed is not None:
        checks.extend(judge_served(host, evidence.get("served_models") or [], allowed))
    gpu = evidence.get("gpu")
    # A GPU node of a bundle that carries a driver, or one whose driver is loaded anyway.
    if gpu and (
        driver_version or ((gpu.get("facts") or {}).get("kernel_module") or {}).get("loaded")
    ):
        units = [unit_from_show(str(name), str(text)) for name, text in gpu.get("units") or []]
        for name, passed, seen in judge_gpus({**gpu, "units": units}, driver_version):
            checks.append(Check(host, name, passed, seen))
    if evidence.get("gateway"):
        checks.extend(_judge_gateway(host, evidence["gateway"]))
        if allowed is not None:
            checks.extend(judge_routes(host, evidence["gateway"], allowed))
    return checks


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _judge_runtimes(host: str, evidence: dict[str, Any], expect: bool) -> list[Check]:
    runtimes = evidence.get("runtimes") or []
    checks = []
    if expect and _true(evidence.get("gpu_node")):
        units = ", ".join(r["unit"] for r in runtimes)
        checks.append(Check(host, "runtime running", bool(runtimes), units or "no runtime unit"))
    for runtime in runtimes:
        where = (
            f"as uid {runtime.get('uid')} in "
            + ("the host's network namespace" if runtime.get("shares_host_netns") else "its own")
            + f" ({runtime.get('netns')})"
        )
        if not runtime.get("probes"):
            checks.append(
                Check(
                    host,
                    f"runtime {runtime['unit']}: no route out",
                    False,
                    runtime.get("error") or "no egress target probed",
                )
            )
        for probe in runtime.get("probes", []):
            checks.append(
                Check(
                    host,
                    f"runtime {runtime['unit']}: egress blocked: {probe['target']}",
                    probe.get("reached") is False,  # None: the probe itself could not run
                    f"{where}: {probe.get('detail')}",
                )
            )
    return checks


def _judge_gateway(host: str, gateway: dict[str, Any]) -> list[Check]:
    checks = []
    for backend in gateway.get("backends", []):
        status = int(backend.get("status", -1))
        item = backend.get("item", {})
        seen = (
            f"{item.get('backend')}{item.get('health_path', '/health')} answered HTTP {status}"
            if status != -1
            else (backend.get("msg", "") or "no answer")
        )
        checks.append(
            Check(host, f"gateway backend healthy: {item.get('name')}", status == 200, seen)
        )
    if not _true(gateway.get("key_found")):
        checks.append(
            Check(host, "gateway completion", False, "verify's API key is missing on this host")
        )
        return checks
    models = gateway.get("models") or [{}]
    model, digest = models[0].get("name"), models[0].get("digest")
    # A runtime may name the model its own way (Ollama: name:tag); both names are this model.
    names = {model, models[0].get("backend_model") or model}
    completion = gateway.get("completion", {})
    status = int(completion.get("status", -1))
    body = completion.get("body")
    problem = (
        _completion_problem(body, names)
        if status == 200
        else (f"HTTP {status}: {completion.get('msg') or body}")
    )
    checks.append(
        Check(
            host,
            f"gateway completion: {model}",
            problem is None,
            problem
            or f"HTTP 200, finish_reason {body['choices'][0].get('finish_reason')}, "
            f"{body['usage']['completion_tokens']} completion tokens, "
            f"request {completion.get('request_id')}",
        )
    )
    checks.append(_judge_record(host, gateway, completion.get("request_id"), digest))
    chain = gateway.get("audit_chain", {})
    checks.append(
        Check(
            host,
            "gateway audit log: hash chain intact",
            int(chain.get("rc", -1)) == 0,
            _chain_summary(chain),
        )
    )
    return checks


def _completion_problem(body: Any, names: set[Any]) -> str | None:
    if not isinstance(body, dict):
        return f"the answer is not JSON: {str(body)[:200]}"
    choices = body.get("choices") or []
    usage = body.get("usage") or {}
    if not choices or "message" not in choices[0] or not choices[0].get("finish_reason"):
        return f"no choice with a message and a finish_reason: {json.dumps(body)[:200]}"
    if not usage.get("completion_tokens"):
        return f"no completion tokens counted: {json.dumps(usage)}"
    if body.get("model") not in names:
        return f"answered for model {body.get('model')!r}, asked {' or '.join(sorted(names))}"
    return None


def _judge_record(host: str, gateway: dict[str, Any], request_id: Any, digest: Any) -> Check:
    name = "gateway audit log: the call is recorded"
    shown = str(gateway.get("audit_record") or "")  # appliance --json audit show --request-id
    try:
        records = (json.loads(shown).get("records") or []) if shown.strip() else []
    except (ValueError, AttributeError):
        return Check(host, name, False, f"unreadable answer from audit show: {shown[:200]}")
    if not request_id or not records:
        return Check(host, name, False, f"no record for request {request_id or '(no id)'}")
    record = records[0]
    wrong = [
        f"{field} {record.get(field)!r}, expected {want!r}"
        for field, want in (
            ("key_id", gateway.get("key_id")),
            ("model_digest", digest),
            ("status", 200),
        )
        if record.get(field) != want
    ]
    seen = (
        f"seq {record.get('seq')}, key {record.get('key_id')}, {record.get('model_digest')}, "
        f"{record.get('prompt_tokens')}+{record.get('completion_tokens')} tokens"
    )
    return Check(host, name, not wrong, "; ".join(wrong) or seen)


def _chain_summary(chain: dict[str, Any]) -> str:
    try:
        document = json.loads(chain.get("stdout") or "")
    except ValueError:
        return (chain.get("stderr") or chain.get("stdout") or "no answer").strip()[:300]
    if int(chain.get("rc", -1)) != 0:
        error = document.get("error", document)
        return str(error.get("message", error))[:300] if isinstance(error, dict) else str(error)
    return ", ".join(f"{k} {v}" for k, v in document.items() if k in {"records", "files"})


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
