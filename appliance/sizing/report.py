"""Each model on each set of GPUs: the estimate per tensor-parallel size and the one to use.
What `appliance size` prints, build-bundle warns about, and preflight judges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.sizing.gpus import GpuSet, size_text
from appliance.sizing.model import ModelFacts
from appliance.sizing.vllm import MIN_CONTEXT, Estimate, Settings, choose, estimate


@dataclass(frozen=True)
class Verdict:
    model: ModelFacts
    gpus: GpuSet
    estimates: list[Estimate]
    chosen: Estimate | None  # the fewest GPUs that serve the context, else the most context

    @property
    def fits(self) -> bool:
        return self.chosen is not None and self.chosen.fits

    def summary(self) -> str:
        """One line on why the model does not fit, with the numbers and the ways out."""
        best = max(self.estimates, key=lambda e: e.kv_cache_bytes, default=None)
        if best is None:
            return (
                f"{self.model.name} cannot be split over {self.gpus.label}: its "
                f"{self.model.architecture.attention_heads} attention heads do not divide evenly"
            )
        need = size_text(self.model.weight_bytes)
        return (
            f"{self.model.name} ({need} of weights) does not fit {self.gpus.label}: at "
            f"tensor parallel {best.tensor_parallel_size}, {best.reason}. Options: more or larger "
            f"GPUs, a quantised checkpoint (AWQ, GPTQ, FP8), --kv-cache-dtype fp8, or a shorter "
            f"context (--max-model-len)"
        )

    def as_dict(self) -> dict[str, Any]:
        arch = self.model.architecture
        return {
            "model": self.model.name,
            "format": self.model.format,
            "family": arch.family,
            "weight_bytes": self.model.weight_bytes,
            "kv_bytes_per_token": arch.kv_bytes_per_token(
                1 if self.estimates and self.estimates[0].kv_cache_dtype == "fp8" else 2
            ),
            "max_context": arch.max_context,
            "notes": list(arch.notes),
            "gpus": {
                "name": self.gpus.gpu.name,
                "count": self.gpus.count,
                "memory_total_mib": self.gpus.gpu.memory_mib,
                "memory_reserved_mib": self.gpus.gpu.reserved_mib,
                "source": self.gpus.gpu.source,
            },
            "fits": self.fits,
            "recommended_tensor_parallel_size": (
                self.chosen.tensor_parallel_size if self.chosen else None
            ),
            "tensor_parallel": [e.as_dict() for e in self.estimates],
        }


def size_models(
    models: list[ModelFacts], gpu_sets: list[GpuSet], settings: Settings | None = None
) -> list[Verdict]:
    settings = settings or Settings()
    verdicts = []
    for model in models:
        for gpus in gpu_sets:
            estimates = estimate(model, gpus, settings)
            minimum = min(settings.context or MIN_CONTEXT, model.architecture.max_context)
            verdicts.append(Verdict(model, gpus, estimates, choose(estimates, minimum)))
    return verdicts
