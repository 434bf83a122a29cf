"""installer: what ``install.sh`` needs on a host with only python3: appliance's own wheel, the
wheels of its runtime dependencies for the target, and install.sh itself.

One source of truth for the installer's versions: the environment appliance runs in. The wheel
set is held to the exact versions installed here of appliance's runtime dependencies,
transitively. In a checkout, the test harness installs that environment from
``requirements/constraints.txt``, so a bundle carries exactly those versions; installed from a
wheel (pip, pipx), it carries what pip installed with it. Nothing reads a source tree.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from importlib import resources

from appliance import __version__
from appliance.bundle import layout
from appliance.bundle.manifest import Component
from appliance.fetchers.own_wheel import (
    DIST,
    OwnDistribution,
    cache_key,
    metadata_headers,
    own_distribution,
    package_files,
    write_wheel,
)
from appliance.fetchers.source import Job, Part, Request, file_entry
from appliance.fetchers.wheels import Wheel, check_pip, resolve_wheels, wheel_set_part

# The Python of the hosts install.sh runs on (Debian 12's python3).
INSTALLER_PYTHON = "3.11"
SET_NAME = "installer"
_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


@dataclass(frozen=True)
class InstallerPlan:
    dist: OwnDistribution
    requirements: list[str]  # appliance's runtime requirements, and pip
    pins: list[str]  # name==version, as installed here


@dataclass(frozen=True)
class InstallerFetched:
    wheels: list[Wheel]  # appliance's own first
    script: bytes


def canonical(name: str) -> str:
    """A project name compared the way pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[str]:
    """appliance's own requirements, without those of its extras."""
    return [r for r in importlib.metadata.requires(DIST) or [] if not _EXTRA.search(r)]


def installed_pins(requirements: list[str]) -> list[str]:
    """``name==version`` of every distribution ``requirements`` pull in, transitively, at the
    version installed here. A requirement not installed here (its marker excluded it on this
    machine) stays unpinned: pip picks its version for the target."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = list(requirements)
    while pending:
        found = _NAME.match(pending.pop().partition(";")[0])
        if found is None:
            continue
        extras = frozenset(canonical(e) for e in (found[2] or "").split(",") if e.strip())
        if (canonical(found[1]), extras) in seen:
            continue
        seen.add((canonical(found[1]), extras))
        try:
            dist = importlib.metadata.distribution(found[1])
        except importlib.metadata.PackageNotFoundError:
            continue
        headers = metadata_headers(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
        name = (headers.get("Name") or [found[1]])[0]
        version = (headers.get("Version") or [dist.version])[0]
        pins[canonical(name)] = f"{name}=={version}"
        for requirement in headers.get("Requires-Dist", []):
            extra = _EXTRA.search(requirement)
            if extra is None or canonical(extra[1]) in extras:
                pending.append(requirement)
    return [pins[key] for key in sorted(pins)]


def own_wheel(job: Job, dist: OwnDistribution) -> Wheel:
    """appliance's wheel in the store, written once per distinct content: a rebuild finds it
    by a digest of what it is made from."""
    files = package_files(dist.package)
    key = cache_key(dist, files)
    record = job.cache_dir / "own-wheel" / key if job.cache_dir else None
    if record is not None and record.is_file():
        wheel = Wheel(**json.loads(record.read_text()))
        if job.landing.has(wheel.sha256):
            job.take(wheel.sha256)
            return wheel
    blob = job.landing.add_bytes(write_wheel(dist, files))
    wheel = Wheel(dist.filename, blob.sha256, blob.size)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        temp = record.with_name(f".{key}.tmp")
        temp.write_text(json.dumps(wheel.__dict__))
        temp.replace(record)
    job.take(wheel.sha256)
    return wheel


class InstallerSource:
    def check(self, request: Request) -> InstallerPlan:
        check_pip("the installer's wheels")
        dist = own_distribution()
        requirements = [*runtime_requirements(), "pip"]
        return InstallerPlan(dist, requirements, installed_pins(requirements))

    def fetch(self, job: Job, plan: InstallerPlan) -> InstallerFetched:
        job.progress.note("resolving the installer's wheels")
        own = own_wheel(job, plan.dist)
        wheels = resolve_wheels(
            plan.requirements,
            python=INSTALLER_PYTHON,
            os_name=job.target.os,
            arch=job.target.arch,
            store=job.landing,
            cache_dir=job.cache_dir,
            constraints=plan.pins,
            what=f"wheels {SET_NAME}",
        )
        for wheel in wheels:
            job.take(wheel.sha256)
        script = resources.files("appliance.bundle").joinpath("install.sh").read_bytes()
        path = job.staging / layout.INSTALL_SH
        path.write_bytes(script)
        path.chmod(0o755)
        return InstallerFetched([own, *wheels], script)

    def describe(self, job: Job, fetched: InstallerFetched) -> Part:
        part = Part()
        wheel_set_part(part, fetched.wheels, SET_NAME)
        part.add(
            Component(name="install.sh", kind="installer", version=__version__),
            file_entry(layout.INSTALL_SH, fetched.script, "installer", "install.sh"),
        )
        return part
