"""GPU facts from real captures (tests/fixtures/gpu/h200-580), through the gpu_facts role's own
module code, and the module run by Ansible against a sysfs tree made from the capture."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.gpu.facts import MODULE, gather, parse_driver_version, parse_nvidia_smi_xml, scan_pci
from tests.fixtures.gpu_hosts import (
    H200,
    h200_pci_devices,
    h200_proc_version,
    h200_xml,
    write_sysfs,
)

# An NVSwitch as HGX boards show it (class 0x0680, "bridge: other"); the device ID is one of
# the third-generation NVSwitch IDs as lspci -nn lists them (10de:22a3).
NVSWITCH = ("0000:07:00.0", "0x22a3", "0x068000")


def test_the_h200_report_parses_into_one_gpu_with_its_model_memory_and_ids() -> None:
    facts = parse_nvidia_smi_xml(h200_xml())
    assert facts["driver_version"] == "580.159.04"
    assert facts["cuda_version"] == "13.0"
    assert facts["attached_gpus"] == 1
    (gpu,) = facts["gpus"]
    assert gpu["name"] == "NVIDIA H200"
    assert gpu["architecture"] == "Hopper"
    assert gpu["pci_id"] == "10de:2335"
    assert gpu["bus_id"] == "0000:00:06.0"
    assert gpu["memory_total_mib"] == 143771
    assert gpu["memory_reserved_mib"] == 616
    assert gpu["persistence_mode"] is True
    assert (gpu["mig_mode"], gpu["mig_pending"]) == ("Disabled", "Disabled")
    # One H200 in a VM: no NVSwitch fabric to join.
    assert (gpu["fabric_state"], gpu["fabric_status"]) == ("N/A", "N/A")


def test_the_xml_agrees_with_the_csv_query_captured_on_the_same_machine() -> None:
    (gpu,) = parse_nvidia_smi_xml(h200_xml())["gpus"]
    text = (H200 / "gpu-facts.txt").read_text()
    row = next(line for line in text.splitlines() if line.startswith("0, NVIDIA H200"))
    fields = [field.strip() for field in row.split(",")]
    assert fields[2] == gpu["uuid"]
    assert fields[3] == f"{gpu['memory_total_mib']} MiB"
    assert fields[5] == "580.159.04"
    assert fields[6] == "00000000:00:06.0"
    assert fields[9] == gpu["mig_mode"]


def test_the_loaded_module_is_the_open_one_at_the_driver_version() -> None:
    assert parse_driver_version(h200_proc_version()) == {
        "loaded": True,
        "version": "580.159.04",
        "flavor": "open",
    }


def test_the_proprietary_module_and_no_module_are_told_apart() -> None:
    # Debian's proprietary module words its line this way (nvidia-kernel-dkms 535).
    line = (
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.309.01  Tue Sep  2 00:00:00 UTC 2026\n"
    )
    assert parse_driver_version(line) == {
        "loaded": True,
        "version": "535.309.01",
        "flavor": "proprietary",
    }
    assert parse_driver_version("")["loaded"] is False


def test_sysfs_from_the_capture_shows_the_gpu_and_no_nvswitch(tmp_path: Path) -> None:
    devices = h200_pci_devices()
    assert devices == [("0000:00:06.0", "0x2335", "0x030200")]
    pci = scan_pci(write_sysfs(tmp_path, devices))
    assert pci == {
        "gpus": [{"bus_id": "0000:00:06.0", "pci_id": "10de:2335", "class": "0302"}],
        "nvswitches": [],
    }


def test_an_nvswitch_is_found_and_other_vendors_are_ignored(tmp_path: Path) -> None:
    write_sysfs(tmp_path, [*h200_pci_devices(), NVSWITCH])
    write_sysfs(tmp_path, [("0000:00:02.0", "0x1234", "0x030000")], vendor="0x8086")
    facts = gather((0, h200_xml(), ""), scan_pci(tmp_path), h200_proc_version())
    assert [d["bus_id"] for d in facts["pci_gpus"]] == ["0000:00:06.0"]
    assert facts["nvswitches"] == [
        {"bus_id": "0000:07:00.0", "pci_id": "10de:22a3", "class": "0680"}
    ]
    assert facts["nvswitch_present"] is True


def test_a_host_without_the_driver_still_shows_its_gpus_from_pci(tmp_path: Path) -> None:
    pci = scan_pci(write_sysfs(tmp_path, h200_pci_devices()))
    facts = gather((127, "", "nvidia-smi: not found"), pci, "")
    assert facts["nvidia_smi"] == {"ok": False, "error": "nvidia-smi: not found"}
    assert facts["gpus"] == []
    assert facts["driver_version"] == ""
    assert [g["pci_id"] for g in facts["pci_gpus"]] == ["10de:2335"]
    assert facts["kernel_module"]["loaded"] is False


def test_unreadable_output_is_reported_not_guessed(tmp_path: Path) -> None:
    facts = gather((0, "NVIDIA-SMI has failed", ""), scan_pci(tmp_path / "none"), "")
    assert facts["nvidia_smi"]["ok"] is False
    assert facts["nvidia_smi"]["error"].startswith("unreadable XML from nvidia-smi -q -x")
    assert facts["pci_gpus"] == []


def test_ansible_runs_the_module_and_sets_the_fact(tmp_path: Path) -> None:
    """The module as the roles run it: Ansible ships it, it runs nvidia-smi (here a script that
    prints the real capture) and reads the sysfs tree."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        f"#!/bin/sh\n[ \"$1 $2\" = '-q -x' ] || exit 2\ncat '{H200 / 'nvidia-smi-q.xml'}'\n"
    )
    smi.chmod(0o755)
    pci = write_sysfs(tmp_path / "pci", [*h200_pci_devices(), NVSWITCH])
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}",
         "-M", str(MODULE.parent), "-m", "appliance_gpu_facts",
         "-a", json.dumps({"nvidia_smi": str(smi), "pci_devices": str(pci)}), "-o"],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(re.sub(r"^localhost \| SUCCESS => ", "", done.stdout.strip()))
    facts = result["ansible_facts"]["appliance_gpu"]
    assert result["changed"] is False
    assert facts["nvidia_smi"]["ok"] is True
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA H200"]
    assert facts["nvswitch_present"] is True


@pytest.mark.parametrize("value", ["00000000:00:06.0", "0000:00:06.0", "00000000:00:06.0"])
def test_bus_ids_take_sysfs_form(value: str) -> None:
    from appliance.gpu.facts import _module

    assert _module().bus_id(value) == "0000:00:06.0"
