"""verify's GPU checks, judged on the controller from what a GPU node reported.

The evidence is the node's ``appliance_gpu`` fact (the gpu_facts role), the state of the
driver's daemons, and each runtime unit's device settings (``systemctl show``). Each check is a
(name, passed, evidence) triple; appliance verify names the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

GpuCheck = tuple[str, bool, str]
# The device nodes of one GPU (/dev/nvidiaN, N its minor number); the others (nvidiactl,
# nvidia-uvm, nvidia-caps, nvidia-modeset) every CUDA process needs and carry no GPU.
_GPU_NODE = re.compile(r"^/dev/nvidia(\d+)$")
_NVIDIA_NODE = re.compile(r"^(/dev/nvidia|char-nvidia)")
# Device classes that open every GPU at once.
_ALL_GPUS = frozenset({"char-nvidia-frontend", "char-nvidia"})


def judge_gpus(evidence: Mapping[str, Any], driver_version: str | None) -> list[GpuCheck]:
    """The GPU checks of one node: driver version, GPU count, persistence, fabric manager, and
    each runtime unit's devices."""
    facts: Mapping[str, Any] = evidence.get("facts") or {}
    gpus: Sequence[Mapping[str, Any]] = facts.get("gpus") or []
    checks = [_driver(facts, driver_version), _count(facts)]
    off = [str(g["index"]) for g in gpus if not g.get("persistence_mode")]
    checks.append(
        (
            "GPU persistence mode on",
            bool(gpus) and not off,
            (f"off on GPU {', '.join(off)}" if off else f"on for {len(gpus)} GPUs")
            + f"; nvidia-persistenced.service is {evidence.get('persistenced') or 'unknown'}",
        )
    )
    if facts.get("nvswitch_present"):
        checks.append(_fabric(facts, str(evidence.get("fabricmanager") or "unknown")))
    for unit in evidence.get("units") or []:
        checks.append(_unit_devices(unit, gpus))
    return checks


def _driver(facts: Mapping[str, Any], version: str | None) -> GpuCheck:
    module = facts.get("kernel_module") or {}
    loaded = str(module.get("version") or "")
    smi = facts.get("nvidia_smi") or {}
    seen = (
        f"module {loaded} ({module.get('flavor')})" if module.get("loaded") else "no NVIDIA module"
    ) + (
        f", nvidia-smi reports {facts.get('driver_version')}"
        if smi.get("ok")
        else f", nvidia-smi: {smi.get('error') or 'no answer'}"
    )
    wanted = version or loaded
    passed = bool(module.get("loaded")) and bool(smi.get("ok")) and loaded == wanted
    if version and loaded != version:
        seen += f"; the bundle's driver is {version}"
    return (f"GPU driver loaded at {wanted or 'the bundle version'}", passed, seen)


def _count(facts: Mapping[str, Any]) -> GpuCheck:
    gpus = facts.get("gpus") or []
    on_bus = facts.get("pci_gpus") or []
    answered = {str(g.get("bus_id")) for g in gpus}
    missing = [str(d["bus_id"]) for d in on_bus if str(d["bus_id"]) not in answered]
    expected = max(len(on_bus), int(facts.get("attached_gpus") or 0))
    passed = bool(gpus) and len(gpus) == expected and not missing
    seen = f"nvidia-smi sees {len(gpus)} of the {expected} NVIDIA GPUs on the PCI bus"
    if missing:
        seen += f" (missing: {', '.join(missing)})"
    return ("GPUs: every GPU on the bus answers", passed, seen)


def _fabric(facts: Mapping[str, Any], unit_state: str) -> GpuCheck:
    gpus = facts.get("gpus") or []
    not_ready = [
        f"GPU {g['index']} {g.get('fabric_state')}/{g.get('fabric_status')}"
        for g in gpus
        if (g.get("fabric_state"), g.get("fabric_status")) != ("Completed", "Success")
    ]
    switches = ", ".join(str(s["bus_id"]) for s in facts.get("nvswitches") or [])
    passed = unit_state == "active" and not not_ready
    seen = f"NVSwitches at {switches}; nvidia-fabricmanager.service is {unit_state}" + (
        f"; fabric not ready on {', '.join(not_ready)}" if not_ready else "; fabric ready"
    )
    return ("fabric manager active (NVSwitch)", passed, seen)


def _unit_devices(unit: Mapping[str, Any], gpus: Sequence[Mapping[str, Any]]) -> GpuCheck:
    name = f"runtime {unit.get('unit')}: sees its GPUs and only those"
    allowed = [str(entry).split()[0] for entry in unit.get("device_allow") or [] if str(entry)]
    policy = str(unit.get("device_policy") or "auto")
    visible = str((unit.get("environment") or {}).get("CUDA_VISIBLE_DEVICES", "")).strip()
    problems = []
    if policy not in {"closed", "strict"}:
        problems.append(f"DevicePolicy={policy} lets it open any device")
    others = [d for d in allowed if not _NVIDIA_NODE.match(d)]
    if others:
        problems.append(f"it may open non-NVIDIA devices: {', '.join(others)}")
    if not visible:
        problems.append("no CUDA_VISIBLE_DEVICES")
    chosen = []
    for item in (v.strip() for v in visible.split(",") if v.strip()):
        found = next((g for g in gpus if item in {str(g["index"]), str(g.get("uuid"))}), None)
        if found is None:
            problems.append(f"CUDA_VISIBLE_DEVICES names {item}, which is no GPU of this host")
        else:
            chosen.append(found)
    minors = {str(g.get("minor_number")) for g in chosen}
    nodes = {m.group(1) for m in (_GPU_NODE.match(d) for d in allowed) if m}
    every = any(d in _ALL_GPUS for d in allowed)
    if every and len(chosen) < len(gpus):
        problems.append("DeviceAllow opens every GPU (char-nvidia-frontend)")
    if not every and nodes != minors:
        problems.append(
            f"DeviceAllow opens /dev/nvidia{{{','.join(sorted(nodes)) or ''}}}, its GPUs are "
            f"/dev/nvidia{{{','.join(sorted(minors))}}}"
        )
    seen = (
        f"CUDA_VISIBLE_DEVICES={visible or '(unset)'}, DevicePolicy={policy}, "
        f"DeviceAllow={' '.join(allowed) or '(none)'}"
    )
    return (name, not problems, "; ".join(problems) + (" - " if problems else "") + seen)


def unit_from_show(unit: str, text: str) -> dict[str, Any]:
    """A unit's device settings from ``systemctl show -p DevicePolicy -p DeviceAllow -p
    Environment`` (one DeviceAllow= line per entry; Environment= space-separated NAME=VALUE)."""
    found: dict[str, Any] = {
        "unit": unit,
        "device_policy": "",
        "device_allow": [],
        "environment": {},
    }
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DevicePolicy":
            found["device_policy"] = value.strip()
        elif key == "DeviceAllow" and value.strip():
            found["device_allow"].append(value.strip())
        elif key == "Environment":
            for pair in value.split():
                name, _, setting = pair.partition("=")
                found["environment"][name] = setting
    return found
