"""Preflight's verdict for one GPU node: do the models the installer planned for it fit the
GPUs nvidia-smi reports there, and with which vLLM settings.

The installer sizes each model from the staged bundle (``host_sizing``, built by
``appliance.install.sizing``); preflight reads the GPUs on the host and passes nvidia-smi's
answer here (through the role's ``appliance_gpu_fit`` filter). Settings the inventory gives
(``explicit``) are kept as given and judged as such. Models on one node run side by side, each
on GPUs of its own (``appliance.sizing.placement``), when their tensor-parallel sizes add up to
no more than the node has; else they share its first GPUs, each with an equal part of the
memory unless the inventory sets the utilisation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from appliance.sizing.gpus import GIB, GpuSet, parse_nvidia_smi, size_text
from appliance.sizing.model import ModelFacts
from appliance.sizing.placement import disjoint, shared
from appliance.sizing.vllm import (
    DEFAULT_UTILIZATION,
    MIN_CONTEXT,
    TENSOR_PARALLEL_SIZES,
    Estimate,
    Settings,
    choose,
    estimate,
)


def judge_host(host_sizing: dict[str, Any], nvidia_smi: str) -> dict[str, Any]:
    """``{"ok", "message", "gpus", "settings": {model: vLLM settings}, "placement": {model:
    {"gpus": [nvidia-smi indices]}}}`` for one host."""
    sets = parse_nvidia_smi(nvidia_smi)
    # Tensor parallelism spans every GPU of the node; the smallest one bounds each share.
    smallest = min(sets, key=lambda s: s.gpu.cuda_bytes).gpu
    gpus = GpuSet(smallest, sum(s.count for s in sets))
    models = [ModelFacts.from_dict(m) for m in host_sizing.get("models", [])]
    explicit: dict[str, Any] = host_sizing.get("explicit", {})
    # Side by side first: each model sized as if alone, on GPUs of its own when they add up.
    alone = float(explicit.get("gpu_memory_utilization") or DEFAULT_UTILIZATION)
    settings, refusals = _size(models, gpus, explicit, alone)
    placed = None
    if not refusals:
        placed = disjoint({n: s["tensor_parallel_size"] for n, s in settings.items()}, gpus.count)
    if placed is None:
        share = float(
            explicit.get("gpu_memory_utilization") or DEFAULT_UTILIZATION / max(len(models), 1)
        )
        settings, refusals = _size(models, gpus, explicit, share)
        placed = shared({n: s["tensor_parallel_size"] for n, s in settings.items()})
    label = f"{gpus.label} ({gpus.gpu.cuda_bytes / GIB:.1f} GiB each as CUDA counts)"
    return {
        "ok": not refusals,
        "message": " ".join(refusals) or f"every model fits {label}",
        "gpus": label,
        "settings": settings,
        "placement": {name: {"gpus": indices} for name, indices in placed.items()},
    }


def _size(
    models: list[ModelFacts], gpus: GpuSet, explicit: dict[str, Any], share: float
) -> tuple[dict[str, Any], list[str]]:
    """Each model's vLLM settings at ``share`` of each GPU's memory, and the refusals."""
    settings: dict[str, Any] = {}
    refusals = []
    for model in models:
        tp = explicit.get("tensor_parallel_size")
        context = explicit.get("max_model_len")
        wanted = Settings(
            utilization=round(share, 4),
            kv_cache_dtype=str(explicit.get("kv_cache_dtype") or "auto"),
            context=int(context) if context else None,
            tensor_parallel_sizes=(int(tp),) if tp else TENSOR_PARALLEL_SIZES,
        )
        minimum = int(context) if context else min(MIN_CONTEXT, model.architecture.max_context)
        estimates = estimate(model, gpus, wanted)
        chosen = choose(estimates, minimum)
        if chosen is None:
            refusals.append(_refusal(model, gpus, wanted, estimates, minimum, explicit))
        else:
            settings[model.name] = chosen.settings()
    return settings, refusals


def _refusal(
    model: ModelFacts,
    gpus: GpuSet,
    wanted: Settings,
    estimates: list[Estimate],
    minimum: int,
    explicit: dict[str, Any],
) -> str:
    """Why ``model`` cannot be served here, with the numbers and what would serve it."""
    head = (
        f"model {model.name} ({size_text(model.weight_bytes)} of weights, "
        f"{model.architecture.kv_bytes_per_token(2) / 1024:.0f} KiB of KV cache per token) does "
        f"not fit {gpus.label} ({gpus.gpu.cuda_bytes / GIB:.1f} GiB each as CUDA counts, "
        f"{wanted.utilization:g} of it for vLLM)"
    )
    best = max(estimates, key=lambda e: e.kv_cache_bytes, default=None)
    if best is None:
        detail = f"its {model.architecture.attention_heads} attention heads do not split over them"
    elif best.kv_cache_bytes > 0:
        detail = (
            f"at tensor parallel {best.tensor_parallel_size} the KV cache holds "
            f"{best.max_context} tokens per request, fewer than the {minimum} required"
        )
    else:
        detail = f"at tensor parallel {best.tensor_parallel_size}, {best.reason}"
    options = [_more_gpus(model, gpus, wanted, minimum)]
    options.append(
        "a 4-bit checkpoint (AWQ or GPTQ)"
        if model.architecture.quantization
        else "a quantised checkpoint (AWQ, GPTQ or FP8 weights)"
    )
    if best is not None and best.kv_cache_bytes > 0:
        # The weights fit: the KV cache is what is short.
        if wanted.kv_cache_dtype == "auto":
            options.append("runtime_vllm_kv_cache_dtype: fp8 (half the KV cache per token)")
        options.append("a shorter context (runtime_vllm_max_model_len)")
    if explicit:
        given = ", ".join(f"runtime_vllm_{k}: {v}" for k, v in sorted(explicit.items()))
        options.append(f"other inventory settings than {given}")
    return f"{head}: {detail}. Options: {'; '.join(o for o in options if o)}."


def _more_gpus(model: ModelFacts, gpus: GpuSet, wanted: Settings, minimum: int) -> str:
    any_split = replace(wanted, tensor_parallel_sizes=TENSOR_PARALLEL_SIZES)
    for count in (2, 4, 8):
        if count <= gpus.count:
            continue
        chosen = choose(estimate(model, GpuSet(gpus.gpu, count), any_split), minimum)
        if chosen is not None:
            tp = chosen.tensor_parallel_size
            return f"more GPUs ({tp} of these at tensor parallel {tp} would serve it)"
    return "more or larger GPUs (8 of these would not serve it)"
