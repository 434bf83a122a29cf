"""The NVIDIA driver set of the spec's ``nvidia:`` section, as part of the packages closure.

The packages kind resolves one closure for everything the hosts install; this module says
which packages the GPU hosts need (``compute_set``), pins the driver set (``preferences``), and
refuses what would not work on a host: a driver set of mixed versions (``check_one_version``),
or X.org in the closure (``check_headless``). ``describe`` records the result in the manifest
(``Manifest.nvidia``), which the nvidia_driver role reads.

NVIDIA's own repositories are a kind of apt source (``kind: nvidia`` in ``packages.sources``):
flat, signed by a key the spec pins by fingerprint (``check_keyring``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.manifest import KernelAbi, NvidiaDriver, NvidiaInfo
from appliance.errors import BuildError
from appliance.fetchers.apt import DebPackage
from appliance.fetchers.apt_repo import parse_field
from appliance.fetchers.apt_root import Candidate, CandidateCheck
from appliance.spec.nvidia import Nvidia

# Debian's source packages of the driver: every binary built from them carries the driver's
# version. nvidia-persistenced, nvidia-modprobe and nvidia-support are sources of their own in
# Debian, versioned apart (nvidia-persistenced 535.171.04 serves the 535.309.01 driver).
DRIVER_SOURCES = frozenset({"nvidia-graphics-drivers", "nvidia-open-gpu-kernel-modules"})
# Fabric manager and NSCQ must match the driver to the patch release (NVIDIA's packages,
# named per branch: nvidia-fabricmanager-535, libnvidia-nscq-535).
_FABRICMANAGER_RE = re.compile(
    r"^(nvidia-fabricmanager|cuda-drivers-fabricmanager|libnvidia-nscq)-"
)
# NVIDIA's repositories build every driver package per driver release, whatever its source.
_NVIDIA_NAME_RE = re.compile(r"^(nvidia-|libnvidia-|libcuda|firmware-nvidia-)")
# The NVIDIA Container Toolkit (upstream-pins.md): versioned on its own, never the driver's.
CONTAINER_TOOLKIT = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
# X.org, precisely: the X server, its drivers and common files; the X11 client libraries; the
# GL/GLX/EGL/GLES/Vulkan/Wayland display libraries (Debian's and NVIDIA's); NVIDIA's desktop
# metapackages and tools. A compute host needs none of them; nvidia-driver drags them all in.
XORG_RE = re.compile(
    r"^(xserver-|xorg|x11-|libx11-|libxcb|libxext|libxau|libxdmcp"
    r"|libgl1|libglx|libgles|libegl|libvulkan|libwayland-|libnvidia-egl|libnvidia-gl"
    r"|nvidia-egl-|nvidia-vulkan-|nvidia-driver$|nvidia-driver-libs$|nvidia-settings$"
    r"|nvidia-xconfig$)"
)


@dataclass(frozen=True)
class ComputeSet:
    """The packages apt resolves for the GPU hosts, and those that carry the driver version."""

    roots: list[str]  # everything the nvidia_driver role installs
    driver: list[str]  # the roots that must carry the driver version
    dkms_package: str
    fabricmanager: list[str]


def compute_set(nvidia: Nvidia, named: Iterable[str] = ()) -> ComputeSet:
    """The headless compute set: kernel module source for DKMS, nvidia-smi, the CUDA driver
    library and its JIT compilers, nvidia-persistenced, the GSP firmware, dkms, and the headers
    of each target kernel ABI (which bring the compiler and kbuild). Packages the spec already
    names (``named``, NAME or NAME=VERSION in packages.install) keep the spec's version: the
    roots leave them out, and the check of the resolved closure covers them."""
    driver = nvidia.driver
    headers = [f"linux-headers-{abi}" for abi in nvidia.kernel_abis]
    fabricmanager: list[str] = []
    if driver.source == "debian":
        dkms = "nvidia-open-kernel-dkms" if driver.modules == "open" else "nvidia-kernel-dkms"
        # Not nvidia-driver: it depends on xserver-xorg-video-nvidia and the GL libraries.
        userspace = ["nvidia-smi", "libcuda1", "libnvidia-ptxjitcompiler1", "libnvidia-nvvm4"]
        # nvidia-detect carries the PCI IDs this driver supports (/usr/share/nvidia/nvidia.ids,
        # nvidia-open.ids), which the host's preflight checks its GPUs against; the only other
        # copy is in xserver-xorg-video-nvidia.
        versioned = [dkms, *userspace, "firmware-nvidia-gsp", "nvidia-detect"]
    else:
        # NVIDIA's names: nvidia-driver-cuda is its compute-only userspace (no X11/GL).
        dkms = "nvidia-kernel-open-dkms" if driver.modules == "open" else "nvidia-kernel-dkms"
        versioned = [dkms, "nvidia-driver-cuda", "nvidia-persistenced"]
    branch = driver.pinned_branch()
    if nvidia.carries_fabricmanager() and branch:
        fabricmanager = [f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"]
    roots = [*versioned, *fabricmanager, "nvidia-persistenced", "dkms", *headers]
    if nvidia.container_toolkit:
        roots += CONTAINER_TOOLKIT
    spec_named = {item.partition("=")[0] for item in named}
    return ComputeSet(
        roots=[root for root in dict.fromkeys(roots) if root not in spec_named],
        driver=[root for root in [*versioned, *fabricmanager] if root not in spec_named],
        dkms_package=dkms,
        fabricmanager=fabricmanager,
    )


def preferences(nvidia: Nvidia) -> str:
    """apt preferences that pin the driver set to the spec's version (or branch); empty when
    the spec pins neither. The same pin the hosts get keeps apt there later."""
    driver = nvidia.driver
    if driver.version:
        pattern = f"{driver.version}-*"
    elif driver.branch:
        pattern = f"{driver.branch}.*"
    else:
        return ""
    return (
        "Package: nvidia-* libnvidia-* libcuda1 firmware-nvidia-gsp\n"
        f"Pin: version {pattern}\n"
        "Pin-Priority: 1001\n"
    )


def upstream(version: str) -> str:
    """The driver version of a Debian package version: no epoch, no Debian revision."""
    return re.sub(r"^[0-9]+:", "", version).rsplit("-", 1)[0]


def watch(nvidia: Nvidia, wanted: ComputeSet) -> tuple[list[str], CandidateCheck]:
    """What ``apt.resolve`` checks before apt solves: the driver roots and the headers."""
    headers = [f"linux-headers-{abi}" for abi in nvidia.kernel_abis]
    driver_check = check_candidates(nvidia, wanted.driver)

    def check(candidates: Mapping[str, Candidate]) -> None:
        for abi, name in zip(nvidia.kernel_abis, headers, strict=True):
            if candidates[name].version is None:
                raise BuildError(
                    f"nvidia: the apt sources carry no {name}, so DKMS cannot build the module "
                    f"for kernel ABI {abi}",
                    hint="name the ABI the GPU hosts run (uname -r) and the sources carry: "
                    "Debian's archive keeps the current point release's kernel, bookworm-security "
                    "the newest; update the hosts' kernel, or add a source that keeps this one",
                )
        driver_check(candidates)

    return [*wanted.driver, *headers], check


def check_candidates(nvidia: Nvidia, driver_roots: list[str]) -> CandidateCheck:
    """Refuse a driver set apt would mix, before apt reports only one unmet dependency."""

    def check(candidates: Mapping[str, Candidate]) -> None:
        missing = [name for name in driver_roots if candidates[name].version is None]
        if missing:
            raise BuildError(
                f"nvidia: the apt sources carry no {', '.join(missing)}"
                + (f" at version {nvidia.driver.version}" if nvidia.driver.version else ""),
                hint=_source_hint(nvidia),
            )
        chosen = {name: candidates[name].version or "" for name in driver_roots}
        common = set.intersection(
            *({upstream(v) for v in candidates[name].available} for name in driver_roots)
        )
        check_one_version(chosen, common=common, modules=nvidia.driver.modules)

    return check


def check_one_version(
    packages: Mapping[str, str],
    *,
    common: Iterable[str] | None = None,
    modules: str = "proprietary",
) -> str:
    """The one driver version ``packages`` ({name: Debian version}) carry; a BuildError that
    names each package and version when they carry several. ``common``: the versions every one
    of them is available at (None: a resolved closure, where a pin made the mix)."""
    by_version: dict[str, list[str]] = {}
    for name, version in sorted(packages.items()):
        by_version.setdefault(upstream(version), []).append(f"{name} {version}")
    if len(by_version) == 1:
        return next(iter(by_version))
    listing = "; ".join(
        f"{driver}: {', '.join(names)}" for driver, names in sorted(by_version.items())
    )
    shared = sorted(common or ())
    if common is None:
        hint = (
            "drop the versions the spec pins on driver packages in packages.install, and pin "
            "nvidia.driver.version instead: it pins the whole set"
        )
    elif shared:
        hint = f"pin nvidia.driver.version to one that every package has ({', '.join(shared)})"
    else:
        hint = "no version is carried by every one of them: change the sources"
    if modules == "open":
        hint += (
            ", or use modules: proprietary (Debian 12 carries the open kernel modules only at "
            "an older version than the security-updated driver)"
        )
    raise BuildError(
        "nvidia: the driver packages do not carry one driver version, and a kernel module of "
        f"one version cannot serve the libraries of another: {listing}",
        hint=hint,
    )


def driver_set(debs: Iterable[DebPackage], nvidia_urls: Iterable[str]) -> dict[str, str]:
    """{name: version} of the closure's packages that must carry the driver version."""
    prefixes = tuple(url.rstrip("/") + "/" for url in nvidia_urls)
    found = {}
    for deb in debs:
        if deb.name in CONTAINER_TOOLKIT:
            continue
        source = (parse_field(deb.control, "Source") or deb.name).split()[0]
        from_nvidia = bool(prefixes) and deb.url.startswith(prefixes)
        if (
            source in DRIVER_SOURCES
            or _FABRICMANAGER_RE.match(deb.name)
            or (from_nvidia and _NVIDIA_NAME_RE.match(deb.name))
        ):
            found[deb.name] = deb.version
    return found


def check_headless(debs: Iterable[DebPackage]) -> None:
    """Refuse a closure that holds any X.org package (``XORG_RE``)."""
    display = sorted(f"{deb.name} {deb.version}" for deb in debs if XORG_RE.match(deb.name))
    if display:
        raise BuildError(
            "nvidia: the GPU hosts' packages would bring X.org, which a compute host does not "
            f"need: {', '.join(display)}",
            hint="install the headless set only: drop nvidia-driver and other desktop packages "
            "from packages.install (the nvidia section adds what the driver needs)",
        )


def describe(
    nvidia: Nvidia, wanted: ComputeSet, debs: list[DebPackage], nvidia_urls: list[str]
) -> NvidiaInfo:
    """Check the resolved closure and record the driver for the manifest."""
    check_headless(debs)
    drivers = driver_set(debs, nvidia_urls)
    version = check_one_version(drivers, modules=nvidia.driver.modules)
    if nvidia.driver.version and version != nvidia.driver.version:
        raise BuildError(
            f"nvidia: the sources resolve driver {version}, not the pinned {nvidia.driver.version}",
            hint=_source_hint(nvidia),
        )
    by_name = {deb.name: deb for deb in debs}
    kernels = [
        KernelAbi(abi=abi, headers=f"linux-headers-{abi}", version=by_name[header].version)
        for abi in nvidia.kernel_abis
        if (header := f"linux-headers-{abi}") in by_name
    ]
    return NvidiaInfo(
        driver=NvidiaDriver(
            source=nvidia.driver.source,
            version=version,
            branch=version.split(".")[0],
            modules=nvidia.driver.modules,
            dkms_package=wanted.dkms_package,
            packages=drivers,
        ),
        kernel_abis=kernels,
        install=wanted.roots,
        fabricmanager={n: by_name[n].version for n in wanted.fabricmanager if n in by_name},
        container_toolkit={
            n: by_name[n].version
            for n in CONTAINER_TOOLKIT
            if nvidia.container_toolkit and n in by_name
        },
    )


def check_keyring(keyring: Path, fingerprint: str, where: str) -> None:
    """Refuse a keyring for NVIDIA's repository that holds any key but the pinned one."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise BuildError(
            "gpg is not installed on this build machine; it checks NVIDIA's repository key",
            hint="install gnupg (Debian: apt-get install gnupg)",
        )
    result = subprocess.run(  # noqa: S603 - fixed executable, a path the spec names
        [gpg, "--batch", "--with-colons", "--show-keys", str(keyring)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.splitlines()
    # A primary key's fingerprint is the fpr record right after its pub record.
    primary = [
        line.split(":")[9]
        for previous, line in zip(["", *lines], lines, strict=False)
        if line.startswith("fpr:") and previous.startswith("pub:")
    ]
    if result.returncode != 0 or primary != [fingerprint]:
        found = ", ".join(primary) or "no OpenPGP key"
        raise BuildError(
            f"{where}: keyring {keyring} holds {found}, not only the pinned key {fingerprint}",
            hint="use the key file NVIDIA publishes for this repository, and check its "
            "fingerprint (gpg --show-keys) against NVIDIA's documentation before pinning it",
        )


def _source_hint(nvidia: Nvidia) -> str:
    if nvidia.driver.source == "debian":
        return (
            "Debian 12 has the driver in bookworm (point release) and in bookworm-security "
            "(the security update): add that suite, or pin a version the sources carry"
        )
    return "check NVIDIA's repository URL and that it carries this branch and version"
