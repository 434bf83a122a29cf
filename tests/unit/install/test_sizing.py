"""What install hands preflight for the GPU check: each vLLM node's models, sized from the staged
release's own files, and the vLLM settings the inventory gives that node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.install.sizing import gpu_sizing
from appliance.install.topology import plan
from tests.fixtures.hosts import ROOT
from tests.fixtures.roles import blob_file

VLLM = {"runtime": "vllm", "orchestrator": "systemd"}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A release holding the tiny HF model twice, as alpha and beta, and their manifest entries."""
    root = tmp_path_factory.mktemp("release")
    model = root / "source"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "hf", str(model)],
        check=True,
        capture_output=True,
    )
    files = [blob_file(root, path) for path in sorted(model.iterdir())]
    models = [
        {"name": name, "format": "safetensors", "source": "hf://o/r", "files": files}
        for name in ("alpha", "beta")
    ]
    return root, models


def test_each_vllm_node_gets_its_models_and_the_inventorys_settings(
    release: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, models = release
    host_vars: dict[str, dict[str, Any]] = {
        "depot-1": {"ansible_host": "198.18.10.2"},
        "gpu-1": {
            "ansible_host": "198.18.10.11",
            "runtime_vllm_models": ["alpha"],
            "runtime_vllm_max_model_len": 256,
            "runtime_vllm_tensor_parallel_size": 0,  # 0: from sizing, not a setting
        },
        "gpu-2": {"ansible_host": "198.18.10.12", "runtime_vllm_models": ["beta"]},
        "cpu-1": {
            "ansible_host": "198.18.10.13",
            "runtime_vllm_models": [],
            "runtime_vllm_device": "cpu",
        },
    }
    topology = plan(
        hosts=sorted(host_vars),
        depot="depot-1",
        gpu_nodes=["gpu-1", "gpu-2"],
        host_vars=host_vars,
        stack=VLLM,
        models=models,
    )
    sizing = gpu_sizing(topology, host_vars, models, root)
    assert sorted(sizing) == ["gpu-1", "gpu-2"]
    assert [m["name"] for m in sizing["gpu-1"]["models"]] == ["alpha"]
    assert sizing["gpu-1"]["explicit"] == {"max_model_len": 256}
    assert sizing["gpu-2"]["explicit"] == {}
    alpha = sizing["gpu-1"]["models"][0]
    # The tiny model's float32 file, served in 16 bits.
    assert alpha["weight_bytes"] * 2 == alpha["file_bytes"]
    assert alpha["architecture"]["kv"] == [
        {"count": 2, "kv_heads": 2, "k_dim": 64, "v_dim": 64, "window": None, "mla": False}
    ]


def test_a_cpu_node_and_other_runtimes_get_no_gpu_check(
    release: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, models = release
    box = {"localhost": {"ansible_connection": "local", "runtime_vllm_device": "cpu"}}
    topology = plan(
        hosts=["localhost"],
        depot="localhost",
        gpu_nodes=["localhost"],
        host_vars=box,
        stack=VLLM,
        models=models,
    )
    assert gpu_sizing(topology, box, models, root) == {}
    gguf = plan(
        hosts=["localhost"],
        depot="localhost",
        gpu_nodes=["localhost"],
        host_vars={},
        stack={"runtime": "llamacpp"},
        models=[{"name": "g", "format": "gguf"}],
    )
    assert gpu_sizing(gguf, {}, [{"name": "g", "format": "gguf", "files": []}], root) == {}


def test_a_model_that_cannot_be_sized_is_noted_not_fatal(tmp_path: Path) -> None:
    notes: list[str] = []
    blob = {
        "name": "weights.bin",
        "path": f"blobs/sha256/{'0' * 64}",
        "sha256": "0" * 64,
        "size": 1,
    }
    models = [{"name": "odd", "format": "safetensors", "source": "hf://o/r", "files": [blob]}]
    (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    (tmp_path / "blobs" / "sha256" / ("0" * 64)).write_bytes(b"x")
    topology = plan(
        hosts=["localhost"],
        depot="localhost",
        gpu_nodes=["localhost"],
        host_vars={},
        stack=VLLM,
        models=models,
    )
    assert gpu_sizing(topology, {}, models, tmp_path, notes.append) == {}
    assert notes == [
        "model odd not sized (model odd has neither config.json, a .gguf file nor an Ollama "
        "manifest): preflight cannot check its fit"
    ]
