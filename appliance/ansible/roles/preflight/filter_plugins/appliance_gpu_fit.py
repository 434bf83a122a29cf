"""preflight's ``appliance_gpu_fit`` filter: the GPU verdict, computed by appliance itself.

Filters run on the controller, inside the installer's own environment (the role ships in the
appliance package and runs from it), so the verdict is ``appliance.sizing.judge``, the same
code as `appliance size`; the host only answered nvidia-smi's query.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.errors import ApplianceError
from appliance.sizing.judge import judge_host


def appliance_gpu_fit(host_sizing: dict[str, Any], nvidia_smi: str) -> dict[str, Any]:
    """Judge the host's planned vLLM models against the GPUs ``nvidia_smi`` lists."""
    try:
        return judge_host(host_sizing, nvidia_smi)
    except ApplianceError as error:
        # Unreadable GPU facts: refuse with the reason rather than guess.
        return {
            "ok": False,
            "message": error.message,
            "gpus": "",
            "settings": {},
            "placement": {},
        }


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"appliance_gpu_fit": appliance_gpu_fit}
