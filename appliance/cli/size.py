"""``appliance size``: will these models fit on these GPUs, and with which vLLM settings."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from appliance.cli.output import Output, human_bytes
from appliance.errors import SizingError

if TYPE_CHECKING:
    from appliance.sizing.gpus import GpuType
    from appliance.sizing.report import Verdict

_PATH = click.Path(path_type=Path, exists=True)


@click.command("size")
@click.option(
    "--spec",
    "spec",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A spec: its local models, and its gpus: unless --gpu is given.",
)
@click.option(
    "--bundle",
    "bundles",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    multiple=True,
    help="A bundle directory: every model it carries.",
)
@click.option(
    "--model",
    "models",
    type=_PATH,
    multiple=True,
    help="A checkpoint directory, a .gguf file or an Ollama models directory.",
)
@click.option(
    "--gpu",
    "gpus",
    multiple=True,
    metavar="TYPE[xN]",
    help="GPUs per node by type, e.g. h200x8 (--list-gpus shows the types).",
)
@click.option(
    "--gpu-memory",
    "memories",
    multiple=True,
    metavar="GiB[xN]",
    help="GPUs per node by the memory CUDA reports, e.g. 79.19x4.",
)
@click.option(
    "--gpu-facts",
    type=click.File("r"),
    metavar="FILE",
    help="A GPU host's `nvidia-smi --query-gpu=name,memory.total,memory.reserved "
    "--format=csv,noheader,nounits` ('-' reads stdin).",
)
@click.option(
    "--context", type=click.IntRange(1), help="Tokens per request (default: the model's)."
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Requests of --context tokens served at once.",
)
@click.option(
    "--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default="auto", show_default=True
)
@click.option(
    "--gpu-memory-utilization",
    "utilization",
    type=click.FloatRange(0.05, 1.0),
    default=0.9,
    show_default=True,
    help="The share of each GPU vLLM may use.",
)
@click.option("--list-gpus", is_flag=True, help="List the GPU types and their sources.")
@click.pass_obj
def size_command(
    output: Output,
    spec: Path | None,
    bundles: tuple[Path, ...],
    models: tuple[Path, ...],
    gpus: tuple[str, ...],
    memories: tuple[str, ...],
    gpu_facts: TextIO | None,
    context: int | None,
    concurrency: int,
    kv_cache_dtype: str,
    utilization: float,
    list_gpus: bool,
) -> None:
    """Size models for GPUs from their files alone: weights from the safetensors or GGUF
    headers, the KV cache per token from config.json, and vLLM's own memory budget. For each
    tensor-parallel size the GPUs allow: whether it fits, the KV cache in GiB and tokens, the
    longest context at --concurrency, the requests of --context served at once, and the vLLM
    flags. Reads no weights, needs no GPU and no network.

    \b
    Examples:
      appliance size --model ./Llama-3.1-8B-Instruct --gpu h100
      appliance size --bundle build/demo --gpu h200x8 --context 32768 --concurrency 16
      appliance size --spec appliance.yaml          (its gpus: entries)
      ssh gpu-node nvidia-smi --query-gpu=name,memory.total,memory.reserved \\
          --format=csv,noheader,nounits | appliance size --model m --gpu-facts -
    """
    from appliance.sizing import gpus as gpu_table
    from appliance.sizing import sources
    from appliance.sizing.report import size_models
    from appliance.sizing.vllm import Settings

    if list_gpus:
        types = list(gpu_table.GPU_TYPES.values())
        output.result(
            {"ok": True, "gpus": [asdict(t) for t in types]},
            human=_gpu_list(types),
        )
        return
    found = sources.Models()
    if spec is not None:
        found.extend(sources.from_spec(spec))
    for bundle in bundles:
        found.extend(sources.from_bundle(bundle))
    for model in models:
        found.extend(sources.from_path(model))
    if not found.sized and not found.unsized:
        raise click.UsageError("name models to size: --model PATH, --bundle DIR or --spec FILE")
    gpu_sets = [gpu_table.parse_gpu(g) for g in gpus]
    gpu_sets += [gpu_table.parse_gpu_memory(m) for m in memories]
    if gpu_facts is not None:
        gpu_sets += gpu_table.parse_nvidia_smi(gpu_facts.read())
    gpu_sets = gpu_sets or found.gpus
    if not gpu_sets:
        raise SizingError(
            "no GPUs to size for",
            hint="pass --gpu TYPE[xN], --gpu-memory GiB[xN] or --gpu-facts FILE, or give the "
            "spec a gpus: list",
        )
    settings = Settings(
        utilization=utilization,
        kv_cache_dtype=kv_cache_dtype,
        context=context,
        concurrency=concurrency,
    )
    verdicts = size_models(found.sized, gpu_sets, settings)
    output.result(
        {
            "ok": True,
            "results": [v.as_dict() for v in verdicts],
            "not_sized": [{"model": n, "reason": r} for n, r in found.unsized],
        }
    )
    if not output.json_mode and output.verbosity >= 0:
        for verdict in verdicts:
            _render(output, verdict)
        for name, reason in found.unsized:
            output.console.print(f"{name}: not sized: {reason}")


def _render(output: Output, verdict: Verdict) -> None:
    from rich import box
    from rich.table import Table

    model, arch, gpus = verdict.model, verdict.model.architecture, verdict.gpus
    first = verdict.estimates[0] if verdict.estimates else None
    dtype = first.kv_cache_dtype if first else "auto"
    per_token = arch.kv_bytes_per_token(1 if dtype == "fp8" else 2)
    output.console.print(
        f"{model.name}: {model.format}, {arch.family}, weights {human_bytes(model.weight_bytes)}, "
        f"KV cache {human_bytes(int(per_token))} per token ({dtype}), up to {arch.max_context} "
        "tokens"
    )
    for note in arch.notes:
        output.console.print(f"  {note}")
    output.console.print(
        f"  on {gpus.label} ({human_bytes(gpus.gpu.cuda_bytes)} each as CUDA counts)"
        + (
            f", {first.concurrency} x {first.context} tokens, utilization {first.utilization:g}"
            if first
            else ""
        )
    )
    if not verdict.estimates:
        output.console.print(f"  {verdict.summary()}")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header in ("TP", "fits", "weights/GPU", "KV cache", "KV tokens", "max context", "requests"):
        table.add_column(header, justify="left" if header == "fits" else "right")
    for e in verdict.estimates:
        table.add_row(
            str(e.tensor_parallel_size),
            "yes" if e.fits else "no",
            human_bytes(e.weight_bytes),
            human_bytes(max(e.kv_cache_bytes, 0)),
            f"{e.kv_cache_tokens:,}",
            f"{e.max_context:,}",
            f"{e.max_concurrency:.2f}",
        )
    output.console.print(table)
    for e in verdict.estimates:
        if not e.fits:
            output.console.print(f"  TP {e.tensor_parallel_size}: {e.reason}")
    chosen = verdict.chosen
    if chosen is None:
        output.console.print(f"  {verdict.summary()}")
        return
    if not chosen.fits:
        output.console.print(f"  {verdict.summary()}")
    if model.format == "gguf":
        # GGUF models are served by llama.cpp or Ollama here, which budget much as vLLM does
        # (weights, KV cache, compute buffers) but take no vLLM flags.
        output.console.print("  served by llama.cpp or Ollama: vLLM's memory budget as a guide")
    else:
        output.console.print(f"  vllm serve flags: {' '.join(chosen.flags())}")
    for warning in chosen.warnings:
        output.console.print(f"  note: {warning}")


def _gpu_list(types: list[GpuType]) -> str:
    lines = [f"{'type':<14}{'memory.total':>14}{'reserved':>10}  source"]
    lines += [
        f"{t.key:<14}{t.memory_mib:>10} MiB{t.reserved_mib:>6} MiB  {t.source}" for t in types
    ]
    return "\n".join(lines)
