"""GPU facts, parsed by the same code the hosts run.

The parsers live in the gpu_facts role's Ansible module (it runs on the host, where only the
standard library is sure to be there); this module loads that file so that appliance, its tests
and the roles' filters parse ``nvidia-smi -q -x`` one way.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from appliance.roles import ROLES_DIR

MODULE = ROLES_DIR / "gpu_facts" / "library" / "appliance_gpu_facts.py"


@functools.cache
def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("appliance_gpu_facts", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ inside the roles: build-bundle packs that directory as it is.
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes
    return module


def parse_nvidia_smi_xml(text: str) -> dict[str, Any]:
    """Driver and CUDA version and one dict per GPU, from ``nvidia-smi -q -x``."""
    return cast(dict[str, Any], _module().parse_nvidia_smi_xml(text))


def parse_driver_version(text: str) -> dict[str, Any]:
    """The loaded kernel module (loaded, version, flavor) from /proc/driver/nvidia/version."""
    return cast(dict[str, Any], _module().parse_driver_version(text))


def scan_pci(devices: Path) -> dict[str, list[dict[str, str]]]:
    """NVIDIA GPUs and NVSwitches among the PCI devices of a sysfs directory."""
    return cast(dict[str, list[dict[str, str]]], _module().scan_pci(str(devices)))


def gather(
    smi_answer: tuple[int, str, str], pci: dict[str, Any], proc_version: str
) -> dict[str, Any]:
    """The ``appliance_gpu`` fact, from nvidia-smi's answer (rc, stdout, stderr), the PCI scan
    and the kernel module's version text, as the module sets it on a host."""
    return cast(dict[str, Any], _module().gather(smi_answer, pci, proc_version))
