"""Judging the container engines' evidence: every upstream registry of the bundle's images is
mirrored to the local registry, and no rule lets a pull leave it (the container_engines role's
audit reads the hosts; its problems are the findings)."""

from __future__ import annotations

from typing import Any

from appliance.install.verify_models import Check

NAME = "container engines: each upstream registry mirrored to the local registry, no fallback"


def judge_engines(host: str, engines: dict[str, Any] | None) -> list[Check]:
    if not engines:
        return []
    problems = [str(p) for p in engines.get("problems") or []]
    if problems:
        return [Check(host, NAME, False, "; ".join(problems[:10]))]
    upstreams = sorted((engines.get("containerd") or {}).get("upstreams") or {})
    docker = engines.get("docker")
    seen = f"containerd mirrors {', '.join(upstreams) or 'nothing'}"
    if docker is not None:
        # Docker can mirror no upstream without a fallback: it has none (see the README).
        seen += "; Docker has no mirrors (it pulls by the local registry's references)"
    return [Check(host, NAME, True, seen)]
