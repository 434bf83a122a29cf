"""The spec's ``nvidia:`` section, which pins the GPU hosts' driver, and NVIDIA's apt repository
as a kind of package source.

Each refusal says what the choice would cost on the hosts, because that is what a user needs to
pick another: the fabric manager must match the driver to the patch release, Debian ships none,
and so on. Validation stays pure; what only the archive's indexes can tell (which versions
exist) is checked by build-bundle (``appliance.fetchers.nvidia``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from appliance.spec.checks import check_url, err
from appliance.spec.common import StrictModel

# A driver version as NVIDIA numbers it: BRANCH.MINOR[.PATCH], e.g. 535.309.01 or 570.86.
_DRIVER_VERSION_RE = re.compile(r"^([0-9]{3})\.[0-9]{1,3}(\.[0-9]{1,3})?$")
# A Debian kernel ABI as `uname -r` prints it: 6.1.0-57-amd64, 6.1.0-57-cloud-amd64,
# 6.12.12+bpo-amd64 (backports).
_KERNEL_ABI_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9]+|\+bpo)(-[a-z0-9]+)*-[a-z0-9]+$")
_FINGERPRINT_RE = re.compile(r"^[0-9A-F]{40}$")
# Where Debian 12 keeps the driver set: the driver and its DKMS source in non-free, the GSP
# firmware in non-free-firmware, nvidia-persistenced and the open modules in contrib.
DEBIAN_COMPONENTS = ("contrib", "non-free", "non-free-firmware")

if TYPE_CHECKING:  # models.py imports this module
    from appliance.spec.models import Target
    from appliance.spec.packages import Packages


class NvidiaAptSource(StrictModel):
    """One of NVIDIA's own apt repositories: the CUDA repository (driver, fabric manager, NSCQ)
    or the NVIDIA Container Toolkit's. Both are flat repositories (``URL /``, no suites or
    components), signed by a key NVIDIA publishes; the spec pins that key by fingerprint."""

    kind: Literal["nvidia"]
    url: str = Field(description="http://, https:// or file:// URL of the flat repository")
    keyring: str = Field(description="NVIDIA's signing key (OpenPGP file), relative to the spec")
    fingerprint: str = Field(
        description="the 40-hex fingerprint of the key that must sign the repository"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, ("http", "https", "file"))

    @field_validator("keyring")
    @classmethod
    def _keyring(cls, value: str) -> str:
        if not value.strip():
            raise err("empty_keyring", "name the keyring file that signs this repository")
        return value

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: str) -> str:
        compact = value.replace(" ", "").upper()
        if not _FINGERPRINT_RE.match(compact):
            raise err(
                "bad_fingerprint",
                "fingerprint '{value}' is not an OpenPGP v4 fingerprint (40 hex digits): copy "
                "it from `gpg --show-keys KEYFILE` and check it against NVIDIA's published one",
                value=value,
            )
        return compact


class NvidiaDriver(StrictModel):
    """Where the driver comes from, which one, and which kernel modules it builds."""

    source: Literal["debian", "nvidia-repo"] = Field(
        default="debian",
        description="debian: Debian 12's non-free driver; nvidia-repo: NVIDIA's CUDA repository "
        "(needed for the fabric manager of HGX/NVSwitch boards)",
    )
    branch: str | None = Field(default=None, description="driver branch, e.g. '535'")
    version: str | None = Field(
        default=None,
        description="the exact driver version, e.g. 535.309.01: every driver package is pinned "
        "to it (default: the newest the sources carry)",
    )
    modules: Literal["proprietary", "open"] = Field(
        default="proprietary",
        description="proprietary or open kernel modules (open: Turing and newer GPUs only)",
    )

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9]{3}", value):
            raise err(
                "bad_branch",
                "branch '{value}' is not a driver branch: write its three digits in quotes, "
                "e.g. '535'",
                value=value,
            )
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not _DRIVER_VERSION_RE.match(value):
            raise err(
                "bad_driver_version",
                "driver version '{value}' is not NVIDIA's BRANCH.MINOR.PATCH (e.g. 535.309.01, "
                "without the Debian revision: every package of the driver set is pinned to it)",
                value=value,
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NvidiaDriver:
        if self.version and self.branch and not self.version.startswith(f"{self.branch}."):
            raise err(
                "branch_mismatch",
                "version {version} is not of branch {branch}: drop one, or make them agree",
                version=self.version,
                branch=self.branch,
            )
        if self.source == "nvidia-repo" and not (self.branch or self.version):
            raise err(
                "branch_required",
                "source nvidia-repo needs a branch or a version: NVIDIA's repository carries "
                "every branch, and its fabric manager and NSCQ packages are named per branch",
            )
        return self

    def pinned_branch(self) -> str | None:
        """The branch, named or taken from the version."""
        return self.branch or (self.version.split(".")[0] if self.version else None)


class Nvidia(StrictModel):
    """The NVIDIA driver the GPU hosts install, from the bundle only, headless (no X.org)."""

    driver: NvidiaDriver = Field(default_factory=NvidiaDriver)
    fabricmanager: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="fabric manager for NVSwitch (HGX) boards: on carries it, off does not, auto "
        "carries it when the driver comes from NVIDIA's repository",
    )
    kernel_abis: list[str] = Field(
        min_length=1,
        description="the kernel ABIs (`uname -r`) of the GPU hosts: the bundle carries the "
        "headers DKMS builds the module against for each",
    )
    container_toolkit: bool = Field(
        default=False,
        description="carry the NVIDIA Container Toolkit (from NVIDIA's repository) for container "
        "runtimes",
    )

    @field_validator("kernel_abis")
    @classmethod
    def _abis(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for abi in value:
            if not _KERNEL_ABI_RE.match(abi):
                raise err(
                    "bad_kernel_abi",
                    "'{abi}' is not a Debian kernel ABI as `uname -r` prints it (e.g. "
                    "6.1.0-57-amd64): the bundle carries linux-headers-<abi> for it",
                    abi=abi,
                )
            if abi in seen:
                raise err("duplicate", "kernel ABI {abi} is listed twice", abi=abi)
            seen.add(abi)
        return value

    @model_validator(mode="after")
    def _fabricmanager(self) -> Nvidia:
        if self.fabricmanager == "on" and self.driver.source == "debian":
            raise err(
                "fabricmanager_needs_nvidia_repo",
                "fabricmanager on needs driver.source: nvidia-repo: Debian ships no fabric "
                "manager, and the fabric manager must match the driver to the patch release, "
                "so it can only come from NVIDIA's repository with the driver. Without it an "
                "NVSwitch (HGX) board cannot run CUDA (error 802); set fabricmanager: off if "
                "the GPU hosts have no NVSwitch",
            )
        return self

    def carries_fabricmanager(self) -> bool:
        return self.fabricmanager == "on" or (
            self.fabricmanager == "auto" and self.driver.source == "nvidia-repo"
        )


def check_nvidia(nvidia: Nvidia, packages: Packages | None, targets: Sequence[Target]) -> None:
    """What the nvidia section needs from the rest of the spec: sources that carry the driver,
    and kernel ABIs of the target's architecture."""
    for target in targets:
        for abi in nvidia.kernel_abis:
            if not abi.endswith(f"-{target.arch}"):
                raise err(
                    "kernel_abi_arch",
                    "kernel ABI {abi} is not one of target {arch}: DKMS builds the module "
                    "against linux-headers-{abi}, which a {arch} host cannot use",
                    abi=abi,
                    arch=target.arch,
                )
    if packages is None:
        raise err(
            "nvidia_needs_packages",
            "the nvidia section needs a packages section: the driver set is resolved from its "
            "apt sources into the bundle's repository (for Debian: main, contrib, non-free and "
            "non-free-firmware)",
        )
    needs = []
    if nvidia.driver.source == "nvidia-repo":
        needs.append("driver.source nvidia-repo")
    if nvidia.container_toolkit:
        needs.append("container_toolkit (Debian has no NVIDIA Container Toolkit)")
    if needs and not any(source.kind == "nvidia" for source in packages.sources):
        # Our own words, not the user's value: written into the message, never shortened.
        raise err(
            "nvidia_repo_missing",
            " and ".join(needs) + " needs NVIDIA's repository in packages.sources: an entry "
            "with kind: nvidia, its url, keyring and key fingerprint",
        )
    if nvidia.driver.source == "debian":
        components = {c for s in packages.sources if s.kind == "apt" for c in s.components}
        missing = [c for c in DEBIAN_COMPONENTS if c not in components]
        if missing:
            raise err(
                "nvidia_components_missing",
                "driver.source debian needs the component(s) {missing} in packages.sources: "
                "Debian 12 keeps the driver and its DKMS source in non-free, the GSP firmware in "
                "non-free-firmware, nvidia-persistenced and the open modules in contrib",
                missing=", ".join(missing),
            )
