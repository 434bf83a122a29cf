"""How vLLM spends a GPU's memory, per tensor-parallel size, and the flags that follow.

vLLM V1 budgets each GPU like this (vllm/v1/worker/gpu_worker.py, ``determine_available_memory``
and ``compile_or_warm_up_model``, v0.19.0):

    requested = total * gpu_memory_utilization          (total: what CUDA reports)
    kv_cache  = requested - (weights + activation peak of the profile run + non-torch memory)

and carves ``kv_cache`` into blocks of 16 tokens. The CUDA context and the CUDA graphs are
allocated outside that budget (the graphs after the KV cache), so they must fit in
``total * (1 - gpu_memory_utilization)``. The constants below were measured by vLLM itself: the
llm-d-planner project's startup logs of vLLM 0.19.0 on one to four H100 80GB
(github.com/llm-d-incubation/llm-d-planner, accuracy/results/v0.19.0/results_raw.csv, 2026-04),
which print each term. ``benchmarks/sizing.py`` compares this model with those runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.sizing.architecture import Architecture, LayerKv
from appliance.sizing.gpus import GIB, MIB, GpuSet
from appliance.sizing.model import ModelFacts

# vLLM's default KV cache block on CUDA (CacheConfig.block_size).
BLOCK_SIZE = 16
# vLLM's default --gpu-memory-utilization (CacheConfig.gpu_memory_utilization).
DEFAULT_UTILIZATION = 0.9
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# The profile run's activation peak, fitted to three of the measured runs and checked against the
# others (benchmarks/sizing.py). Two phases peak separately and the larger one counts:
# - the sampler's dummy run over max_num_seqs sequences, dominated by float32 logits and their
#   sorted copies, ~14.45 bytes per (sequence x vocabulary entry) over a 126 MiB floor (fitted
#   to Llama-3.1-8B, 1.89 GiB at vocabulary 128256, and gemma-2-9b, 3.65 GiB at 256000);
# - the forward pass over max_num_batched_tokens tokens, ~9.17 bytes per (token x MLP width per
#   GPU) (fitted to CodeLlama-7b, 0.77 GiB at width 11008, whose vocabulary is small).
SAMPLER_FLOOR_BYTES = 126 * MIB
SAMPLER_BYTES_PER_SEQ_VOCAB = 14.45
FORWARD_BYTES_PER_TOKEN_WIDTH = 9.17
# Non-torch memory the profile run adds (NCCL, cuBLAS workspaces, custom all-reduce buffers):
# 0.24-0.27 GiB on one GPU in 20 runs; 2.06-2.21 GiB with tensor parallelism 2 and 4 (8 was not
# measured: the same is assumed).
NON_TORCH_BYTES = {1: int(0.27 * GIB)}
NON_TORCH_PARALLEL_BYTES = int(2.21 * GIB)
# Outside the budget: the CUDA context before the first snapshot (0.51 GiB alone, 1.51-2.07 GiB
# with NCCL initialised for tensor parallelism) and the CUDA graphs (0.51-1.85 GiB measured).
CONTEXT_BYTES = {1: int(0.51 * GIB)}
CONTEXT_PARALLEL_BYTES = int(2.07 * GIB)
CUDA_GRAPH_BYTES = int(1.85 * GIB)
# The shortest context preflight accepts when nothing else is asked for (capped at the model's).
MIN_CONTEXT = 4096


@dataclass(frozen=True)
class Settings:
    utilization: float = DEFAULT_UTILIZATION
    kv_cache_dtype: str = "auto"  # auto (the model's 16-bit dtype) or fp8
    context: int | None = None  # tokens per request; None: the model's own maximum
    concurrency: int = 1
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the GPU
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    tensor_parallel_sizes: tuple[int, ...] = TENSOR_PARALLEL_SIZES


@dataclass(frozen=True)
class Estimate:
    """One model on ``tensor_parallel_size`` GPUs of ``gpus``; bytes are per GPU."""

    model: str
    gpus: GpuSet
    tensor_parallel_size: int
    context: int
    concurrency: int
    total_bytes: int
    requested_bytes: int
    weight_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    kv_cache_bytes: int
    kv_cache_tokens: int  # as vLLM's log reports it ("GPU KV cache size: N tokens")
    blocks: int
    max_context: int  # the longest request that fits `concurrency` times (0: none)
    max_concurrency: float  # requests of `context` tokens that fit at once
    fits: bool
    reason: str
    outside_bytes: int  # CUDA context and graphs, outside gpu_memory_utilization
    kv_cache_dtype: str
    utilization: float
    warnings: tuple[str, ...] = field(default=())

    @property
    def max_model_len(self) -> int:
        """The --max-model-len to run with: the asked context when it fits, else the longest."""
        return self.context if self.fits else self.max_context

    def flags(self) -> list[str]:
        return [
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--max-model-len",
            str(self.max_model_len),
            "--gpu-memory-utilization",
            f"{self.utilization:g}",
            "--kv-cache-dtype",
            self.kv_cache_dtype,
        ]

    def settings(self) -> dict[str, Any]:
        """What the runtime_vllm role takes from sizing."""
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.utilization,
            "kv_cache_dtype": self.kv_cache_dtype,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "fits": self.fits,
            "reason": self.reason,
            "context": self.context,
            "concurrency": self.concurrency,
            "per_gpu_bytes": {
                "total": self.total_bytes,
                "requested": self.requested_bytes,
                "weights": self.weight_bytes,
                "activation_peak": self.activation_bytes,
                "non_torch": self.non_torch_bytes,
                "kv_cache": self.kv_cache_bytes,
                "outside_budget": self.outside_bytes,
            },
            "kv_cache_gib": round(self.kv_cache_bytes / GIB, 2),
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_context_at_concurrency": self.max_context,
            "concurrency_at_context": round(self.max_concurrency, 2),
            "flags": self.flags() if self.max_model_len > 0 else [],
            "warnings": list(self.warnings),
        }


def batch_defaults(gpus: GpuSet) -> tuple[int, int]:
    """vLLM's defaults for the OpenAI server: (max_num_batched_tokens, max_num_seqs), larger on
    GPUs of 70 GiB and more that are not A100s (vllm/engine/arg_utils.py, get_batch_defaults,
    v0.19.0)."""
    if gpus.gpu.cuda_bytes >= 70 * GIB and "a100" not in gpus.gpu.name.lower():
        return 8192, 1024
    return 2048, 256


def estimate(model: ModelFacts, gpus: GpuSet, settings: Settings | None = None) -> list[Estimate]:
    """The model on each tensor-parallel size the GPUs allow and its heads divide."""
    settings = settings or Settings()
    arch = model.architecture
    return [
        _estimate(model, gpus, settings, tp)
        for tp in settings.tensor_parallel_sizes
        if tp <= gpus.count and _splits(arch, tp)
    ]


def choose(estimates: list[Estimate], minimum_context: int) -> Estimate | None:
    """The setting to run with: the fewest GPUs that serve the asked context; else the most
    context, if at least ``minimum_context``; else None."""
    serving = [e for e in estimates if e.fits]
    if serving:
        return min(serving, key=lambda e: e.tensor_parallel_size)
    shorter = [e for e in estimates if e.max_context >= minimum_context]
    if shorter:
        return max(shorter, key=lambda e: (e.max_context, -e.tensor_parallel_size))
    return None


def _splits(arch: Architecture, tp: int) -> bool:
    """vLLM shards attention heads evenly; KV heads either split or are replicated."""
    if arch.attention_heads % tp:
        return False
    return all(
        layer.mla or layer.kv_heads % tp == 0 or tp % layer.kv_heads == 0 for layer in arch.kv
    )


def activation_bytes(arch: Architecture, tp: int, batched_tokens: int, seqs: int) -> int:
    sampler = (
        SAMPLER_FLOOR_BYTES
        + SAMPLER_BYTES_PER_SEQ_VOCAB * min(seqs, batched_tokens) * arch.vocab_size
    )
    width = arch.intermediate_size
    if arch.experts:
        width = (
            arch.experts_per_token * arch.expert_intermediate_size + arch.shared_intermediate_size
        )
    forward = FORWARD_BYTES_PER_TOKEN_WIDTH * batched_tokens * width / tp
    return int(max(sampler, forward))


def _estimate(model: ModelFacts, gpus: GpuSet, settings: Settings, tp: int) -> Estimate:
    arch = model.architecture
    batched, seqs = batch_defaults(gpus)
    batched = settings.max_num_batched_tokens or batched
    seqs = settings.max_num_seqs or seqs
    total = gpus.gpu.cuda_bytes
    requested = int(total * settings.utilization)
    weights = -(-model.weight_bytes // tp)
    activation = activation_bytes(arch, tp, batched, seqs)
    non_torch = NON_TORCH_BYTES.get(tp, NON_TORCH_PARALLEL_BYTES)
    kv_bytes = requested - weights - activation - non_torch
    dtype_bytes = 1 if settings.kv_cache_dtype.startswith("fp8") else 2
    cache = _Cache(arch.kv, dtype_bytes, tp, batched, max(kv_bytes, 0))
    context = settings.context or arch.max_context
    concurrency_at = cache.blocks / cache.blocks_for(context) if cache.blocks else 0.0
    longest = cache.longest(settings.concurrency, arch.max_context)
    outside = CONTEXT_BYTES.get(tp, CONTEXT_PARALLEL_BYTES) + (
        0 if settings.enforce_eager else CUDA_GRAPH_BYTES
    )
    warnings = []
    limit = int((1 - outside / total) * 100) / 100
    if total - requested < outside and limit >= 0.05:
        warnings.append(
            f"the CUDA context and graphs need about {outside / GIB:.1f} GiB beside the "
            f"{settings.utilization:g} share; use --gpu-memory-utilization {limit:g} or less, "
            "or --enforce-eager"
        )
    if context > arch.max_context:
        warnings.append(f"the model takes at most {arch.max_context} tokens per request")
    reason = ""
    if limit < 0.05:
        longest = 0  # nothing serves on a GPU without room for CUDA itself
        reason = (
            f"the CUDA context and graphs alone need about {outside / GIB:.1f} GiB of the "
            f"{total / GIB:.1f} GiB GPU"
        )
    elif kv_bytes <= 0:
        reason = (
            f"weights {weights / GIB:.1f} GiB + activations {activation / GIB:.1f} GiB + "
            f"non-torch {non_torch / GIB:.1f} GiB exceed the {requested / GIB:.1f} GiB vLLM "
            f"may use per GPU"
        )
    elif concurrency_at < settings.concurrency:
        reason = (
            f"{settings.concurrency} request(s) of {context} tokens need "
            f"{settings.concurrency * cache.bytes_for(context) / GIB:.1f} GiB of KV cache per "
            f"GPU; {kv_bytes / GIB:.1f} GiB are left"
        )
    return Estimate(
        model=model.name,
        gpus=gpus,
        tensor_parallel_size=tp,
        context=context,
        concurrency=settings.concurrency,
        total_bytes=total,
        requested_bytes=requested,
        weight_bytes=weights,
        activation_bytes=activation,
        non_torch_bytes=non_torch,
        kv_cache_bytes=kv_bytes,
        kv_cache_tokens=cache.reported_tokens,
        blocks=cache.blocks,
        max_context=longest,
        max_concurrency=concurrency_at,
        fits=not reason,
        reason=reason,
        outside_bytes=outside,
        kv_cache_dtype="fp8" if dtype_bytes == 1 else "auto",
        utilization=settings.utilization,
        warnings=tuple(warnings),
    )


class _Cache:
    """vLLM's KV cache blocks for these layers (vllm/v1/core/kv_cache_utils.py): layers of one
    kind share a block table; with several kinds (Gemma's sliding and global layers) the layers
    form groups of equal size, a block holds one page of every layer in a group, and the
    reported token count is blocks / groups x 16. A sliding layer needs, per request, only its
    window plus one scheduled batch (SlidingWindowSpec.max_memory_usage_bytes)."""

    def __init__(
        self, kv: tuple[LayerKv, ...], dtype_bytes: int, tp: int, batched: int, kv_bytes: int
    ) -> None:
        self.batched = batched
        pages = {layer.bytes_per_token(dtype_bytes, tp) * BLOCK_SIZE for layer in kv}
        counts = [layer.count for layer in kv]
        self.groups: list[tuple[int | None, int]]
        if len(kv) == 1:
            self.group_size, self.page = counts[0], pages.pop()
            self.groups = [(kv[0].window, 1)]
        elif len(pages) == 1:
            smallest, largest = min(counts), max(counts)
            self.group_size = largest if largest < smallest * 1.5 else smallest
            self.groups = [(layer.window, -(-layer.count // self.group_size)) for layer in kv]
            self.page = pages.pop()
        else:
            # Page sizes that differ by layer: sized as one table over every layer, each
            # keeping every token (vLLM pads or splits them; this errs on the safe side).
            self.group_size = 1
            self.page = sum(layer.count * layer.bytes_per_token(dtype_bytes, tp) for layer in kv)
            self.page *= BLOCK_SIZE
            self.groups = [(None, 1)]
        block_bytes = self.group_size * self.page
        self.blocks = int(kv_bytes // block_bytes) if block_bytes else 0
        self.block_bytes = block_bytes
        groups = sum(n for _, n in self.groups)
        self.reported_tokens = self.blocks // groups * BLOCK_SIZE

    def blocks_for(self, tokens: int) -> int:
        """Blocks one request of ``tokens`` tokens holds at most."""
        needed = 0
        for window, groups in self.groups:
            if window is None:
                needed += groups * -(-tokens // BLOCK_SIZE)
            else:
                kept = min(window - 1 + self.batched, tokens)
                needed += groups * (-(-kept // BLOCK_SIZE) + 1)
        return needed

    def bytes_for(self, tokens: int) -> float:
        return self.blocks_for(tokens) * self.block_bytes

    def longest(self, concurrency: int, limit: int) -> int:
        """The longest request that fits ``concurrency`` times (0 if not even one token)."""
        if concurrency * self.blocks_for(1) > self.blocks:
            return 0
        low, high = 1, limit
        while low < high:
            middle = (low + high + 1) // 2
            if concurrency * self.blocks_for(middle) <= self.blocks:
                low = middle
            else:
                high = middle - 1
        return low
