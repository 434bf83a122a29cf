#!/usr/bin/python
"""Ansible module: a host's NVIDIA GPUs as facts, from nvidia-smi's XML report and sysfs.

The parsers are plain functions of text so that appliance itself uses the same code
(appliance/gpu/facts.py loads this file) and the tests feed them real captures.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_gpu_facts
short_description: Read a host's NVIDIA GPUs into facts (nvidia-smi -q -x, PCI IDs from sysfs)
description:
  - Runs C(nvidia-smi -q -x) when the tool is there and parses its XML report (driver and CUDA
    version; per GPU the model, memory, PCI IDs and bus id, persistence mode, MIG mode and the
    NVLink fabric state).
  - Scans the PCI devices in sysfs for NVIDIA (vendor 0x10de) GPUs and NVSwitches, which works
    before any driver is installed.
  - Reads the loaded kernel module's version from /proc/driver/nvidia/version.
  - Sets the fact C(appliance_gpu). Reads only; supports check mode; never fails for lack of a
    GPU, a driver or nvidia-smi (the facts say what is missing).
options:
  nvidia_smi:
    description: The nvidia-smi command (a name on PATH or a path).
    type: str
    default: nvidia-smi
  pci_devices:
    description: The directory of PCI devices in sysfs.
    type: path
    default: /sys/bus/pci/devices
  driver_version_file:
    description: Where the loaded NVIDIA kernel module states its version.
    type: path
    default: /proc/driver/nvidia/version
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Read the GPUs
  appliance_gpu_facts:
    nvidia_smi: /usr/bin/nvidia-smi

- name: Every GPU keeps its driver state between jobs
  ansible.builtin.assert:
    that: appliance_gpu.gpus | rejectattr('persistence_mode') | list | length == 0
    fail_msg: persistence mode is off on some GPU
"""

RETURN = r"""
ansible_facts:
  description: The facts, under C(appliance_gpu).
  returned: always
  type: dict
  contains:
    appliance_gpu:
      description: >-
        nvidia_smi (ok, error), driver_version, cuda_version, gpus (one dict per GPU: index,
        name, architecture, uuid, bus_id, pci_id, memory_total_mib, memory_reserved_mib,
        persistence_mode, mig_mode, mig_pending, fabric_state, fabric_status, minor_number),
        pci_gpus and nvswitches (bus_id, pci_id, class from sysfs), nvswitch_present,
        kernel_module (loaded, version, flavor).
      type: dict
      sample:
        nvidia_smi: {ok: true, error: ""}
        driver_version: 580.159.04
        cuda_version: "13.0"
        gpus:
          - {index: 0, name: NVIDIA H200, pci_id: "10de:2335", bus_id: "0000:00:06.0",
             memory_total_mib: 143771, persistence_mode: true, mig_mode: Disabled}
        nvswitch_present: false
"""

NVIDIA_VENDOR = "10de"
# PCI classes (class code and subclass): display controllers are GPUs; NVIDIA's "other bridge"
# devices are the NVSwitches of HGX/DGX boards.
GPU_CLASSES = ("0300", "0302")
NVSWITCH_CLASS = "0680"


def _text(node: ElementTree.Element | None, path: str) -> str:
    found = node.find(path) if node is not None else None
    return (found.text or "").strip() if found is not None else ""


def _mib(value: str) -> int | None:
    match = re.match(r"(\d+)\s*MiB", value)
    return int(match.group(1)) if match else None


def bus_id(value: str) -> str:
    """nvidia-smi's 8-digit PCI domain (00000000:00:06.0) as sysfs writes it (0000:00:06.0)."""
    match = re.fullmatch(r"([0-9A-Fa-f]+):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])", value)
    if not match:
        return value.lower()
    domain, bus, device, function = match.groups()
    return f"{int(domain, 16):04x}:{bus.lower()}:{device.lower()}.{function}"


def parse_nvidia_smi_xml(text: str) -> dict[str, Any]:
    """The facts in ``nvidia-smi -q -x``'s report."""
    # nvidia-smi's own output on this host: no entity or external DTD is ever resolved.
    root = ElementTree.fromstring(text)  # noqa: S314
    gpus = []
    for index, gpu in enumerate(root.findall("gpu")):
        device_id = _text(gpu, "pci/pci_device_id")  # 233510DE: device, then vendor
        pci_id = f"{device_id[4:8].lower()}:{device_id[0:4].lower()}" if len(device_id) == 8 else ""
        persistence = _text(gpu, "persistence_mode")
        gpus.append(
            {
                "index": index,
                "name": _text(gpu, "product_name"),
                "architecture": _text(gpu, "product_architecture"),
                "uuid": _text(gpu, "uuid"),
                "bus_id": bus_id(gpu.get("id") or _text(gpu, "pci/pci_bus_id")),
                "pci_id": pci_id,
                "minor_number": _text(gpu, "minor_number"),
                "memory_total_mib": _mib(_text(gpu, "fb_memory_usage/total")),
                "memory_reserved_mib": _mib(_text(gpu, "fb_memory_usage/reserved")),
                "persistence_mode": persistence == "Enabled",
                "mig_mode": _text(gpu, "mig_mode/current_mig") or "N/A",
                "mig_pending": _text(gpu, "mig_mode/pending_mig") or "N/A",
                "fabric_state": _text(gpu, "fabric/state") or "N/A",
                "fabric_status": _text(gpu, "fabric/status") or "N/A",
            }
        )
    return {
        "driver_version": _text(root, "driver_version"),
        "cuda_version": _text(root, "cuda_version"),
        "attached_gpus": int(_text(root, "attached_gpus") or len(gpus)),
        "gpus": gpus,
    }


def parse_driver_version(text: str) -> dict[str, Any]:
    """The loaded module's version and flavour from /proc/driver/nvidia/version's first line."""
    match = re.search(
        r"NVRM version: NVIDIA UNIX (Open )?.*?Kernel Module\s.*?\s(\d+\.\d+(?:\.\d+)?)\s", text
    )
    if not match:
        return {"loaded": False, "version": "", "flavor": ""}
    return {
        "loaded": True,
        "version": match.group(2),
        "flavor": "open" if match.group(1) else "proprietary",
    }


def scan_pci(devices_dir: str) -> dict[str, list[dict[str, str]]]:
    """NVIDIA GPUs and NVSwitches among the PCI devices in sysfs (what lspci -nn reads)."""
    found: dict[str, list[dict[str, str]]] = {"gpus": [], "nvswitches": []}
    if not os.path.isdir(devices_dir):
        return found
    for name in sorted(os.listdir(devices_dir)):
        values = {}
        for field in ("vendor", "device", "class"):
            try:
                with open(os.path.join(devices_dir, name, field)) as handle:
                    values[field] = handle.read().strip().lower().removeprefix("0x")
            except OSError:
                values[field] = ""
        if values["vendor"] != NVIDIA_VENDOR:
            continue
        entry = {
            "bus_id": name,
            "pci_id": f"{values['vendor']}:{values['device']}",
            "class": values["class"][:4],
        }
        if entry["class"] in GPU_CLASSES:
            found["gpus"].append(entry)
        elif entry["class"] == NVSWITCH_CLASS:
            found["nvswitches"].append(entry)
    return found


def gather(
    smi_answer: tuple[int, str, str], pci: dict[str, Any], proc_version: str
) -> dict[str, Any]:
    """All facts, from what the host answered (nvidia-smi's rc, stdout, stderr)."""
    rc, out, err = smi_answer
    facts: dict[str, Any] = {
        "nvidia_smi": {"ok": False, "error": ""},
        "driver_version": "",
        "cuda_version": "",
        "attached_gpus": 0,
        "gpus": [],
    }
    if rc == 0:
        try:
            facts.update(parse_nvidia_smi_xml(out))
            facts["nvidia_smi"] = {"ok": True, "error": ""}
        except ElementTree.ParseError as error:
            facts["nvidia_smi"]["error"] = f"unreadable XML from nvidia-smi -q -x: {error}"
    else:
        facts["nvidia_smi"]["error"] = (err or out).strip()[:500] or f"exit code {rc}"
    facts["pci_gpus"] = pci["gpus"]
    facts["nvswitches"] = pci["nvswitches"]
    facts["nvswitch_present"] = bool(pci["nvswitches"])
    facts["kernel_module"] = parse_driver_version(proc_version)
    return facts


def _run(argv: list[str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(argv)}: no answer in 120 s"
    return done.returncode, done.stdout, done.stderr


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
            "pci_devices": {"type": "path", "default": "/sys/bus/pci/devices"},
            "driver_version_file": {"type": "path", "default": "/proc/driver/nvidia/version"},
        },
        supports_check_mode=True,
    )
    try:
        with open(module.params["driver_version_file"]) as handle:
            proc_version = handle.read()
    except OSError:
        proc_version = ""
    facts = gather(
        _run([module.params["nvidia_smi"], "-q", "-x"]),
        scan_pci(module.params["pci_devices"]),
        proc_version,
    )
    module.exit_json(changed=False, ansible_facts={"appliance_gpu": facts})


if __name__ == "__main__":
    main()
