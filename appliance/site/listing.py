"""Every model of the appliance, the bundle's and the site's, with where the gateway routes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.bundle.inspect import read_manifest
from appliance.bundle.manifest import Manifest
from appliance.site import manifest as site_manifest
from appliance.site.models import SitePaths


def installed_manifest(root: Path) -> Manifest | None:
    """The manifest of the current release (staged and verified by install), if any."""
    current = root / "current"
    if not current.exists():
        return None
    return read_manifest(current.resolve())


def bundle_models(root: Path) -> dict[str, str]:
    """The installed bundle's model names -> its release label."""
    manifest = installed_manifest(root)
    if manifest is None:
        return {}
    return {m["name"]: manifest.release for m in manifest.models()}


def bundle_digests(root: Path) -> set[str]:
    """The sha256 of every file of the installed bundle (a store object they share is kept)."""
    manifest = installed_manifest(root)
    return {e.sha256 for e in manifest.files} if manifest is not None else set()


def _routes(gateway_config: Path) -> dict[str, dict[str, Any]]:
    """The gateway's routes by model name; none where this host runs no gateway."""
    try:
        document = json.loads(gateway_config.read_bytes())
    except (OSError, ValueError):
        return {}
    return {m["name"]: m for m in document.get("models", []) if isinstance(m, dict)}


def list_models(root: Path, paths: SitePaths, gateway_config: Path) -> list[dict[str, Any]]:
    """One row per model: name, origin, digest, size, format, files and where it is served
    (the gateway's route, or null: not served yet, or not by this host's gateway)."""
    rows: list[dict[str, Any]] = []
    routes = _routes(gateway_config)
    manifest = installed_manifest(root)
    if manifest is not None:
        for model in manifest.models():
            rows.append(
                {
                    "name": model["name"],
                    "origin": "bundle",
                    "release": manifest.release,
                    "digest": model["digest"],
                    "size": sum(f["size"] for f in model["files"]),
                    "format": model["format"],
                    "files": len(model["files"]),
                    "added": manifest.created,
                }
            )
    for site in site_manifest.load(paths.site_dir).models:
        rows.append(
            {
                "name": site.name,
                "origin": "site",
                "release": None,
                "digest": site.digest,
                "size": site.size,
                "format": site.format,
                "files": len(site.files),
                "added": site.added,
            }
        )
    for row in rows:
        route = routes.get(row["name"])
        # Served means: the gateway routes this name to this exact digest.
        row["served"] = (
            route.get("backend") if route and route.get("digest") == row["digest"] else None
        )
    return sorted(rows, key=lambda r: (r["origin"], r["name"]))
