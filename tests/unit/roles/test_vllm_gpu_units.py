"""runtime_vllm's configure step rendered by Ansible itself (check mode with --diff on this
machine: nothing is written), from the sizing's verdict and the GPU facts of the real H200
capture and of a doctored 8-GPU node: each model's drop-in (CUDA_VISIBLE_DEVICES, the device
nodes its unit may open) and its vLLM arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from appliance.gpu.facts import parse_nvidia_smi_xml
from appliance.roles import ROLES_DIR
from appliance.sizing.judge import judge_host
from appliance.sizing.model import model_facts, model_files
from tests.fixtures import model_configs as published
from tests.fixtures.gpu_hosts import h200_xml
from tests.fixtures.gpu_nodes import h200_node_xml
from tests.fixtures.hosts import ROOT
from tests.fixtures.model_files import dense, write_checkpoint

H200_CSV = "NVIDIA H200, 143771, 616\n"
PLAY = """\
- name: Render runtime_vllm's settings
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the unit and each model's settings
      ansible.builtin.include_role:
        name: runtime_vllm
        tasks_from: configure
"""


def rendered(tmp_path: Path, verdict: dict[str, Any], gpu_facts: dict[str, Any]) -> dict[str, str]:
    """Each file the configure step would write (path -> content), from a check-mode run."""
    models = [
        {
            "name": name,
            "digest": "sha256:" + "0" * 64,
            "port": 8081 + i,
            "files": [{"name": "config.json", "sha256": "0" * 64}],
        }
        for i, name in enumerate(verdict["settings"])
    ]
    settings = {
        name: value | verdict["placement"][name] for name, value in verdict["settings"].items()
    }
    extravars = {
        "runtime_common_models": models,
        "runtime_common_listen_address": "127.0.0.1",
        "appliance_vllm_settings": settings,
        "appliance_gpu": gpu_facts,
        "runtime_vllm_config_dir": str(tmp_path / "absent"),
    }
    (tmp_path / "extravars.json").write_text(json.dumps(extravars))
    (tmp_path / "play.yml").write_text(PLAY)
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        # The harness's offline collections carry ansible.posix's json callback.
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--check", "--diff",
         "-e", f"@{tmp_path / 'extravars.json'}", str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    files = {}
    for play in json.loads(done.stdout)["plays"]:
        for task in play["tasks"]:
            result = task["hosts"]["localhost"]
            for item in result.get("results", [result]):
                diffs = item.get("diff")
                dest = item.get("invocation", {}).get("module_args", {}).get("dest")
                if isinstance(diffs, list) and dest:  # a template's diff: the rendered text
                    files[dest] = diffs[0]["after"]
    return files


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_one_model_on_the_real_h200(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m", published.LLAMA_3_1_8B, dense(published.LLAMA_3_1_8B))
    model = model_facts("m", model_files(tmp_path / "m")).as_dict()
    verdict = judge_host({"models": [model]}, H200_CSV)
    files = rendered(tmp_path, verdict, parse_nvidia_smi_xml(h200_xml()))
    drop_in = files["/etc/systemd/system/appliance-vllm@m.service.d/gpus.conf"]
    assert _lines(drop_in, "Environment=") == [
        "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID",
        "Environment=CUDA_VISIBLE_DEVICES=0",
    ]
    assert _lines(drop_in, "DeviceAllow=") == [
        "DeviceAllow=/dev/nvidiactl rw",
        "DeviceAllow=/dev/nvidia-uvm rw",
        "DeviceAllow=/dev/nvidia-uvm-tools rw",
        "DeviceAllow=/dev/nvidia0 rw",
    ]
    assert "# GPU 0: GPU-fa5dc635-9e5b-7cb5-e06b-c1422c4b9d3d at 0000:00:06.0" in drop_in
    unit = files["/etc/systemd/system/appliance-vllm@.service"]
    assert "DevicePolicy=closed" in unit
    assert not _lines(unit, "DeviceAllow=")  # only the instances' own, from their drop-ins
    env = files[str(tmp_path / "absent" / "m.env")]
    assert _lines(env, "APPLIANCE_VLLM_ARGS=") == [
        "APPLIANCE_VLLM_ARGS=--tensor-parallel-size 1 --dtype auto --gpu-memory-utilization 0.9 "
        "--max-model-len 131072"
    ]


def test_two_models_on_an_8_gpu_node_open_disjoint_devices(tmp_path: Path) -> None:
    found = {}
    for name, config in (("big", published.LLAMA_3_1_70B), ("small", published.LLAMA_3_1_8B)):
        write_checkpoint(tmp_path / name, config, dense(config))
        found[name] = model_facts(name, model_files(tmp_path / name)).as_dict()
    verdict = judge_host({"models": [found["big"], found["small"]]}, H200_CSV * 8)
    gpu_facts = parse_nvidia_smi_xml(h200_node_xml([7, 6, 5, 4, 3, 2, 1, 0]))
    files = rendered(tmp_path, verdict, gpu_facts)
    big = files["/etc/systemd/system/appliance-vllm@big.service.d/gpus.conf"]
    small = files["/etc/systemd/system/appliance-vllm@small.service.d/gpus.conf"]
    assert "Environment=CUDA_VISIBLE_DEVICES=0,1" in big.splitlines()
    assert "Environment=CUDA_VISIBLE_DEVICES=2" in small.splitlines()
    gpu_nodes = {
        name: {
            line.split()[0].removeprefix("DeviceAllow=") for line in _lines(text, "DeviceAllow=")
        }
        - {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}
        for name, text in (("big", big), ("small", small))
    }
    assert gpu_nodes == {"big": {"/dev/nvidia7", "/dev/nvidia6"}, "small": {"/dev/nvidia5"}}
    big_args = _lines(files[str(tmp_path / "absent" / "big.env")], "APPLIANCE_VLLM_ARGS=")[0]
    assert "--tensor-parallel-size 2 " in big_args
    assert "--gpu-memory-utilization 0.9 " in big_args
