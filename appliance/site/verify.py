"""What ``appliance verify`` trusts of the site: the site manifest's models, once its signature
verified; a signature that fails is a failed check, and then no site model is trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.install.verify_models import Check
from appliance.site import manifest as site_manifest


def site_allowed(site_dir: Path) -> tuple[list[dict[str, Any]], Check | None]:
    """The site's models (name, digest, files with sha256) and the check of the site manifest's
    signature (None when no site model was ever added)."""
    name = "site manifest: signature good"
    try:
        site = site_manifest.load(site_dir)
    except ApplianceError as error:
        return [], Check("local", name, False, error.message)
    if not site.models:
        return [], None
    models = [
        {"name": m.name, "digest": m.digest, "files": [f.model_dump() for f in m.files]}
        for m in site.models
    ]
    evidence = f"{len(models)} site model(s) in {site_dir}: " + ", ".join(
        f"{m.name} {m.digest}" for m in site.models
    )
    return models, Check("local", name, True, evidence)
