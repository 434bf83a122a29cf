"""What preflight needs to judge whether each GPU node's vLLM models fit its GPUs.

Computed once, here, from the staged (verified) release: each model's facts from its own files
(``appliance.sizing``), per host the models the topology gives it, and the vLLM settings the
inventory sets for that host (which the verdict keeps, and which the runtime_vllm role uses
before anything sizing proposes). The play receives it as ``appliance_gpu_sizing``; preflight
reads the GPUs on each host and judges with ``appliance.sizing.judge``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.install.topology import Topology
from appliance.roles import role_defaults
from appliance.sizing.sources import from_manifest_models

# The runtime_vllm variables sizing proposes a value for; set in the inventory, they win.
EXPLICIT = ("tensor_parallel_size", "max_model_len", "gpu_memory_utilization", "kv_cache_dtype")


def gpu_sizing(
    topology: Topology,
    host_vars: Mapping[str, Mapping[str, Any]],
    models: list[dict[str, Any]],
    release: Path,
    on_note: Callable[[str], None] = lambda _note: None,
) -> dict[str, dict[str, Any]]:
    """``{host: {"models": [facts], "explicit": {setting: value}}}`` for each host that serves
    models with vLLM on GPUs."""
    by_name = {model["name"]: model for model in models}
    sizing: dict[str, dict[str, Any]] = {}
    cache: dict[str, Any] = {}
    for host, plan in topology.hosts.items():
        runtime = plan.runtime
        variables = host_vars.get(host, {})
        if runtime is None or runtime.kind != "vllm" or not runtime.models:
            continue
        device = variables.get(
            "runtime_vllm_device", role_defaults("runtime_vllm")["runtime_vllm_device"]
        )
        if device != "gpu":
            continue
        facts = []
        for name in runtime.models:
            if name not in by_name:
                # A site model: its files are in the store, not the release; not sized here.
                on_note(f"site model {name} not sized: preflight cannot check its fit")
                continue
            if name not in cache:
                found = from_manifest_models(release, [by_name[name]])
                for unsized, reason in found.unsized:
                    on_note(f"model {unsized} not sized ({reason}): preflight cannot check its fit")
                cache[name] = found.sized[0].as_dict() if found.sized else None
            if cache[name] is not None:
                facts.append(cache[name])
        explicit = {
            key: variables[f"runtime_vllm_{key}"]
            for key in EXPLICIT
            if variables.get(f"runtime_vllm_{key}") not in (None, "", 0, 0.0)
        }
        if facts:
            sizing[host] = {"models": facts, "explicit": explicit}
    return sizing
