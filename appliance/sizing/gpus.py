"""GPUs as data: the memory each kind reports, where the number comes from, and the GPU facts
of a real host (``nvidia-smi --query-gpu=name,memory.total,memory.reserved``).

Two numbers matter. nvidia-smi's ``memory.total`` is the board's memory as the driver sees it;
``memory.reserved`` is what the driver keeps for itself. CUDA (and so vLLM, through
``torch.cuda.mem_get_info``) reports their difference as the device's total, and vLLM's
``gpu_memory_utilization`` is a fraction of that difference.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from appliance.errors import SizingError

MIB = 1 << 20
GIB = 1 << 30
# When a host's driver does not report memory.reserved and the kind's own reservation was never
# measured: the largest reservation measured below (H200, 616 MiB), to err on the safe side.
DEFAULT_RESERVED_MIB = 616


def size_text(count: float) -> str:
    """Bytes for people: GiB, or MiB below a tenth of one."""
    return f"{count / GIB:.1f} GiB" if count >= GIB / 10 else f"{count / MIB:.1f} MiB"


@dataclass(frozen=True)
class GpuType:
    key: str  # what --gpu and the spec's gpus[].type take
    name: str  # as nvidia-smi names it
    memory_mib: int  # nvidia-smi memory.total
    reserved_mib: int  # nvidia-smi memory.reserved (measured, or DEFAULT_RESERVED_MIB)
    source: str

    @property
    def cuda_bytes(self) -> int:
        """What CUDA and vLLM count as the device's total memory."""
        return (self.memory_mib - self.reserved_mib) * MIB


@dataclass(frozen=True)
class GpuSet:
    """``count`` GPUs of one kind on one node: what tensor parallelism can span."""

    gpu: GpuType
    count: int

    @property
    def label(self) -> str:
        return f"{self.count}x {self.gpu.name}"


_SMI = "nvidia-smi --query-gpu=name,memory.total (driver 580.95.05; public logs)"
GPU_TYPES: dict[str, GpuType] = {
    gpu.key: gpu
    for gpu in (
        GpuType(
            "h200",
            "NVIDIA H200",
            143771,
            616,
            "141 GB HBM3e; memory.total 143771 MiB and reserved 616 MiB measured on an H200 "
            "(tests/fixtures/gpu/h200-580, driver 580.159.04)",
        ),
        GpuType(
            "h100",
            "NVIDIA H100 80GB HBM3",
            81559,
            470,
            "80 GB HBM3 (SXM; the PCIe card reports the same 81559 MiB); reserved: 81559 MiB "
            "less the 79.19 GiB CUDA total vLLM 0.19.0 logged (llm-d-planner accuracy runs)",
        ),
        GpuType("a100-80", "NVIDIA A100-SXM4-80GB", 81920, DEFAULT_RESERVED_MIB, _SMI),
        GpuType("a100-40", "NVIDIA A100-SXM4-40GB", 40960, DEFAULT_RESERVED_MIB, _SMI),
        GpuType("l40s", "NVIDIA L40S", 46068, DEFAULT_RESERVED_MIB, f"48 GB GDDR6; {_SMI}"),
        GpuType(
            "l4",
            "NVIDIA L4",
            23034,
            475,
            f"24 GB GDDR6; {_SMI}; reserved: less the 22.03 GiB PyTorch reported",
        ),
        GpuType(
            "a10",
            "NVIDIA A10",
            23028,
            439,
            f"{_SMI}; reserved: less the 22.06 GiB PyTorch reported",
        ),
        GpuType(
            "t4", "Tesla T4", 15360, 440, f"{_SMI}; reserved: less the 14.57 GiB PyTorch reported"
        ),
        GpuType("b200", "NVIDIA B200", 183359, DEFAULT_RESERVED_MIB, _SMI),
        GpuType(
            "rtx-pro-6000",
            "NVIDIA RTX PRO 6000 Blackwell Server Edition",
            97887,
            DEFAULT_RESERVED_MIB,
            _SMI,
        ),
    )
}

_COUNT = re.compile(r"^(?P<what>.+?)(?:x(?P<count>\d+))?$")


def parse_gpu(text: str) -> GpuSet:
    """``h200``, ``h200x8``: a kind from the table, and how many of them a node has."""
    what, count = _split(text, "--gpu")
    key = what.lower()
    if key not in GPU_TYPES:
        raise SizingError(
            f"unknown GPU type {what!r}",
            hint=f"use one of {', '.join(GPU_TYPES)} (optionally xN), or --gpu-memory GiB[xN]",
        )
    return GpuSet(GPU_TYPES[key], count)


def parse_gpu_memory(text: str) -> GpuSet:
    """``80``, ``80x4``: GPUs with this many GiB that CUDA reports as the total."""
    what, count = _split(text, "--gpu-memory")
    try:
        gib = float(what)
    except ValueError:
        gib = 0.0
    if not 0 < gib <= 4096:
        raise SizingError(
            f"--gpu-memory {text!r} is not a size in GiB",
            hint="write the GPU memory CUDA reports in GiB, e.g. 79.19 or 79.19x8",
        )
    mib = round(gib * 1024)
    return GpuSet(GpuType(f"{gib:g}gib", f"{gib:g} GiB GPU", mib, 0, "--gpu-memory"), count)


def custom_gpu(memory_gib: float, count: int) -> GpuSet:
    """GPUs a spec names by memory rather than by type."""
    return parse_gpu_memory(f"{memory_gib:g}x{count}")


def _split(text: str, option: str) -> tuple[str, int]:
    match = _COUNT.match(text.strip())
    count = int(match["count"]) if match and match["count"] else 1
    if not match or not 1 <= count <= 64:
        raise SizingError(
            f"{option} {text!r}: the count after x must be between 1 and 64",
            hint=f"e.g. {option} h200x8",
        )
    return match["what"], count


def parse_nvidia_smi(text: str) -> list[GpuSet]:
    """The GPU sets of one host from ``nvidia-smi --query-gpu=name,memory.total[,memory.reserved]
    --format=csv[,noheader][,nounits]``: GPUs with the same name and memory form one set."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)]
    if rows and rows[0][0].strip().lower() == "name":
        rows = rows[1:]
    if not rows:
        raise SizingError(
            "the GPU facts list no GPU",
            hint="pass the output of nvidia-smi --query-gpu=name,memory.total,memory.reserved "
            "--format=csv,noheader,nounits",
        )
    groups: dict[tuple[str, int, int], int] = {}
    for row in rows:
        if len(row) not in (2, 3):
            raise SizingError(
                f"GPU facts line {','.join(row)!r} is not name, memory.total[, memory.reserved]",
                hint="query exactly --query-gpu=name,memory.total,memory.reserved",
            )
        name = row[0].strip()
        total = _mib(row[1])
        known = next((g for g in GPU_TYPES.values() if g.name == name), None)
        reserved = (
            _mib(row[2])
            if len(row) == 3
            else (known.reserved_mib if known else DEFAULT_RESERVED_MIB)
        )
        key = (name, total, reserved)
        groups[key] = groups.get(key, 0) + 1
    return [
        GpuSet(GpuType(name.lower().replace(" ", "-"), name, total, reserved, "nvidia-smi"), count)
        for (name, total, reserved), count in groups.items()
    ]


def _mib(cell: str) -> int:
    value = cell.strip().removesuffix("MiB").strip()
    if not value.isdigit():
        raise SizingError(
            f"GPU memory {cell.strip()!r} is not a number of MiB",
            hint="query nvidia-smi with --format=csv,noheader,nounits",
        )
    return int(value)
