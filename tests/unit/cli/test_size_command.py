"""`appliance size`: exact output and exit codes, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import model_configs as published
from tests.fixtures.cli import run_cli
from tests.fixtures.model_files import dense, write_checkpoint

LLAMA_70B_ON_4_H100 = """\
Llama-3.1-70B-Instruct: safetensors, llama, weights 131.4 GiB, KV cache 320.0 KiB per token (auto), up to 131072 tokens
  on 4x NVIDIA H100 80GB HBM3 (79.2 GiB each as CUDA counts), 8 x 32768 tokens, utilization 0.9
TP   fits   weights/GPU   KV cache   KV tokens   max context   requests
───────────────────────────────────────────────────────────────────────
 1   no       131.4 GiB        0 B           0             0       0.00
 2   no        65.7 GiB    1.5 GiB       9,568         1,184       0.29
 4   yes       32.9 GiB   34.3 GiB     449,760        56,208      13.73
  TP 1: weights 131.4 GiB + activations 2.0 GiB + non-torch 0.3 GiB exceed the 71.3 GiB vLLM may use per GPU
  TP 2: 8 request(s) of 32768 tokens need 40.0 GiB of KV cache per GPU; 1.5 GiB are left
  vllm serve flags: --tensor-parallel-size 4 --max-model-len 32768 --gpu-memory-utilization 0.9 --kv-cache-dtype auto
"""  # noqa: E501


@pytest.fixture(scope="module")
def llama_70b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "Llama-3.1-70B-Instruct"
    return write_checkpoint(path, published.LLAMA_3_1_70B, dense(published.LLAMA_3_1_70B))


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")


def test_a_70b_model_on_four_h100s(capsys: pytest.CaptureFixture[str], llama_70b: Path) -> None:
    code, out, err = run_cli(
        capsys, "size", "--model", str(llama_70b), "--gpu", "h100x4",
        "--context", "32768", "--concurrency", "8",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out == LLAMA_70B_ON_4_H100


def test_json_carries_every_tensor_parallel_size(
    capsys: pytest.CaptureFixture[str], llama_70b: Path
) -> None:
    code, out, _ = run_cli(
        capsys, "size", "--model", str(llama_70b), "--gpu", "h200x2", "--kv-cache-dtype", "fp8",
        "--json",
    )  # fmt: skip
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert result["model"] == "Llama-3.1-70B-Instruct"
    assert result["weight_bytes"] == 141_107_412_992
    assert result["kv_bytes_per_token"] == 163_840  # fp8: one byte per value
    assert result["gpus"]["memory_total_mib"] == 143771
    assert result["recommended_tensor_parallel_size"] == 2
    one, two = result["tensor_parallel"]
    assert (one["fits"], two["fits"]) == (False, True)
    assert two["flags"] == [
        "--tensor-parallel-size", "2", "--max-model-len", "131072",
        "--gpu-memory-utilization", "0.9", "--kv-cache-dtype", "fp8",
    ]  # fmt: skip


def test_gpu_facts_from_nvidia_smi(
    capsys: pytest.CaptureFixture[str], llama_70b: Path, tmp_path: Path
) -> None:
    facts = tmp_path / "gpus.csv"
    facts.write_text("NVIDIA H200, 143771, 616\nNVIDIA H200, 143771, 616\n")
    code, out, _ = run_cli(
        capsys, "size", "--model", str(llama_70b), "--gpu-facts", str(facts), "--json"
    )
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert (result["gpus"]["name"], result["gpus"]["count"]) == ("NVIDIA H200", 2)
    assert result["fits"]


def test_without_gpus_it_says_how_to_name_them(
    capsys: pytest.CaptureFixture[str], llama_70b: Path
) -> None:
    code, out, err = run_cli(capsys, "size", "--model", str(llama_70b))
    assert (code, out) == (40, "")
    assert err == (
        "Error: no GPUs to size for\n"
        "Hint: pass --gpu TYPE[xN], --gpu-memory GiB[xN] or --gpu-facts FILE, or give the spec "
        "a gpus: list\n"
    )


def test_an_unknown_gpu_type_lists_the_known_ones(
    capsys: pytest.CaptureFixture[str], llama_70b: Path
) -> None:
    code, _, err = run_cli(capsys, "size", "--model", str(llama_70b), "--gpu", "h300")
    assert code == 40
    assert err.splitlines() == [
        "Error: unknown GPU type 'h300'",
        "Hint: use one of h200, h100, a100-80, a100-40, l40s, l4, a10, t4, b200, rtx-pro-6000 "
        "(optionally xN), or --gpu-memory GiB[xN]",
    ]


def test_a_spec_names_its_gpus_and_lists_what_it_cannot_size(
    capsys: pytest.CaptureFixture[str], llama_70b: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\nname: s\nrelease: '1'\ntargets: [{os: debian-12, arch: amd64}]\n"
        f"models:\n  - {{name: big, source: '{llama_70b}', format: safetensors}}\n"
        "  - {name: hub, source: 'hf://org/repo', revision: '" + "a" * 40 + "'}\n"
        "gpus:\n  - {type: h200, count: 2}\n"
    )
    code, out, _ = run_cli(capsys, "size", "--spec", str(spec), "--json")
    assert code == 0
    document = json.loads(out)
    assert [(r["model"], r["gpus"]["count"], r["fits"]) for r in document["results"]] == [
        ("big", 2, True)
    ]
    assert document["not_sized"] == [
        {
            "model": "hub",
            "reason": "fetched when the bundle is built: size the bundle with --bundle",
        }
    ]


def test_the_gpu_table_and_its_sources(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "size", "--list-gpus")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "type            memory.total  reserved  source"
    assert lines[1].startswith("h200              143771 MiB   616 MiB  141 GB HBM3e;")
