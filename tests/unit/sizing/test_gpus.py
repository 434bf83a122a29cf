"""GPU types, --gpu and --gpu-memory, and the GPU facts nvidia-smi gives on a real host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance.errors import SizingError
from appliance.sizing.gpus import GIB, MIB, parse_gpu, parse_gpu_memory, parse_nvidia_smi

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "gpu"
STANDIN = FIXTURES / "nvidia-smi"


def _fixture_query() -> str:
    """The csv query as it ran on the H200 (with header and units)."""
    lines = (FIXTURES / "h200-580" / "gpu-facts.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("index, name,"))
    return "\n".join(lines[start : start + 2])


def test_the_h200s_own_facts_parse_to_what_cuda_reports() -> None:
    # The capture queried more fields; the columns sizing reads are name and memory.total.
    text = _fixture_query()
    name_total = "\n".join(
        ", ".join(row.split(", ")[i] for i in (1, 3)) for row in text.splitlines()
    )
    (gpus,) = parse_nvidia_smi(name_total)
    assert (gpus.gpu.name, gpus.gpu.memory_mib, gpus.count) == ("NVIDIA H200", 143771, 1)
    # No memory.reserved column: the table's reservation for an H200, measured (nvidia-smi -q
    # of the same machine: Reserved 616 MiB).
    assert gpus.gpu.reserved_mib == 616
    assert (
        "Reserved                                       : 616 MiB"
        in (FIXTURES / "h200-580" / "nvidia-smi-q.txt").read_text()
    )
    assert gpus.gpu.cuda_bytes == (143771 - 616) * MIB
    assert parse_gpu("h200").gpu.cuda_bytes == gpus.gpu.cuda_bytes


def test_the_stand_in_answers_as_the_h200_did() -> None:
    answer = subprocess.run(
        [str(STANDIN), "--query-gpu=index,name,memory.total,memory.used", "--format=csv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The fixture's columns index, name, memory.total and memory.used, header and row.
    expected = [
        ", ".join(row.split(", ")[i] for i in (0, 1, 3, 4)) for row in _fixture_query().splitlines()
    ]
    assert answer.splitlines() == expected


def test_several_gpus_of_one_kind_form_one_set() -> None:
    (gpus,) = parse_nvidia_smi("NVIDIA H200, 143771, 616\n" * 8)
    assert gpus.count == 8
    assert gpus.label == "8x NVIDIA H200"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h100", ("NVIDIA H100 80GB HBM3", 1)), ("L40Sx4", ("NVIDIA L40S", 4))],
)
def test_gpu_types_by_name(text: str, expected: tuple[str, int]) -> None:
    gpus = parse_gpu(text)
    assert (gpus.gpu.name, gpus.count) == expected


def test_gpu_memory_is_what_cuda_reports() -> None:
    gpus = parse_gpu_memory("79.19x2")
    assert gpus.count == 2
    assert abs(gpus.gpu.cuda_bytes - 79.19 * GIB) < MIB


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_gpu("h300"), "unknown GPU type 'h300'"),
        (
            lambda: parse_gpu("h200x99"),
            "--gpu 'h200x99': the count after x must be between 1 and 64",
        ),
        (lambda: parse_gpu_memory("lots"), "--gpu-memory 'lots' is not a size in GiB"),
        (lambda: parse_nvidia_smi(""), "the GPU facts list no GPU"),
        (
            lambda: parse_nvidia_smi("NVIDIA H200, lots, 616"),
            "GPU memory 'lots' is not a number of MiB",
        ),
    ],
)
def test_bad_gpu_input_is_refused_clearly(call: object, message: str) -> None:
    with pytest.raises(SizingError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.message == message or caught.value.message.startswith(message)
