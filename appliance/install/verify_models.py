"""appliance verify's model checks: the store holds exactly what its objects' names say, and
every model a runtime serves (its files, and the route the gateway keeps for it) is one the
bundle's manifest, or the site's, names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    host: str
    name: str
    passed: bool
    evidence: str


@dataclass(frozen=True)
class Allowed:
    """The digests a runtime may serve: models (the gateway's routes) and their files."""

    models: frozenset[str]
    files: frozenset[str]

    @classmethod
    def of(cls, models: Iterable[dict[str, Any]]) -> Allowed:
        listed = list(models)
        return cls(
            frozenset(m["digest"] for m in listed),
            frozenset(f["sha256"] for m in listed for f in m.get("files", [])),
        )

    def __or__(self, other: Allowed) -> Allowed:
        return Allowed(self.models | other.models, self.files | other.files)


def judge_store(host: str, store: dict[str, Any] | None) -> list[Check]:
    if not store:
        return []
    if store.get("error"):
        return [Check(host, "object store: every object matches its digest", False, store["error"])]
    problems = store.get("problems") or []
    seen = "; ".join(f"{p.get('key')}: {p.get('problem')}" for p in problems[:10])
    return [
        Check(
            host,
            "object store: every object matches its digest",
            not problems,
            seen or f"{store.get('objects', 0)} objects read, each matches its sha256",
        )
    ]


def judge_registry(host: str, registry: dict[str, Any] | None) -> list[Check]:
    """Every image of the manifest in the registry with its digest, as the pull identity reads
    it; and the pull identity refused a push (403 from the front, 401 if it were unknown)."""
    if not registry:
        return []
    if registry.get("error") or "images" not in registry:
        seen = str(registry.get("error") or registry.get("msg") or "no evidence")
        return [Check(host, "registry: every image present with its digest", False, seen)]
    images = registry.get("images") or []
    missing = [i for i in images if not i.get("present")]
    seen = "; ".join(f"{i.get('ref')}: {i.get('problem')}" for i in missing[:10])
    status = int(registry.get("push_status", -1))
    return [
        Check(
            host,
            "registry: every image present with its digest",
            bool(images) and not missing,
            seen or f"{len(images)} images, each by its digest, read as the pull identity",
        ),
        Check(
            host,
            "registry: the pull identity cannot push",
            status in (401, 403),
            f"a blob upload as the pull identity got HTTP {status}",
        ),
    ]


def judge_served(host: str, served: list[dict[str, Any]], allowed: Allowed) -> list[Check]:
    """Each served model's digest list names only files of allowed models, and its files on
    disk match it now."""
    checks = []
    for listing in served:
        path = str(listing.get("path"))
        digests = [line.split()[0] for line in listing.get("lines", []) if line.strip()]
        foreign = [d for d in digests if d not in allowed.files]
        if foreign:
            seen = f"not in the bundle's or the site's manifest: {', '.join(foreign)}"
        else:
            seen = f"{len(digests)} files, each in the manifest" if digests else "empty list"
        checks.append(
            Check(
                host, f"served model in the manifest: {path}", bool(digests) and not foreign, seen
            )
        )
        rc = int(listing.get("rc", -1))
        checks.append(
            Check(
                host,
                f"served model files match their digests: {path}",
                rc == 0,
                "sha256sum --check: all OK"
                if rc == 0
                else " | ".join(str(line) for line in listing.get("output", [])) or f"rc {rc}",
            )
        )
    return checks


def judge_routes(host: str, gateway: dict[str, Any], allowed: Allowed) -> list[Check]:
    """The gateway routes only to models whose digest the manifest names."""
    checks = []
    for route in gateway.get("models") or []:
        digest = route.get("digest")
        checks.append(
            Check(
                host,
                f"gateway model in the manifest: {route.get('name')}",
                digest in allowed.models,
                f"{digest}" + ("" if digest in allowed.models else ": in no manifest"),
            )
        )
    return checks
