"""The GPU checks for a machine with an NVIDIA GPU and no network (tests/gpu/run.sh runs this).

Nothing is installed and nothing changes on the machine: only the system python3's standard
library and this checkout's own code (appliance.sizing, the gpu_facts role's parser, the
runtime_vllm role's placement), which need nothing else. It checks, each as one line of the
report:

- facts: ``nvidia-smi -q -x`` parsed by the gpu_facts module's own parser, agreeing with the
  ``--query-gpu`` answer preflight reads and with the kernel module's version;
- host: what ``appliance verify`` checks on a GPU node (driver loaded at nvidia-smi's version,
  persistence mode on, the fabric up where NVSwitches exist);
- vllm: the settings runtime_vllm renders for this machine (Llama 3.1 8B alone, then with
  Qwen 2.5 7B beside it, sized from their published tensor lists): tensor parallel size, memory
  share, ``CUDA_VISIBLE_DEVICES`` and the device nodes of the unit's ``DeviceAllow=``, each node
  checked against the driver's minor number;
- verify: ``appliance verify``'s own GPU checks (appliance.gpu.checks) on these facts, the
  driver's daemons and the rendered units' device settings;
- cuda: with exactly that environment, the CUDA driver (libcuda, through ctypes) sees the GPUs
  placed, at the PCI bus ids the facts name; and where systemd runs, the same inside a transient
  unit confined to the rendered ``DeviceAllow=`` list.

Exit status 0 when every check passes, 1 otherwise. ``NVIDIA_SMI`` names another nvidia-smi
(the stand-in in tests/fixtures/gpu, to run this where there is no GPU).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.gpu.checks import judge_gpus  # noqa: E402
from appliance.sizing.judge import judge_host  # noqa: E402
from appliance.sizing.model import model_facts, model_files  # noqa: E402
from appliance.sizing.placement import unit_access  # noqa: E402
from tests.fixtures import model_configs as published  # noqa: E402
from tests.fixtures.model_files import dense, write_checkpoint  # noqa: E402

FACTS_MODULE = ROOT / "appliance/ansible/roles/gpu_facts/library/appliance_gpu_facts.py"
NVIDIA_MAJOR = 195  # /dev/nvidia<minor> and /dev/nvidiactl (the driver's fixed major)
# A confined unit cannot create device nodes: nvidia-persistenced or the driver role must.
UVM_MISSING = (
    "missing: nvidia-uvm is not loaded (nvidia-modprobe -u -c0 loads it and makes the nodes)"
)
PROBE = Path(__file__).resolve().parent / "cuda_probe.py"


@dataclass
class Report:
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, ok: bool | None, name: str, evidence: str) -> None:
        self.lines.append(("PASS" if ok else "SKIP" if ok is None else "FAIL", name, evidence))

    @property
    def failed(self) -> bool:
        return any(state == "FAIL" for state, _, _ in self.lines)


@functools.cache
def facts_parser() -> types.ModuleType:
    """The gpu_facts role's module, loaded as a library. Ansible is not installed here: its
    import of AnsibleModule gets a placeholder (only the module's main() uses it)."""
    if importlib.util.find_spec("ansible") is None:
        for name in ("ansible", "ansible.module_utils", "ansible.module_utils.basic"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["ansible.module_utils.basic"].AnsibleModule = None  # type: ignore[attr-defined]
    spec = importlib.util.spec_from_file_location("appliance_gpu_facts", FACTS_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, check=False, env=env
        )
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(argv)}: no answer in 300 s"
    return done.returncode, done.stdout, done.stderr


def check_facts(report: Report, smi: str) -> dict[str, Any] | None:
    parser = facts_parser()
    answer = run([smi, "-q", "-x"])
    proc = Path("/proc/driver/nvidia/version")
    facts: dict[str, Any] = parser.gather(
        answer,
        parser.scan_pci("/sys/bus/pci/devices"),
        proc.read_text() if proc.is_file() else "",
    )
    if not facts["nvidia_smi"]["ok"]:
        report.add(False, "facts: nvidia-smi -q -x", facts["nvidia_smi"]["error"])
        return None
    gpus = facts["gpus"]
    report.add(
        bool(gpus) and facts["attached_gpus"] == len(gpus),
        "facts: nvidia-smi -q -x parsed",
        f"{len(gpus)} GPU(s), driver {facts['driver_version']}, CUDA {facts['cuda_version']}: "
        + "; ".join(
            f"{g['index']}: {g['name']} {g['memory_total_mib']} MiB ({g['memory_reserved_mib']} "
            f"reserved) minor {g['minor_number']} {g['bus_id']} {g['pci_id']} MIG {g['mig_mode']}"
            for g in gpus
        ),
    )
    rc, out, err = run(
        [
            smi,
            "--query-gpu=index,name,memory.total,memory.reserved",
            "--format=csv,noheader,nounits",
        ]
    )
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    seen = [[str(g["index"]), g["name"], str(g["memory_total_mib"]), str(g["memory_reserved_mib"])]
            for g in gpus]  # fmt: skip
    report.add(
        rc == 0 and rows == seen,
        "facts: the XML agrees with the --query-gpu answer preflight reads",
        f"query: {rows}" if rc == 0 else err.strip(),
    )
    pci = {g["bus_id"] for g in facts["pci_gpus"]}
    report.add(
        {g["bus_id"] for g in gpus} <= pci if pci else None,
        "facts: every GPU is on the PCI bus (sysfs, vendor 10de)",
        f"sysfs: {sorted(pci) or 'no NVIDIA device found (no sysfs here?)'}",
    )
    return facts


def check_host(report: Report, facts: dict[str, Any]) -> None:
    module = facts["kernel_module"]
    report.add(
        module["loaded"] and module["version"] == facts["driver_version"],
        "host: the kernel module is loaded at nvidia-smi's driver version",
        f"/proc/driver/nvidia/version: {module['version'] or 'absent'} ({module['flavor']})",
    )
    off = [g["index"] for g in facts["gpus"] if not g["persistence_mode"]]
    report.add(not off, "host: persistence mode on", f"off on GPU {off}" if off else "on for all")
    if facts["nvswitch_present"]:
        down = [g["index"] for g in facts["gpus"] if g["fabric_state"] != "Completed"]
        report.add(
            not down, "host: NVLink fabric registered", f"not on GPU {down}" if down else "all"
        )
    else:
        report.add(None, "host: NVLink fabric registered", "no NVSwitch on this machine")


def _device(path: str) -> tuple[int, int] | None:
    try:
        found = Path(path).stat()
    except OSError:
        return None
    if not stat.S_ISCHR(found.st_mode):
        return None
    return os.major(found.st_rdev), os.minor(found.st_rdev)


def check_vllm(report: Report, facts: dict[str, Any], smi: str) -> list[dict[str, Any]]:
    """The settings runtime_vllm renders here, for one model and for two; the access of each."""
    rc, csv_answer, err = run(
        [smi, "--query-gpu=name,memory.total,memory.reserved", "--format=csv,noheader,nounits"]
    )
    if rc != 0:
        report.add(False, "vllm: sizing input (nvidia-smi --query-gpu)", err.strip())
        return []
    accesses = []
    with tempfile.TemporaryDirectory() as tmp:
        found = {}
        for name, config in (("llama-8b", published.LLAMA_3_1_8B),
                             ("qwen-7b", published.QWEN2_5_7B)):  # fmt: skip
            write_checkpoint(Path(tmp) / name, config, dense(config))
            found[name] = model_facts(name, model_files(Path(tmp) / name)).as_dict()
        for models in (["llama-8b"], ["llama-8b", "qwen-7b"]):
            verdict = judge_host({"models": [found[m] for m in models]}, csv_answer)
            label = f"vllm: {' + '.join(models)} on {verdict['gpus']}"
            if not verdict["ok"]:
                # A refusal is a right answer when the GPUs are too small: shown, not failed.
                report.add(None, label, verdict["message"])
                continue
            for model in models:
                settings = verdict["settings"][model]
                access = unit_access(verdict["placement"][model]["gpus"], facts)
                devices = access["devices"]
                report.add(
                    True,
                    f"{label}: {model} settings",
                    f"--tensor-parallel-size {settings['tensor_parallel_size']} "
                    f"--gpu-memory-utilization {settings['gpu_memory_utilization']} "
                    f"--max-model-len {settings['max_model_len']}; "
                    + " ".join(f"{k}={v}" for k, v in access["environment"].items())
                    + "; DeviceAllow="
                    + ",".join(devices),
                )
                accesses.append({"model": model, "models": models, **access})
    # Every node the units may open exists, and /dev/nvidia<minor> is that GPU's.
    for gpu in facts["gpus"]:
        path = f"/dev/nvidia{gpu['minor_number']}"
        node = _device(path)
        report.add(
            node == (NVIDIA_MAJOR, int(gpu["minor_number"])),
            f"vllm: {path} is GPU {gpu['index']}'s device node",
            f"{path}: {'char ' + str(node) if node else 'missing or not a character device'}",
        )
    for path, why in (
        ("/dev/nvidiactl", "missing: the driver is not loaded"),
        ("/dev/nvidia-uvm", UVM_MISSING),
        ("/dev/nvidia-uvm-tools", UVM_MISSING),
    ):
        node = _device(path)
        report.add(node is not None, f"vllm: {path} exists", f"char {node}" if node else why)
    return accesses


def check_verify(report: Report, facts: dict[str, Any], accesses: list[dict[str, Any]]) -> None:
    """verify's GPU checks, judged on this machine's facts and the units runtime_vllm renders."""

    def state(unit: str) -> str:
        rc, out, _ = run(["systemctl", "is-active", unit])
        return out.strip() or ("unknown" if rc == 127 else "inactive")

    units = [
        {
            "unit": f"appliance-vllm@{a['model']}.service (rendered for {' + '.join(a['models'])})",
            "device_policy": "closed",
            "device_allow": [f"{d} rw" for d in a["devices"]],
            "environment": a["environment"],
        }
        for a in accesses
    ]
    evidence = {
        "facts": facts,
        "persistenced": state("nvidia-persistenced.service"),
        "fabricmanager": state("nvidia-fabricmanager.service"),
        "units": units,
    }
    for name, passed, seen in judge_gpus(evidence, None):
        report.add(passed, f"verify: {name}", seen)


def _probe(rc: int, out: str, err: str, bus_id: Any) -> dict[str, Any]:
    try:
        seen: dict[str, Any] = json.loads(out) if rc == 0 else {"error": (err or out).strip()}
    except ValueError:
        return {"error": (err or out).strip()[-500:]}
    if "bus_ids" in seen:
        seen["bus_ids"] = [bus_id(b) for b in seen["bus_ids"]]
    return seen


def check_cuda(report: Report, facts: dict[str, Any], accesses: list[dict[str, Any]]) -> None:
    """What CUDA sees with each model's rendered environment (and, with systemd, device list)."""
    by_index = {g["index"]: g for g in facts["gpus"]}
    bus_id = facts_parser().bus_id  # CUDA writes a 4- or 8-digit PCI domain; sysfs writes 4
    systemd = shutil.which("systemd-run") is not None and Path("/run/systemd/system").is_dir()
    for access in accesses:
        if len(access["models"]) > 1 and access["model"] != access["models"][-1]:
            continue  # the two-model case: its last model suffices
        expected = [by_index[g["index"]]["bus_id"] for g in access["gpus"]]
        env = {**os.environ, **access["environment"]}
        rc, out, err = run([sys.executable, str(PROBE)], env=env)
        seen = _probe(rc, out, err, bus_id)
        report.add(
            seen.get("bus_ids") == expected,
            f"cuda: {access['model']} with {access['environment']} sees its GPUs",
            json.dumps(seen),
        )
        if not systemd:
            report.add(None, f"cuda: {access['model']} in a unit confined to its devices",
                       "no systemd here")  # fmt: skip
            continue
        argv = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                "-p", "DevicePolicy=closed", "-p", "NoNewPrivileges=yes",
                *[a for d in access["devices"] for a in ("-p", f"DeviceAllow={d} rw")],
                *[a for k, v in access["environment"].items() for a in ("-E", f"{k}={v}")],
                sys.executable, str(PROBE)]  # fmt: skip
        rc, out, err = run(argv)
        seen = _probe(rc, out, err, bus_id)
        report.add(
            seen.get("bus_ids") == expected,
            f"cuda: {access['model']} in a unit confined to its DeviceAllow= list",
            json.dumps(seen),
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")
    args = parser.parse_args(argv)
    smi = os.environ.get("NVIDIA_SMI", "nvidia-smi")
    report = Report()
    facts = check_facts(report, smi)
    if facts is not None:
        check_host(report, facts)
        accesses = check_vllm(report, facts, smi)
        check_verify(report, facts, accesses)
        check_cuda(report, facts, accesses)
    if args.json:
        print(json.dumps([{"state": s, "check": n, "evidence": e} for s, n, e in report.lines]))
    else:
        for state, name, evidence in report.lines:
            print(f"{state}  {name}\n      {evidence}")
        failed = sum(1 for s, _, _ in report.lines if s == "FAIL")
        print(f"\n{len(report.lines)} checks, {failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
