"""packages: the OS packages the play's roles need and those the spec adds, with their
dependencies, as a signed apt repository in the bundle.

The roles declare what they install (``appliance.roles``); the spec's ``packages.install``
adds what the site wants on top. Both are roots of one closure that apt resolves
(``apt.resolve``); the debs are fetched by the shared downloader and indexed into ``repo/``.
The manifest records which role needs which package, so ``appliance inspect`` can say why a
package is there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import layout
from appliance.bundle.manifest import Component, NvidiaInfo, RepoInfo
from appliance.errors import BuildError
from appliance.fetchers import nvidia
from appliance.fetchers.apt import DebPackage, RepoIndex, resolve, write_repo
from appliance.fetchers.download import Wanted
from appliance.fetchers.source import Job, Part, Request, blob_entry, file_entry
from appliance.roles import required_packages
from appliance.spec.models import Packages, Spec

# The build machine's tools this kind runs: apt-get resolves, gpg signs the repository.
_TOOLS = {"apt-get": "apt", "gpg": "gnupg"}


@dataclass(frozen=True)
class PackagesPlan:
    packages: Packages | None  # None: the spec has no packages section, nothing is fetched
    requested: list[str]  # the names the spec lists
    role_packages: dict[str, list[str]]  # {role: [package]} for the roles the play runs
    gpu: nvidia.ComputeSet | None = None  # what the spec's nvidia section adds


@dataclass(frozen=True)
class PackagesFetched:
    plan: PackagesPlan
    debs: list[DebPackage]
    index: RepoIndex | None  # None: nothing was fetched
    nvidia: NvidiaInfo | None = None


def role_packages(spec: Spec) -> dict[str, list[str]]:
    """{package: [role]} for the roles the play runs for this spec (the NVIDIA roles' own, such
    as mokutil for Secure Boot, when the spec pins a driver)."""
    return required_packages(
        spec.stack.model_dump(),
        serves_models=bool(spec.models),
        gpu=spec.nvidia is not None,
        toolkit=bool(spec.nvidia is not None and spec.nvidia.container_toolkit),
    )


def closure_roots(spec_install: list[str], needed: dict[str, list[str]]) -> list[str]:
    """The spec's packages (with any version pins) then every role package the spec does not
    already name."""
    named = {item.partition("=")[0] for item in spec_install}
    return [*spec_install, *(package for package in needed if package not in named)]


def by_role(needed: dict[str, list[str]]) -> dict[str, list[str]]:
    """{package: [role]} turned into {role: [package]}, as the manifest records it."""
    roles: dict[str, list[str]] = {}
    for package, names in needed.items():
        for role in names:
            roles.setdefault(role, []).append(package)
    return {role: sorted(packages) for role, packages in sorted(roles.items())}


def resolve_plan(
    plan: PackagesPlan, spec: Spec, arch: str, workdir: Path
) -> tuple[list[DebPackage], NvidiaInfo | None]:
    """The closure of ``plan`` (which has packages), and the NVIDIA driver it carries, checked:
    one driver version, no X.org."""
    assert plan.packages is not None
    # Packages tied to minbase packages by exact versions (perl to perl-base, gcc-12 to
    # libgcc-s1, python3.11 to libpython3.11-minimal...): a host installed from an older point
    # release holds older minbase versions, and apt there finds the matching ones nowhere but
    # in the bundle. So every closure carries them.
    if plan.gpu is None or spec.nvidia is None:
        return resolve(plan.packages, arch, workdir, siblings=True), None
    debs = resolve(
        plan.packages,
        arch,
        workdir,
        preferences=nvidia.preferences(spec.nvidia),
        watch=nvidia.watch(spec.nvidia, plan.gpu),
        siblings=True,
    )
    urls = [source.url for source in plan.packages.sources if source.kind == "nvidia"]
    return debs, nvidia.describe(spec.nvidia, plan.gpu, debs, urls)


class PackagesSource:
    def check(self, request: Request) -> PackagesPlan | None:
        spec = request.spec
        needed = role_packages(spec)
        if spec.packages is None:
            if needed:
                listing = "; ".join(
                    f"{package} (role {', '.join(roles)})" for package, roles in needed.items()
                )
                request.warn(
                    "the spec has no packages section, so the bundle carries no OS packages: "
                    f"every host must already have {listing}, or the install fails. Add a "
                    "packages section with the archive's sources to carry them"
                )
            return PackagesPlan(None, [], by_role(needed))
        for tool, package in _TOOLS.items():
            if shutil.which(tool) is None:
                raise BuildError(
                    f"{tool} is not installed on this build machine; the spec's packages need it",
                    hint=f"install it (Debian: apt-get install {package})",
                )
        sources = []
        for index, source in enumerate(spec.packages.sources):
            # Keyring paths are relative to the spec file, not to where appliance runs.
            keyring = request.spec_relative(source.keyring)
            if not keyring.is_file():
                raise BuildError(
                    f"packages.sources[{index}].keyring: {keyring} does not exist",
                    hint="on Debian the archive keyring comes with debian-archive-keyring",
                )
            if source.kind == "nvidia":
                nvidia.check_keyring(keyring, source.fingerprint, f"packages.sources[{index}]")
            sources.append(source.model_copy(update={"keyring": str(keyring)}))
        gpu = nvidia.compute_set(spec.nvidia, spec.packages.install) if spec.nvidia else None
        roots = closure_roots([*spec.packages.install, *(gpu.roots if gpu else [])], needed)
        if not roots:
            raise BuildError(
                "packages: the spec lists no packages to install and the play's roles need none",
                hint="list packages under packages.install, or remove the packages section",
            )
        packages = spec.packages.model_copy(update={"sources": sources, "install": roots})
        requested = [item.partition("=")[0] for item in spec.packages.install]
        return PackagesPlan(packages, requested, by_role(needed), gpu)

    def fetch(self, job: Job, plan: PackagesPlan) -> PackagesFetched:
        if plan.packages is None:
            return PackagesFetched(plan, [], None)
        job.progress.note("resolving OS packages")
        spec = job.spec
        debs, gpu = resolve_plan(plan, spec, job.target.arch, job.work_dir("apt"))
        job.fetcher.fetch_all(Wanted(f"deb {d.name}", d.url, d.sha256, d.size) for d in debs)
        index = write_repo(
            [(deb, layout.blob_path(deb.sha256)) for deb in debs],
            job.staging / layout.REPO,
            label=f"appliance {spec.name} {spec.release}",
            workdir=job.scratch / "repo",
            key=job.repo_key,
            epoch=job.epoch,
        )
        return PackagesFetched(plan, debs, index, gpu)

    def describe(self, job: Job, fetched: PackagesFetched) -> Part:
        part = Part(fields={"role_packages": fetched.plan.role_packages})
        if fetched.index is None:
            return part
        for deb in fetched.debs:
            name = f"{deb.name}:{deb.arch}"
            part.add(
                Component(name=name, kind="deb", version=deb.version, source=deb.url),
                blob_entry(
                    deb.sha256,
                    deb.size,
                    "deb",
                    name,
                    f"{deb.name}_{deb.version.split(':')[-1]}_{deb.arch}.deb",
                ),
            )
        staging: Path = job.staging
        part.add(
            Component(name="repo", kind="repo-index", version=job.spec.release),
            *(
                file_entry(path, (staging / path).read_bytes(), "repo-index", "repo")
                for path in fetched.index.files
            ),
        )
        part.fields["repo"] = RepoInfo(
            path=layout.REPO, key=fetched.index.key_path, fingerprint=fetched.index.fingerprint
        )
        part.fields["packages"] = fetched.plan.requested
        if fetched.nvidia is not None:
            part.fields["nvidia"] = fetched.nvidia
        return part
