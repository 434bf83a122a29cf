"""verify's GPU checks on facts parsed from the real H200 capture, and on doctored copies of it:
a GPU that left the bus (Xid 79), persistence off, a fabric manager down on an NVSwitch board,
a runtime unit that may open more than its GPUs."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from appliance.gpu.checks import judge_gpus
from appliance.gpu.facts import gather, scan_pci
from appliance.install.verify import judge
from tests.fixtures.gpu_hosts import h200_pci_devices, h200_proc_version, h200_xml, write_sysfs

DRIVER = "580.159.04"


def facts(
    tmp_path: Path, xml: str | None = None, extra_pci: list[Any] | None = None
) -> dict[str, Any]:
    pci = scan_pci(write_sysfs(tmp_path / "pci", [*h200_pci_devices(), *(extra_pci or [])]))
    return gather((0, xml or h200_xml(), ""), pci, h200_proc_version())


def evidence(found: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"facts": found, "persistenced": "active", "fabricmanager": "inactive", **extra}


def unit(visible: str, *allow: str, policy: str = "closed") -> dict[str, Any]:
    return {
        "unit": "appliance-vllm@llama.service",
        "device_policy": policy,
        "device_allow": list(allow),
        "environment": {"CUDA_VISIBLE_DEVICES": visible} if visible else {},
    }


def by_name(checks: list[tuple[str, bool, str]]) -> dict[str, tuple[bool, str]]:
    return {name: (passed, seen) for name, passed, seen in checks}


def test_the_real_h200_passes(tmp_path: Path) -> None:
    checks = by_name(
        judge_gpus(
            evidence(
                facts(tmp_path),
                units=[unit("0", "/dev/nvidia0 rw", "/dev/nvidiactl rw", "/dev/nvidia-uvm rw")],
            ),
            DRIVER,
        )
    )
    assert checks == {
        f"GPU driver loaded at {DRIVER}": (
            True,
            f"module {DRIVER} (open), nvidia-smi reports {DRIVER}",
        ),
        "GPUs: every GPU on the bus answers": (
            True,
            "nvidia-smi sees 1 of the 1 NVIDIA GPUs on the PCI bus",
        ),
        "GPU persistence mode on": (True, "on for 1 GPUs; nvidia-persistenced.service is active"),
        "runtime appliance-vllm@llama.service: sees its GPUs and only those": (
            True,
            "CUDA_VISIBLE_DEVICES=0, DevicePolicy=closed, "
            "DeviceAllow=/dev/nvidia0 /dev/nvidiactl /dev/nvidia-uvm",
        ),
    }


def test_another_driver_version_fails(tmp_path: Path) -> None:
    passed, seen = by_name(judge_gpus(evidence(facts(tmp_path)), "535.261.03"))[
        "GPU driver loaded at 535.261.03"
    ]
    assert not passed
    assert seen.endswith("; the bundle's driver is 535.261.03")


def test_a_gpu_missing_from_nvidia_smi_fails(tmp_path: Path) -> None:
    """A second H200 on the bus that nvidia-smi no longer lists (a GPU fallen off the bus)."""
    second = ("0000:00:07.0", "0x2335", "0x030200")
    passed, seen = by_name(judge_gpus(evidence(facts(tmp_path, extra_pci=[second])), DRIVER))[
        "GPUs: every GPU on the bus answers"
    ]
    assert not passed
    assert seen == "nvidia-smi sees 1 of the 2 NVIDIA GPUs on the PCI bus (missing: 0000:00:07.0)"


def test_persistence_off_fails(tmp_path: Path) -> None:
    xml = h200_xml().replace(
        "<persistence_mode>Enabled</persistence_mode>",
        "<persistence_mode>Disabled</persistence_mode>",
    )
    assert xml != h200_xml()
    passed, seen = by_name(
        judge_gpus(evidence(facts(tmp_path, xml), persistenced="inactive"), DRIVER)
    )["GPU persistence mode on"]
    assert not passed
    assert seen == "off on GPU 0; nvidia-persistenced.service is inactive"


def hgx(tmp_path: Path, state: str, status: str) -> dict[str, Any]:
    """The capture on an NVSwitch board: an NVSwitch on the bus, the GPU's fabric state set."""
    root = ElementTree.fromstring(h200_xml())  # noqa: S314 - the fixture
    fabric = root.find("gpu/fabric")
    assert fabric is not None
    fabric.find("state").text = state  # type: ignore[union-attr]
    fabric.find("status").text = status  # type: ignore[union-attr]
    switch = ("0000:07:00.0", "0x22a3", "0x068000")
    return facts(tmp_path, ElementTree.tostring(root, encoding="unicode"), [switch])


def test_the_fabric_manager_is_checked_only_where_nvswitches_are(tmp_path: Path) -> None:
    names = [name for name, _, _ in judge_gpus(evidence(facts(tmp_path)), DRIVER)]
    assert "fabric manager active (NVSwitch)" not in names
    ready = by_name(
        judge_gpus(
            evidence(hgx(tmp_path / "hgx", "Completed", "Success"), fabricmanager="active"), DRIVER
        )
    )
    assert ready["fabric manager active (NVSwitch)"] == (
        True,
        "NVSwitches at 0000:07:00.0; nvidia-fabricmanager.service is active; fabric ready",
    )


def test_a_fabric_manager_that_is_down_fails(tmp_path: Path) -> None:
    down = by_name(
        judge_gpus(
            evidence(hgx(tmp_path / "down", "Not Started", "N/A"), fabricmanager="failed"), DRIVER
        )
    )
    assert down["fabric manager active (NVSwitch)"] == (
        False,
        "NVSwitches at 0000:07:00.0; nvidia-fabricmanager.service is failed; "
        "fabric not ready on GPU 0 Not Started/N/A",
    )


@pytest.mark.parametrize(
    ("doctored", "problem"),
    [
        (unit("0", "char-nvidia-frontend rw", policy="closed"), None),
        (unit("", "/dev/nvidia0 rw"), "no CUDA_VISIBLE_DEVICES"),
        (unit("0", "/dev/nvidia0 rw", policy="auto"), "DevicePolicy=auto lets it open any device"),
        (unit("0", "/dev/nvidia0 rw", "/dev/sda rw"), "it may open non-NVIDIA devices: /dev/sda"),
        (
            unit("1", "/dev/nvidia1 rw"),
            "CUDA_VISIBLE_DEVICES names 1, which is no GPU of this host",
        ),
        (
            unit("GPU-fa5dc635-9e5b-7cb5-e06b-c1422c4b9d3d", "/dev/nvidia3 rw"),
            "DeviceAllow opens /dev/nvidia{3}, its GPUs are /dev/nvidia{0}",
        ),
    ],
)
def test_a_runtime_unit_must_see_exactly_its_gpus(
    tmp_path: Path, doctored: dict[str, Any], problem: str | None
) -> None:
    found = facts(tmp_path)
    (_, passed, seen) = judge_gpus(evidence(found, units=[doctored]), DRIVER)[-1]
    # One GPU on the host: opening every GPU is opening its own.
    assert passed is (problem is None)
    if problem:
        assert seen.startswith(problem)


def test_every_gpu_class_is_refused_when_the_unit_should_see_fewer(tmp_path: Path) -> None:
    second = ("0000:00:07.0", "0x2335", "0x030200")
    two = facts(tmp_path, extra_pci=[second])
    two["gpus"].append({**copy.deepcopy(two["gpus"][0]), "index": 1, "minor_number": "1",
                        "uuid": "GPU-other", "bus_id": "0000:00:07.0"})  # fmt: skip
    (_, passed, seen) = judge_gpus(
        evidence(two, units=[unit("0", "char-nvidia-frontend rw")]), DRIVER
    )[-1]
    assert not passed
    assert seen.startswith("DeviceAllow opens every GPU (char-nvidia-frontend)")


def node_evidence(
    found: dict[str, Any], show: str, fabricmanager: str = "inactive"
) -> dict[str, Any]:
    """What the verify role hands over for a GPU node (its GPU part as the role writes it)."""
    return {
        "host": "gpu-1",
        "egress": [],
        "internal": [],
        "counter": {"rc": 1, "stdout": ""},
        "firewall_unit": "active",
        "sources": ["/etc/apt/sources.list.d/appliance.sources"],
        "legacy_sources_bytes": 0,
        "gpu_node": True,
        "gpu": {
            "facts": found,
            "persistenced": "active",
            "fabricmanager": fabricmanager,
            "units": [["appliance-vllm@llama.service", show]],
        },
    }


SHOW = (
    "DevicePolicy=closed\nDeviceAllow=/dev/nvidia0 rw\nDeviceAllow=/dev/nvidiactl rw\n"
    "DeviceAllow=/dev/nvidia-uvm rw\nEnvironment=HF_HUB_OFFLINE=1 CUDA_VISIBLE_DEVICES=0\n"
)


def test_appliance_verify_reports_the_gpu_checks_of_a_node(tmp_path: Path) -> None:
    checks = judge(node_evidence(facts(tmp_path), SHOW), driver_version=DRIVER)
    gpu = [c for c in checks if "GPU" in c.name or c.name.startswith("runtime appliance-vllm")]
    assert [(c.host, c.passed) for c in gpu] == [("gpu-1", True)] * 4
    doctored = h200_xml().replace("<persistence_mode>Enabled<", "<persistence_mode>Disabled<")
    evidence = node_evidence(facts(tmp_path / "off", doctored), SHOW)
    failed = [c.name for c in judge(evidence, False, DRIVER) if not c.passed]
    assert "GPU persistence mode on" in failed


def test_a_cpu_only_bundle_on_a_host_without_a_driver_gets_no_gpu_checks(tmp_path: Path) -> None:
    found = gather((127, "", "nvidia-smi: not found"), scan_pci(tmp_path / "none"), "")
    checks = judge(node_evidence(found, ""), driver_version=None)
    assert not [c for c in checks if "GPU" in c.name]
