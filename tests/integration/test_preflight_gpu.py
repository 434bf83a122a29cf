"""preflight's GPU check on an air-gapped systemd host whose nvidia-smi is the stand-in of
tests/fixtures/gpu (the values of a real H200): a model too big for one H200 is refused before
anything changes, naming the numbers and the options; one that fits gets vLLM settings sized for
it, which the runtime_vllm role writes into the model's unit settings unless the inventory sets
its own.

The sizing data is what appliance install passes (appliance.install.sizing): each model's facts
read from a checkpoint's headers (here a published model's real tensor list over sparse data)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.sizing.model import model_facts, model_files
from tests.fixtures import model_configs as published
from tests.fixtures.gpu_nodes import h200_node_xml
from tests.fixtures.hosts import Host, start_host
from tests.fixtures.model_files import compressed_fp8, dense, write_checkpoint
from tests.fixtures.roles import converge, single_box_topology

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STANDIN = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "nvidia-smi"
SITE = """\
- name: Check the host
  hosts: all
  gather_facts: false
  any_errors_fatal: true
  roles: [preflight]

- name: Write the vLLM settings of each model (the part of runtime_vllm that needs no venv)
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the unit and each model's settings
      ansible.builtin.include_role:
        name: runtime_vllm
        tasks_from: configure
"""


# runtime_vllm's own preflight (which reads the GPU facts again, after the driver role) before
# its configure step.
GPU_SITE = SITE.replace(
    "    - name: Write the unit and each model's settings\n",
    "    - name: Choose the models and read the GPUs\n"
    "      ansible.builtin.include_role:\n"
    "        name: runtime_vllm\n"
    "        tasks_from: preflight\n\n"
    "    - name: Write the unit and each model's settings\n",
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("checkpoints")
    found = {}
    fp8 = published.LLAMA_3_3_70B_FP8
    for name, config, tensors in (
        ("llama-70b", published.LLAMA_3_1_70B, dense(published.LLAMA_3_1_70B)),
        ("llama-8b", published.LLAMA_3_1_8B, dense(published.LLAMA_3_1_8B)),
        ("llama-70b-fp8", fp8, compressed_fp8(dense(fp8))),
    ):
        write_checkpoint(root / name, config, tensors)
        found[name] = model_facts(name, model_files(root / name)).as_dict()
    return found


@pytest.fixture(scope="module")
def host(test_image: str) -> Iterator[Host]:
    host = start_host(test_image)
    subprocess.run(
        ["docker", "cp", str(STANDIN), f"{host.name}:/usr/local/bin/nvidia-smi"], check=True
    )
    assert host.run("chmod", "0755", "/usr/local/bin/nvidia-smi").returncode == 0
    yield host
    host.remove()


def play(
    root: Path, host: Host, sizing: dict[str, Any], site: str = SITE, **extra: Any
) -> subprocess.CompletedProcess[str]:
    """preflight then runtime_vllm's configure step (or ``site``), with what install would pass."""
    root.mkdir(parents=True, exist_ok=True)
    # Only the files' names matter here (runtime_vllm's preflight looks for config.json); the
    # configure step writes each file's digest into the list its unit checks before starting.
    served = [{"name": m["name"], "format": "safetensors", "digest": "sha256:" + "0" * 64,
               "files": [{"name": "config.json", "sha256": "0" * 64}]}
              for m in sizing["models"]]  # fmt: skip
    topology = single_box_topology("vllm", served)
    extravars = {
        "appliance_topology": topology,
        "appliance_models": served,
        "appliance_gpu_sizing": {"depot-1": sizing},
        "runtime_common_models": [
            m | {"port": topology["hosts"]["depot-1"]["runtime"]["ports"][m["name"]]}
            for m in served
        ],
        "runtime_common_listen_address": "127.0.0.1",
        **extra,
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    (root / "site.yml").write_text(site)
    return converge(root, host.name)


def vllm_args(host: Host, model: str) -> str:
    env = host.run("cat", f"/etc/appliance/vllm/{model}.env")
    assert env.returncode == 0, env.stderr
    # The role names its own variables APPLIANCE_VLLM_* (VLLM_* is vLLM's namespace).
    line = next(ln for ln in env.stdout.splitlines() if ln.startswith("APPLIANCE_VLLM_ARGS="))
    return line.removeprefix("APPLIANCE_")


def test_a_model_too_big_for_one_h200_is_refused_before_anything_changes(
    tmp_path: Path, host: Host, models: dict[str, dict[str, Any]]
) -> None:
    run = play(tmp_path, host, {"models": [models["llama-70b"]], "explicit": {}})
    assert run.returncode != 0
    assert "TASK [preflight : Assert the models fit the GPUs]" in run.stdout
    assert (
        "depot-1: model llama-70b (131.4 GiB of weights, 320 KiB of KV cache per token) does not "
        "fit 1x NVIDIA H200 (139.8 GiB each as CUDA counts, 0.9 of it for vLLM): at tensor "
        "parallel 1, weights 131.4 GiB + activations 2.0 GiB + non-torch 0.3 GiB exceed the "
        "125.8 GiB vLLM may use per GPU. Options: more GPUs (2 of these at tensor parallel 2 "
        "would serve it); a quantised checkpoint (AWQ, GPTQ or FP8 weights)."
    ) in run.stdout.replace("\n", " ")
    # The play stopped at preflight: no unit, no settings written.
    assert host.run("test", "-e", "/etc/appliance/vllm").returncode != 0


def test_a_context_the_kv_cache_cannot_hold_is_refused_with_the_context_options(
    tmp_path: Path, host: Host, models: dict[str, dict[str, Any]]
) -> None:
    # The weights (FP8, 67.7 GiB) fit; the inventory's memory share leaves too little KV cache
    # for its 131072-token context.
    explicit = {"gpu_memory_utilization": 0.6, "max_model_len": 131072}
    run = play(tmp_path, host, {"models": [models["llama-70b-fp8"]], "explicit": explicit})
    assert run.returncode != 0
    message = run.stdout.replace("\n", " ")
    assert "depot-1: model llama-70b-fp8 (67.7 GiB of weights, 320 KiB of KV cache per token)" in (
        message
    )
    assert (
        "tokens per request, fewer than the 131072 required. Options: more GPUs (2 of these at"
        in (message)
    )
    assert (
        "a 4-bit checkpoint (AWQ or GPTQ); runtime_vllm_kv_cache_dtype: fp8 "
        "(half the KV cache per token); a shorter context (runtime_vllm_max_model_len); other "
        "inventory settings than runtime_vllm_gpu_memory_utilization: 0.6, "
        "runtime_vllm_max_model_len: 131072." in message
    )


def test_a_model_that_fits_runs_with_the_settings_sized_for_it(
    tmp_path: Path, host: Host, models: dict[str, dict[str, Any]]
) -> None:
    run = play(tmp_path, host, {"models": [models["llama-8b"]], "explicit": {}})
    assert run.returncode == 0, run.stdout[-4000:]
    assert "every model fits 1x NVIDIA H200 (139.8 GiB each as CUDA counts)" in run.stdout
    assert vllm_args(host, "llama-8b") == (
        "VLLM_ARGS=--tensor-parallel-size 1 --dtype auto --gpu-memory-utilization 0.9 "
        "--max-model-len 131072"
    )


def test_the_inventorys_settings_win_and_older_drivers_are_read_too(
    tmp_path: Path, host: Host, models: dict[str, dict[str, Any]]
) -> None:
    # A driver without memory.reserved: preflight asks again without it.
    assert host.run("sh", "-c", "echo NO_RESERVED=1 > /etc/nvidia-smi-standin").returncode == 0
    try:
        explicit = {"max_model_len": 2048, "kv_cache_dtype": "fp8"}
        run = play(
            tmp_path, host, {"models": [models["llama-8b"]], "explicit": explicit},
            runtime_vllm_max_model_len=2048, runtime_vllm_kv_cache_dtype="fp8",
        )  # fmt: skip
    finally:
        host.run("rm", "-f", "/etc/nvidia-smi-standin")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "TASK [preflight : Read the GPUs without the driver's reservation]" in run.stdout
    assert vllm_args(host, "llama-8b") == (
        "VLLM_ARGS=--tensor-parallel-size 1 --dtype auto --gpu-memory-utilization 0.9 "
        "--max-model-len 2048 --kv-cache-dtype fp8"
    )


def test_two_models_on_an_8_gpu_node_each_open_only_their_own_gpus(
    tmp_path: Path, host: Host, models: dict[str, dict[str, Any]]
) -> None:
    # The stand-in answers as 8 H200s (-q -x: the real report, doctored to 8 GPUs whose minor
    # numbers run backwards); the nvidia_driver role's drop-in on the template unit is there,
    # and a drop-in of a model no longer served.
    xml = tmp_path / "nvidia-smi-q.xml"
    xml.write_text(h200_node_xml([7, 6, 5, 4, 3, 2, 1, 0]))
    subprocess.run(["docker", "cp", str(xml), f"{host.name}:/srv/nvidia-smi-q.xml"], check=True)
    template_drop_in = "/etc/systemd/system/appliance-vllm@.service.d/10-nvidia.conf"
    stale = "/etc/systemd/system/appliance-vllm@gone.service.d"
    setup = (
        "printf 'GPUS=8\\nXML=/srv/nvidia-smi-q.xml\\n' > /etc/nvidia-smi-standin && "
        f"mkdir -p {stale} $(dirname {template_drop_in}) && touch {stale}/gpus.conf "
        f"{template_drop_in}"
    )
    assert host.run("sh", "-c", setup).returncode == 0
    try:
        sizing = {"models": [models["llama-70b"], models["llama-8b"]], "explicit": {}}
        run = play(tmp_path / "play", host, sizing, site=GPU_SITE)
    finally:
        host.run("rm", "-f", "/etc/nvidia-smi-standin")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "every model fits 8x NVIDIA H200" in run.stdout

    def drop_in(model: str) -> list[str]:
        path = f"/etc/systemd/system/appliance-vllm@{model}.service.d/gpus.conf"
        text = host.run("cat", path).stdout
        return [ln for ln in text.splitlines() if ln.startswith(("Environment=", "DeviceAllow="))]

    control = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    assert drop_in("llama-70b") == [
        "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID",
        "Environment=CUDA_VISIBLE_DEVICES=0,1",
        *(f"DeviceAllow={d} rw" for d in [*control, "/dev/nvidia7", "/dev/nvidia6"]),
    ]
    assert drop_in("llama-8b") == [
        "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID",
        "Environment=CUDA_VISIBLE_DEVICES=2",
        *(f"DeviceAllow={d} rw" for d in [*control, "/dev/nvidia5"]),
    ]
    assert "--tensor-parallel-size 2 " in vllm_args(host, "llama-70b")
    # systemd reads the drop-ins into the instances' settings (the service step reloads it).
    assert host.run("systemctl", "daemon-reload").returncode == 0
    shown = host.run(
        "systemctl", "show", "-p", "DevicePolicy", "-p", "Environment",
        "appliance-vllm@llama-8b.service",
    ).stdout  # fmt: skip
    assert "DevicePolicy=closed" in shown
    assert "CUDA_VISIBLE_DEVICES=2" in shown
    assert host.run("test", "-e", stale).returncode != 0
    assert host.run("test", "-e", template_drop_in).returncode == 0
