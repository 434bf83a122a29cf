"""Which GPUs of a node each vLLM model runs on, and what its unit may open to reach them.

Models get disjoint GPUs when their tensor-parallel sizes fit side by side on the node (each
then has its GPUs' memory to itself); otherwise they share the node's first GPUs, each within
its memory share (``appliance.sizing.judge`` decides which, and sizes accordingly).

GPUs are named by nvidia-smi's index, which is PCI bus order; the unit sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA counts the same way (its default order is
"fastest first"). The device nodes are named by the driver's minor number, which need not equal
the index on a multi-GPU board: it comes from the GPU facts (``nvidia-smi -q -x``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# What every CUDA process opens besides its GPUs: the control device and unified memory.
# nvidia-uvm-tools is for profilers; nvidia-caps only for MIG instances (not placed here).
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
# Without GPU facts a unit may open every NVIDIA device (systemd's device classes).
ANY_NVIDIA_DEVICE = ("char-nvidia-frontend", "char-nvidia-uvm")


def disjoint(tensor_parallel: Mapping[str, int], gpu_count: int) -> dict[str, list[int]] | None:
    """Consecutive blocks of GPU indices, one per model in the given order, when the models'
    tensor-parallel sizes add up to no more than ``gpu_count``; else None."""
    if sum(tensor_parallel.values()) > gpu_count:
        return None
    placed: dict[str, list[int]] = {}
    start = 0
    for name, size in tensor_parallel.items():
        placed[name] = list(range(start, start + size))
        start += size
    return placed


def shared(tensor_parallel: Mapping[str, int]) -> dict[str, list[int]]:
    """Every model on the node's first GPUs (as many as its tensor-parallel size)."""
    return {name: list(range(size)) for name, size in tensor_parallel.items()}


def unit_access(
    indices: Sequence[int] | None, gpu_facts: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What one model's unit needs to reach its GPUs: the environment CUDA reads and the device
    nodes systemd lets it open (``DeviceAllow=``, each with ``rw``).

    ``indices``: the model's GPUs (nvidia-smi indices), None when sizing did not place it (no
    GPU answered at preflight). ``gpu_facts``: the ``appliance_gpu`` fact, or None. Without
    either, the unit may open every NVIDIA device and CUDA sees every GPU.
    """
    gpus = list((gpu_facts or {}).get("gpus") or [])
    if indices is None or not gpus:
        return {"environment": {}, "devices": list(ANY_NVIDIA_DEVICE), "gpus": []}
    by_index = {int(gpu["index"]): gpu for gpu in gpus}
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise ValueError(
            f"GPU {', '.join(map(str, missing))} is not among the {len(gpus)} GPUs the facts list"
        )
    minors = [str(by_index[i].get("minor_number", "")) for i in indices]
    if not all(m.isdigit() for m in minors):
        raise ValueError(f"the GPU facts give no minor number for GPU {list(indices)}")
    return {
        "environment": {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, indices)),
        },
        "devices": [*CONTROL_DEVICES, *(f"/dev/nvidia{m}" for m in minors)],
        "gpus": [
            {
                "index": i,
                "uuid": by_index[i].get("uuid", ""),
                "bus_id": by_index[i].get("bus_id", ""),
            }
            for i in indices
        ],
    }
