"""k3s's ``appliance_k3s_labels`` filter: a node's labels from its GPU facts (``appliance_gpu``).

Filters run on the controller, inside the installer's own environment, so this is
``appliance.platform.k3s.gpu_labels``, the code the unit tests check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.platform.k3s import gpu_labels


def appliance_k3s_labels(gpu_fact: dict[str, Any] | None) -> list[str]:
    return gpu_labels(gpu_fact or {})


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"appliance_k3s_labels": appliance_k3s_labels}
