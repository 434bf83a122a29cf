"""What build-bundle says about the spec's GPUs: a warning for each model that fits none of
them (sized from the files just fetched), so a bundle that cannot serve is known before it is
carried across the air gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.sizing.report import size_models
from appliance.sizing.sources import from_manifest_models, spec_gpus


def gpu_warnings(gpus: list[Any], models: list[dict[str, Any]], staging: Path) -> list[str]:
    """Warnings for the models (Manifest.models() entries, files under ``staging``) that fit
    none of the spec's ``gpus:`` entries."""
    if not gpus or not models:
        return []
    gpu_sets = spec_gpus(gpus)
    found = from_manifest_models(staging, models)
    warnings = [
        f"model {name} was not sized ({reason}); whether it fits the spec's GPUs is unknown"
        for name, reason in found.unsized
    ]
    for model in found.sized:
        verdicts = size_models([model], gpu_sets)
        if not any(v.chosen is not None for v in verdicts):
            warnings.append(
                f"model {model.name} fits none of the spec's GPUs: "
                + " / ".join(v.summary() for v in verdicts)
            )
    return warnings
