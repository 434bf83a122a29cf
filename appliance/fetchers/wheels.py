"""wheels: a wheelhouse for the target's Python and platform, resolved by pip, hashed by us.

pip does the resolving (it is the reference implementation of the rules); this module pins the
platform, keeps a resolution cache so an unchanged spec resolves once, and files each wheel as
a blob. ``WheelsSource`` is the source kind of the spec's ``wheels:`` sets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.manifest import Component
from appliance.bundle.store import BlobStore
from appliance.errors import BuildError, FetchError
from appliance.fetchers.source import Job, Part, Request, blob_entry
from appliance.spec.models import WheelSet

# Debian 12 ships glibc 2.36: every manylinux tag up to that is compatible.
_GLIBC_MAX = {"debian-12": 36}
_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class Wheel:
    filename: str
    sha256: str
    size: int


def platform_tags(os_name: str, arch: str) -> list[str]:
    machine = _MACHINE[arch]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(_GLIBC_MAX[os_name], 16, -1)]
    return [*tags, f"manylinux2014_{machine}"] + (
        [f"manylinux2010_{machine}", f"manylinux1_{machine}"] if machine == "x86_64" else []
    )


def resolve_wheels(
    requirements: list[str],
    *,
    python: str,
    os_name: str,
    arch: str,
    store: BlobStore,
    cache_dir: Path | None,
    constraints: Sequence[str] = (),
    what: str,
) -> list[Wheel]:
    """Download wheels for ``requirements`` (and their dependencies) into ``store``, each
    version held to ``constraints`` (``name==version`` lines) where they name it."""
    key_material = json.dumps(
        {
            "requirements": requirements,
            "python": python,
            "platform": platform_tags(os_name, arch),
            "constraints": list(constraints) or None,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()
    recorded = cache_dir / "wheel-resolutions" / f"{key}.json" if cache_dir else None
    if recorded is not None and recorded.is_file():
        wheels = [Wheel(**item) for item in json.loads(recorded.read_text())]
        if all(store.has(wheel.sha256) for wheel in wheels):
            return wheels

    # Downloaded next to the store's blobs, so each wheel is moved in, not copied: no second
    # copy on disk while the wheelhouse is filed.
    with tempfile.TemporaryDirectory(prefix=".wheels-", dir=store.root) as tmp:
        dest = Path(tmp) / "wheels"
        pins = Path(tmp) / "constraints.txt"
        pins.write_text("".join(f"{line}\n" for line in constraints))
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python,
            "--dest",
            str(dest),
            *[arg for tag in platform_tags(os_name, arch) for arg in ("--platform", tag)],
            *(["--constraint", str(pins)] if constraints else []),
            *requirements,
        ]
        result = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, check=False, env=_pip_env()
        )
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
            raise FetchError(
                f"{what}: pip could not download wheels for Python {python} on "
                f"{os_name}/{arch}: {'; '.join(errors) or result.stderr.strip()[-500:]}",
                hint="every requirement needs a wheel for the target (no sdists are built); "
                "pick a version that publishes one, or drop the requirement",
            )
        wheels = []
        for path in sorted(dest.iterdir()):
            if path.suffix != ".whl":
                raise BuildError(
                    f"{what}: pip returned {path.name}, which is not a wheel",
                    hint="only wheels can be installed offline without a compiler",
                )
            blob = store.adopt(path, what=path.name)
            wheels.append(Wheel(path.name, blob.sha256, blob.size))
    if recorded is not None:
        recorded.parent.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps([w.__dict__ for w in wheels], indent=1))
    return wheels


def _pip_env() -> dict[str, str]:
    return {**os.environ, "PIP_NO_INPUT": "1", "PYTHONWARNINGS": "ignore"}


def check_pip(what: str) -> None:
    """pip resolves wheel sets; it must be importable by the Python that runs appliance."""
    if importlib.util.find_spec("pip") is None:
        raise BuildError(
            f"{what}: pip is not installed for {sys.executable}; it resolves wheel sets",
            hint=f"install it: {sys.executable} -m ensurepip (or your OS's python3-pip)",
        )


def wheel_set_part(part: Part, wheels: Sequence[Wheel], set_name: str) -> None:
    """Each wheel of a set as the component ``<project>:<set>`` with its blob."""
    for wheel in wheels:
        project, version = wheel.filename.split("-")[:2]
        name = f"{project.lower().replace('_', '-')}:{set_name}"
        part.add(
            Component(name=name, kind="wheel", version=version, source="pypi"),
            blob_entry(wheel.sha256, wheel.size, "wheel", name, wheel.filename),
        )


class WheelsSource:
    """The spec's ``wheels:`` sets (runtimes and their dependencies), for the target."""

    def check(self, request: Request) -> list[WheelSet] | None:
        if not request.spec.wheels:
            return None
        check_pip("wheels")
        return list(request.spec.wheels)

    def fetch(self, job: Job, plan: list[WheelSet]) -> list[tuple[str, list[Wheel]]]:
        job.progress.note("resolving wheels")
        sets = []
        for wheel_set in plan:
            wheels = resolve_wheels(
                list(wheel_set.requirements),
                python=wheel_set.python,
                os_name=job.target.os,
                arch=job.target.arch,
                store=job.landing,
                cache_dir=job.cache_dir,
                what=f"wheels {wheel_set.name}",
            )
            for wheel in wheels:
                job.take(wheel.sha256)
            sets.append((wheel_set.name, wheels))
        return sets

    def describe(self, job: Job, fetched: list[tuple[str, list[Wheel]]]) -> Part:
        part = Part()
        for set_name, wheels in fetched:
            wheel_set_part(part, wheels, set_name)
        return part
