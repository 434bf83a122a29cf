"""tests/gpu/run.sh, the script for machines with an NVIDIA GPU, run here against the stand-in
nvidia-smi (the real H200's answers, tests/fixtures/gpu) with the system python3 and nothing
else on the path: it runs with the standard library alone, reports the facts and the vLLM
settings it renders, and exits non-zero because this machine has no GPU device nodes or CUDA."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.gpu_nodes import h200_node_xml
from tests.fixtures.hosts import ROOT

STANDIN = ROOT / "tests" / "fixtures" / "gpu" / "nvidia-smi"


def run_script(**env: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """run.sh --json with only /usr/bin:/bin on the path: its exit status and checks by name."""
    if shutil.which("python3", path="/usr/bin:/bin") is None:
        pytest.skip("no system python3")
    done = subprocess.run(
        [str(ROOT / "tests" / "gpu" / "run.sh"), "--json"],
        env={"PATH": "/usr/bin:/bin", "NVIDIA_SMI": str(STANDIN), **env},
        capture_output=True, text=True, check=False, cwd="/",
    )  # fmt: skip
    assert done.stdout, done.stderr
    checks = json.loads(done.stdout)
    return done.returncode, {c["check"]: (c["state"], c["evidence"]) for c in checks}


@pytest.fixture(scope="module")
def report() -> tuple[int, dict[str, tuple[str, str]]]:
    return run_script()


def test_the_facts_are_read_through_the_gpu_facts_parser(report: tuple[int, dict]) -> None:
    _, checks = report
    state, evidence = checks["facts: nvidia-smi -q -x parsed"]
    assert state == "PASS"
    assert evidence == (
        "1 GPU(s), driver 580.159.04, CUDA 13.0: 0: NVIDIA H200 143771 MiB (616 reserved) "
        "minor 0 0000:00:06.0 10de:2335 MIG Disabled"
    )
    assert checks["facts: the XML agrees with the --query-gpu answer preflight reads"][0] == "PASS"
    assert checks["host: persistence mode on"] == ("PASS", "on for all")


def test_the_rendered_vllm_settings_for_the_h200(report: tuple[int, dict]) -> None:
    _, checks = report
    label = "vllm: llama-8b on 1x NVIDIA H200 (139.8 GiB each as CUDA counts): llama-8b settings"
    assert checks[label] == (
        "PASS",
        "--tensor-parallel-size 1 --gpu-memory-utilization 0.9 --max-model-len 131072; "
        "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0; "
        "DeviceAllow=/dev/nvidiactl,/dev/nvidia-uvm,/dev/nvidia-uvm-tools,/dev/nvidia0",
    )
    two = "vllm: llama-8b + qwen-7b on 1x NVIDIA H200 (139.8 GiB each as CUDA counts): "
    assert "--gpu-memory-utilization 0.45 " in checks[two + "qwen-7b settings"][1]


def test_no_gpu_here_fails_the_device_and_cuda_checks_and_the_exit_status(
    report: tuple[int, dict],
) -> None:
    returncode, checks = report
    assert returncode == 1
    assert checks["vllm: /dev/nvidia0 is GPU 0's device node"][0] == "FAIL"
    assert checks["host: the kernel module is loaded at nvidia-smi's driver version"] == (
        "FAIL",
        "/proc/driver/nvidia/version: absent ()",
    )
    cuda = checks[
        "cuda: llama-8b with {'CUDA_DEVICE_ORDER': 'PCI_BUS_ID', 'CUDA_VISIBLE_DEVICES': '0'} "
        "sees its GPUs"
    ]
    assert cuda[0] == "FAIL"
    assert "libcuda.so.1" in cuda[1]


def test_on_a_doctored_8_gpu_node_two_models_get_disjoint_gpus(tmp_path: Path) -> None:
    xml = tmp_path / "nvidia-smi-q.xml"
    xml.write_text(h200_node_xml([7, 6, 5, 4, 3, 2, 1, 0]))
    _, checks = run_script(NVIDIA_SMI_GPUS="8", NVIDIA_SMI_XML=str(xml))
    assert checks["facts: the XML agrees with the --query-gpu answer preflight reads"][0] == "PASS"
    two = "vllm: llama-8b + qwen-7b on 8x NVIDIA H200 (139.8 GiB each as CUDA counts): "
    assert checks[two + "llama-8b settings"][1].endswith(
        "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0; "
        "DeviceAllow=/dev/nvidiactl,/dev/nvidia-uvm,/dev/nvidia-uvm-tools,/dev/nvidia7"
    )
    assert checks[two + "qwen-7b settings"][1].endswith(
        "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1; "
        "DeviceAllow=/dev/nvidiactl,/dev/nvidia-uvm,/dev/nvidia-uvm-tools,/dev/nvidia6"
    )
    assert "--gpu-memory-utilization 0.9 " in checks[two + "qwen-7b settings"][1]


def test_verifys_gpu_checks_accept_the_units_runtime_vllm_renders(tmp_path: Path) -> None:
    xml = tmp_path / "nvidia-smi-q.xml"
    xml.write_text(h200_node_xml([7, 6, 5, 4, 3, 2, 1, 0]))
    _, checks = run_script(NVIDIA_SMI_GPUS="8", NVIDIA_SMI_XML=str(xml))
    units = {name: result for name, result in checks.items() if name.startswith("verify: runtime")}
    assert len(units) == 3  # llama-8b alone, then llama-8b and qwen-7b side by side
    assert {state for state, _ in units.values()} == {"PASS"}
    qwen = "verify: runtime appliance-vllm@qwen-7b.service (rendered for llama-8b + qwen-7b): "
    assert checks[qwen + "sees its GPUs and only those"][1] == (
        "CUDA_VISIBLE_DEVICES=1, DevicePolicy=closed, "
        "DeviceAllow=/dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia6"
    )
    # No driver module here: verify's driver check fails, as it must.
    assert checks["verify: GPU driver loaded at the bundle version"][0] == "FAIL"
