"""Which GPUs each vLLM model runs on and what its unit may open: from the sizing's verdict and
the GPU facts of the real H200 capture, and of doctored 8-GPU nodes made from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.gpu.facts import parse_nvidia_smi_xml
from appliance.sizing.judge import judge_host
from appliance.sizing.model import model_facts, model_files
from appliance.sizing.placement import ANY_NVIDIA_DEVICE, disjoint, shared, unit_access
from tests.fixtures import model_configs as published
from tests.fixtures.gpu_hosts import h200_xml
from tests.fixtures.gpu_nodes import h200_node_xml
from tests.fixtures.model_files import dense, write_checkpoint

H200_CSV = "NVIDIA H200, 143771, 616\n"
CONTROL = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]


def facts(root: Path, name: str, config: dict[str, Any]) -> dict[str, Any]:
    write_checkpoint(root / name, config, dense(config))
    return model_facts(name, model_files(root / name)).as_dict()


def test_models_whose_gpus_add_up_get_consecutive_blocks_else_none() -> None:
    assert disjoint({"a": 2, "b": 1, "c": 4}, 8) == {"a": [0, 1], "b": [2], "c": [3, 4, 5, 6]}
    assert disjoint({"a": 1, "b": 1}, 1) is None
    assert shared({"a": 2, "b": 1}) == {"a": [0, 1], "b": [0]}


def test_one_model_on_the_real_h200_sees_gpu_0_and_opens_its_node(tmp_path: Path) -> None:
    verdict = judge_host({"models": [facts(tmp_path, "m", published.LLAMA_3_1_8B)]}, H200_CSV)
    assert verdict["placement"] == {"m": {"gpus": [0]}}
    access = unit_access(verdict["placement"]["m"]["gpus"], parse_nvidia_smi_xml(h200_xml()))
    assert access == {
        "environment": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"},
        "devices": [*CONTROL, "/dev/nvidia0"],
        "gpus": [
            {
                "index": 0,
                "uuid": "GPU-fa5dc635-9e5b-7cb5-e06b-c1422c4b9d3d",
                "bus_id": "0000:00:06.0",
            }
        ],
    }


def test_two_models_on_an_8_gpu_node_get_disjoint_gpus_each_with_its_memory(
    tmp_path: Path,
) -> None:
    # Minor numbers need not follow PCI order: the device nodes must come from the facts.
    gpu_facts = parse_nvidia_smi_xml(h200_node_xml([7, 6, 5, 4, 3, 2, 1, 0]))
    models = [
        facts(tmp_path, "big", published.LLAMA_3_1_70B),
        facts(tmp_path, "small", published.LLAMA_3_1_8B),
    ]
    verdict = judge_host({"models": models}, H200_CSV * 8)
    assert verdict["ok"], verdict["message"]
    assert verdict["placement"] == {"big": {"gpus": [0, 1]}, "small": {"gpus": [2]}}
    # Alone on their GPUs, both take vLLM's whole default share rather than half of it.
    assert verdict["settings"]["big"]["tensor_parallel_size"] == 2
    assert {s["gpu_memory_utilization"] for s in verdict["settings"].values()} == {0.9}
    big = unit_access([0, 1], gpu_facts)
    small = unit_access([2], gpu_facts)
    assert big["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert small["environment"]["CUDA_VISIBLE_DEVICES"] == "2"
    assert big["devices"] == [*CONTROL, "/dev/nvidia7", "/dev/nvidia6"]
    assert small["devices"] == [*CONTROL, "/dev/nvidia5"]
    assert not {d for d in big["devices"] if d not in CONTROL} & set(small["devices"])


def test_models_that_do_not_fit_side_by_side_share_the_first_gpus(tmp_path: Path) -> None:
    models = [
        facts(tmp_path, "a", published.LLAMA_3_1_8B),
        facts(tmp_path, "b", published.QWEN2_5_7B),
    ]
    verdict = judge_host({"models": models}, H200_CSV)
    assert verdict["placement"] == {"a": {"gpus": [0]}, "b": {"gpus": [0]}}
    assert {s["gpu_memory_utilization"] for s in verdict["settings"].values()} == {0.45}


def test_without_facts_or_placement_the_unit_may_open_every_nvidia_device() -> None:
    everything = {"environment": {}, "devices": list(ANY_NVIDIA_DEVICE), "gpus": []}
    assert unit_access(None, parse_nvidia_smi_xml(h200_xml())) == everything
    assert unit_access([0], None) == everything


def test_a_gpu_the_facts_do_not_list_is_refused() -> None:
    with pytest.raises(ValueError, match="GPU 1 is not among the 1 GPUs the facts list"):
        unit_access([0, 1], parse_nvidia_smi_xml(h200_xml()))
