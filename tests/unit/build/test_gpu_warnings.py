"""build-bundle sizes the models it just fetched against the spec's gpus: and warns, with the
numbers, about a model that fits none of them (offline: a local model, no packages)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.build import BuildOptions, build_bundle
from appliance.build.registry import SOURCES
from appliance.bundle.signing import keygen
from appliance.fetchers.source import SourceKind
from tests.fixtures.cli import run_cli
from tests.fixtures.hosts import ROOT

OFFLINE: dict[str, SourceKind[Any, Any]] = {
    name: SOURCES[name] for name in ("models-local", "ansible-content")
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu-warnings")
    keygen(root / "key", "unit test")
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "hf", str(root / "tiny")],
        check=True,
        capture_output=True,
    )
    return root


def build(root: Path, gpus: str) -> list[str]:
    spec = root / "spec.yaml"
    spec.write_text(
        "version: 1\nname: unit\nrelease: '1'\ntargets: [{os: debian-12, arch: amd64}]\n"
        "stack: {runtime: vllm}\n"
        "models:\n  - {name: tiny, source: tiny, format: safetensors}\n" + gpus
    )
    options = BuildOptions(spec, root / "out", root / "key", cache=root / "cache", force=True)
    report = build_bundle(options, sources=OFFLINE)
    return [w for w in report.warnings if "packages" not in w]


def test_a_model_that_fits_a_named_gpu_builds_without_a_warning(workspace: Path) -> None:
    assert build(workspace, "gpus:\n  - {type: l4}\n  - {memory_gib: 1}\n") == []


def test_a_model_that_fits_no_named_gpu_is_warned_about_with_the_numbers(workspace: Path) -> None:
    assert build(workspace, "gpus:\n  - {memory_gib: 1.5, count: 2}\n") == [
        "model tiny fits none of the spec's GPUs: tiny (1.9 MiB of weights) does not fit 2x "
        "1.5 GiB GPU: at tensor parallel 1, the CUDA context and graphs alone need about 2.4 "
        "GiB of the 1.5 GiB GPU. Options: more or larger GPUs, a quantised checkpoint (AWQ, "
        "GPTQ, FP8), --kv-cache-dtype fp8, or a shorter context (--max-model-len)"
    ]


def test_without_gpus_nothing_is_sized(workspace: Path) -> None:
    assert build(workspace, "") == []


def test_size_reads_the_models_of_a_built_bundle(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build(workspace, "")
    code, out, _ = run_cli(
        capsys, "size", "--bundle", str(workspace / "out"), "--gpu", "l4", "--json"
    )
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert (result["model"], result["format"], result["fits"]) == ("tiny", "safetensors", True)
    # 2 layers x 2 KV heads x (64 + 64) x 2 bytes, from the bundle's copy of config.json.
    assert result["kv_bytes_per_token"] == 1024
