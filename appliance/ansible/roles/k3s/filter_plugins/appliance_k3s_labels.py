"""k3s's ``appliance_k3s_labels`` filter: a node's labels from its GPU facts (``appliance_gpu``);
``appliance_k3s_ready_nodes``: the names of the Ready nodes in kubectl's JSON.

Filters run on the controller, inside the installer's own environment, so this is
``appliance.platform.k3s.gpu_labels``, the code the unit tests check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from appliance.platform.k3s import gpu_labels, ready_nodes


def appliance_k3s_labels(gpu_fact: dict[str, Any] | None) -> list[str]:
    return gpu_labels(gpu_fact or {})


def appliance_k3s_ready_nodes(kubectl_json: str) -> list[str]:
    return ready_nodes(json.loads(kubectl_json))


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "appliance_k3s_labels": appliance_k3s_labels,
            "appliance_k3s_ready_nodes": appliance_k3s_ready_nodes,
        }
