"""runtime_vllm's ``appliance_vllm_gpu_access`` filter: which GPUs one model's unit sees and may
open, from the sizing's placement (``appliance_vllm_settings``) and the GPU facts
(``appliance_gpu``, from ``nvidia-smi -q -x``).

Filters run on the controller, inside the installer's own environment, so this is
``appliance.sizing.placement``, the code the unit tests and tests/gpu/run.sh check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible.errors import AnsibleFilterError

from appliance.sizing.placement import unit_access


def appliance_vllm_gpu_access(
    model_settings: dict[str, Any] | None, gpu_facts: dict[str, Any] | None
) -> dict[str, Any]:
    """``{"environment", "devices", "gpus"}`` for the model whose sized settings are given."""
    try:
        return unit_access((model_settings or {}).get("gpus"), gpu_facts)
    except ValueError as error:
        raise AnsibleFilterError(f"runtime_vllm: {error}") from error


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"appliance_vllm_gpu_access": appliance_vllm_gpu_access}
