"""wheels: a wheelhouse for the target's Python and platform, resolved by pip, hashed by us.

pip does the resolving (it is the reference implementation of the rules); this module pins the
platform, keeps a resolution cache so an unchanged spec resolves once, and files each wheel as
a blob.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.store import BlobStore
from appliance.errors import BuildError, FetchError

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
    constraints: Path | None = None,
    what: str,
) -> list[Wheel]:
    """Download wheels for ``requirements`` (and their dependencies) into ``store``."""
    key_material = json.dumps(
        {
            "requirements": requirements,
            "python": python,
            "platform": platform_tags(os_name, arch),
            "constraints": constraints.read_text() if constraints else None,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()
    recorded = cache_dir / "wheel-resolutions" / f"{key}.json" if cache_dir else None
    if recorded is not None and recorded.is_file():
        wheels = [Wheel(**item) for item in json.loads(recorded.read_text())]
        if all(store.has(wheel.sha256) for wheel in wheels):
            return wheels

    with tempfile.TemporaryDirectory(prefix="appliance-wheels-") as tmp:
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
            tmp,
            *[arg for tag in platform_tags(os_name, arch) for arg in ("--platform", tag)],
            *(["--constraint", str(constraints)] if constraints else []),
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
        for path in sorted(Path(tmp).iterdir()):
            if path.suffix != ".whl":
                raise BuildError(
                    f"{what}: pip returned {path.name}, which is not a wheel",
                    hint="only wheels can be installed offline without a compiler",
                )
            blob = store.add_file(path, what=path.name)
            wheels.append(Wheel(path.name, blob.sha256, blob.size))
    if recorded is not None:
        recorded.parent.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps([w.__dict__ for w in wheels], indent=1))
    return wheels


def build_own_wheel(source_root: Path, store: BlobStore) -> Wheel:
    """Build appliance's own wheel from its source tree, offline and reproducibly."""
    if not (source_root / "pyproject.toml").is_file():
        raise BuildError(
            f"appliance's source tree is not at {source_root}",
            hint="run build-bundle from a checkout of appliance (the bundle carries the "
            "installer built from it)",
        )
    with tempfile.TemporaryDirectory(prefix="appliance-self-") as tmp:
        result = subprocess.run(  # noqa: S603
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--disable-pip-version-check",
                "--wheel-dir",
                tmp,
                str(source_root),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**_pip_env(), "SOURCE_DATE_EPOCH": "315532800"},
        )
        built = sorted(Path(tmp).glob("appliance-*.whl"))
        if result.returncode != 0 or not built:
            raise BuildError(
                f"building appliance's own wheel failed: {result.stderr.strip()[-500:]}",
                hint="install the build extra: pip install 'appliance[build]'",
            )
        blob = store.add_file(built[0], what=built[0].name)
        return Wheel(built[0].name, blob.sha256, blob.size)


def fetch_pinned_wheel(requirements_file: Path, dest: Path) -> Path:
    """The single wheel that ``requirements_file`` pins by hash (``--hash=sha256:...``),
    downloaded once into ``dest`` and checked by pip against that hash."""
    pinned = [
        part.split(":", 1)[1]
        for line in requirements_file.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for part in line.split()
        if part.startswith("--hash=sha256:")
    ]
    dest.mkdir(parents=True, exist_ok=True)
    for path in dest.glob("*.whl"):
        if hashlib.sha256(path.read_bytes()).hexdigest() in pinned:
            return path
    result = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--dest",
            str(dest),
            "-r",
            str(requirements_file),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=_pip_env(),
    )
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise FetchError(
            f"cannot download the wheel pinned in {requirements_file}: "
            f"{result.stderr.strip()[-500:]}",
            hint="PyPI must be reachable from the build machine",
        )
    return wheels[0]


def _pip_env() -> dict[str, str]:
    return {**os.environ, "PIP_NO_INPUT": "1", "PYTHONWARNINGS": "ignore"}
