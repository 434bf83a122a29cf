"""The NVIDIA driver set resolved from Debian's real indexes, from an empty minimal Debian, and
from a signed stand-in for NVIDIA's repository; the refusals on the real version trap.

Nothing is mocked: apt resolves against Debian's archive and security archive
(``$DEBIAN_MIRROR``, ``$DEBIAN_SECURITY_MIRROR``, or this machine's apt sources). Versions are
read from the indexes, not written here, so the tests follow the archive as it moves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.manifest import NvidiaInfo, Target, parse_manifest
from appliance.cli import main
from appliance.errors import BuildError, PackageResolveError
from appliance.fetchers import nvidia
from appliance.fetchers.apt import DebPackage
from appliance.fetchers.apt_repo import parse_field
from appliance.fetchers.apt_root import AptRoot
from appliance.fetchers.packages import PackagesSource, resolve_plan
from appliance.fetchers.source import Request
from appliance.spec import load_spec
from tests.fixtures.cli import run_cli
from tests.fixtures.http_server import Route, serve
from tests.fixtures.nvidia_repo import DRIVER, OLDER_FABRICMANAGER, TOOLKIT, build_repo
from tests.fixtures.specs import debian_gpu_sources, spec_text

pytestmark = [pytest.mark.network]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One apt root for the module: Debian's indexes are fetched once."""
    return tmp_path_factory.mktemp("nvidia-apt")


def write_spec(directory: Path, **kwargs: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spec.yaml"
    path.write_text(spec_text("gpu", **kwargs))
    return path


def closure(spec_path: Path, work: Path) -> tuple[list[DebPackage], NvidiaInfo | None]:
    """What build-bundle resolves for the spec, without downloading the debs."""
    request = Request(load_spec(spec_path), spec_path, Target(os="debian-12", arch="amd64"), None)
    plan = PackagesSource().check(request)
    assert plan is not None
    return resolve_plan(plan, request.spec, "amd64", work)


@pytest.fixture(scope="module")
def abi(work: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The kernel ABI Debian's linux-headers-amd64 points at today."""
    spec = load_spec(
        write_spec(tmp_path_factory.mktemp("abi"), nvidia={"kernel_abis": ["6.1.0-1-amd64"]})
    )
    assert spec.packages is not None
    root = AptRoot(work / "apt-amd64", "amd64", spec.packages.sources)
    root.update()
    version = root.candidates(["linux-headers-amd64"])["linux-headers-amd64"].version
    control = root.read_index()[("linux-headers-amd64", str(version), "amd64")].control
    found = re.search(r"linux-headers-(\S+-amd64)", parse_field(control, "Depends") or "")
    assert found, control
    return found[1]


def test_compute_set_from_an_empty_minimal_debian_has_no_xorg(
    abi: str, work: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    debs, info = closure(write_spec(tmp_path, nvidia={"kernel_abis": [abi]}), work)
    seconds = time.monotonic() - started
    names = {deb.name for deb in debs}
    assert {
        "nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "libnvidia-ptxjitcompiler1",
        "nvidia-persistenced", "firmware-nvidia-gsp", "nvidia-detect", "dkms",
        f"linux-headers-{abi}", "gcc", "make",
    } <= names  # fmt: skip
    # The headers bring what DKMS builds with: kbuild and the kernel's own compiler.
    assert any(name.startswith("linux-kbuild-") for name in names)
    assert any(name.startswith("linux-compiler-gcc-") for name in names)
    assert [name for name in names if nvidia.XORG_RE.match(name)] == []
    assert "nvidia-driver" not in names
    # Minbase packages built from a closure package's source come along, at its version: a
    # host from an older point release has perl-base, but perhaps not the one perl needs.
    by_name = {deb.name: deb for deb in debs}
    assert by_name["perl-base"].version == by_name["perl"].version
    assert by_name["libgcc-s1"].version == by_name["gcc-12"].version
    assert "bash" not in names, "a minbase package of no closure package's source stays out"
    assert info is not None
    assert info.abis() == [abi]
    assert info.driver.source == "debian" and info.driver.modules == "proprietary"
    assert info.driver.dkms_package == "nvidia-kernel-dkms"
    assert {nvidia.upstream(v) for v in info.driver.packages.values()} == {info.driver.version}
    assert info.driver.packages["nvidia-kernel-dkms"] == next(
        deb.version for deb in debs if deb.name == "nvidia-kernel-dkms"
    )
    size = sum(deb.size for deb in debs)
    print(f"\ncompute set for {abi}: {len(debs)} packages, {size / 1e6:.1f} MB, "
          f"driver {info.driver.version}, resolved in {seconds:.1f} s")  # fmt: skip


def test_the_nvidia_driver_metapackage_is_refused_for_bringing_xorg(
    abi: str, work: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, nvidia={"kernel_abis": [abi]}, packages=["nvidia-driver"])
    with pytest.raises(BuildError) as caught:
        closure(spec, work)
    message = caught.value.message
    assert message.startswith("nvidia: the GPU hosts' packages would bring X.org")
    for name in ("xserver-xorg-video-nvidia", "libx11-6", "libglx-nvidia0"):
        assert re.search(rf"\b{name} \S+", message), name


def test_open_modules_on_bookworm_are_refused_naming_both_versions_until_pinned(
    abi: str, work: Path, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path / "open", nvidia={"kernel_abis": [abi], "driver": {"modules": "open"}}
    )
    with pytest.raises(BuildError) as caught:
        closure(spec, work)
    message = caught.value.message
    # e.g. "535.261.03: nvidia-open-kernel-dkms 535.261.03-1; 535.309.01: ... libcuda1 ..."
    versions = dict(re.findall(r"(\d+\.\d+\.\d+): ([^;]+)", message.split(": ", 2)[2]))
    assert len(versions) == 2, message
    open_version = next(v for v, names in versions.items() if "nvidia-open-kernel-dkms" in names)
    other = next(v for v in versions if v != open_version)
    assert f"libcuda1 {other}" in versions[other]
    assert f"nvidia-open-kernel-dkms {open_version}-" in versions[open_version]
    assert caught.value.hint is not None and f"({open_version})" in caught.value.hint

    # The refusal's own advice works: pinned to the open modules' version, the set is one.
    pinned = write_spec(
        tmp_path / "pinned",
        nvidia={"kernel_abis": [abi], "driver": {"modules": "open", "version": open_version}},
    )
    debs, info = closure(pinned, work)
    assert info is not None and info.driver.version == open_version
    assert info.driver.dkms_package == "nvidia-open-kernel-dkms"
    assert [name for name in (d.name for d in debs) if nvidia.XORG_RE.match(name)] == []


def test_a_spec_pinning_one_driver_package_elsewhere_is_refused_naming_both_versions(
    abi: str, work: Path, tmp_path: Path
) -> None:
    probe = load_spec(write_spec(tmp_path / "probe", nvidia={"kernel_abis": [abi]}))
    assert probe.packages is not None
    root = AptRoot(work / "apt-amd64", "amd64", probe.packages.sources)
    root.update()
    nvvm = root.candidates(["libnvidia-nvvm4"])["libnvidia-nvvm4"]
    assert nvvm.version is not None
    older = next(v for v in nvvm.available if nvidia.upstream(v) != nvidia.upstream(nvvm.version))
    spec = write_spec(
        tmp_path / "mixed", nvidia={"kernel_abis": [abi]}, packages=[f"libnvidia-nvvm4={older}"]
    )
    with pytest.raises(BuildError) as caught:
        closure(spec, work)
    message = caught.value.message
    assert message.startswith("nvidia: the driver packages do not carry one driver version")
    assert f"{nvidia.upstream(older)}: libnvidia-nvvm4 {older}" in message
    assert f"libcuda1 {nvvm.version}" in message
    assert caught.value.hint is not None
    assert caught.value.hint.startswith("drop the versions the spec pins on driver packages")


def test_a_kernel_abi_the_archive_does_not_carry_is_refused(work: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, nvidia={"kernel_abis": ["6.1.0-1-amd64"]})
    with pytest.raises(BuildError) as caught:
        closure(spec, work)
    assert caught.value.message == (
        "nvidia: the apt sources carry no linux-headers-6.1.0-1-amd64, so DKMS cannot build the "
        "module for kernel ABI 6.1.0-1-amd64"
    )


# NVIDIA's repository, through its stand-in -------------------------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The stand-in repository, served over loopback HTTP like NVIDIA's, and a second key."""
    workdir = tmp_path_factory.mktemp("nvidia-standin")
    home = workdir / "gnupg"
    home.mkdir(mode=0o700)
    repo = build_repo(workdir, home, "NVIDIA stand-in")
    other = build_repo(workdir / "other", home, "someone else")
    routes = {f"/cuda/{path.name}": Route(path.read_bytes()) for path in repo.files()}
    with serve(routes) as served:
        yield {"repo": repo, "other": other, "url": served.url("/cuda"), "served": served}


def nvidia_spec(
    directory: Path, standin: dict[str, Any], abi: str, keyring: Path, **driver: Any
) -> Path:
    source = {
        "kind": "nvidia",
        "url": standin["url"],
        "keyring": str(keyring),
        "fingerprint": standin["repo"].fingerprint,
    }
    section = {
        "driver": {"source": "nvidia-repo", **driver},
        "kernel_abis": [abi],
        "container_toolkit": True,
    }
    return write_spec(directory, nvidia=section, sources=[*debian_gpu_sources(), source])


def test_nvidia_repo_source_gives_driver_fabric_manager_and_toolkit(
    abi: str, work: Path, tmp_path: Path, standin: dict[str, Any]
) -> None:
    spec = nvidia_spec(
        tmp_path, standin, abi, standin["repo"].keyring, branch="575", modules="open"
    )
    debs, info = closure(spec, work)
    by_name = {deb.name: deb for deb in debs}
    assert info is not None
    assert info.driver.source == "nvidia-repo" and info.driver.version == DRIVER
    assert info.driver.dkms_package == "nvidia-kernel-open-dkms"
    assert info.fabricmanager == {
        "nvidia-fabricmanager-575": f"{DRIVER}-1",
        "libnvidia-nscq-575": f"{DRIVER}-1",
    }
    assert info.container_toolkit == dict.fromkeys(nvidia.CONTAINER_TOOLKIT, TOOLKIT)
    # Every NVIDIA package from NVIDIA's repository, the rest (dkms, headers) from Debian's.
    for name in [*info.driver.packages, *info.container_toolkit]:
        assert by_name[name].url.startswith(standin["url"] + "/"), name
    assert not by_name["dkms"].url.startswith(standin["url"])
    assert f"linux-headers-{abi}" in by_name
    assert info.driver.packages["nvidia-persistenced"] == f"{DRIVER}-1"
    assert "nvidia-kernel-dkms" not in by_name


def test_nvidia_repo_fabric_manager_of_another_build_is_refused(
    abi: str, work: Path, tmp_path: Path, standin: dict[str, Any]
) -> None:
    spec = nvidia_spec(tmp_path, standin, abi, standin["repo"].keyring, version=OLDER_FABRICMANAGER)
    with pytest.raises(BuildError) as caught:
        closure(spec, work)
    message = caught.value.message
    assert f"{OLDER_FABRICMANAGER}: nvidia-fabricmanager-575 {OLDER_FABRICMANAGER}-1" in message
    assert f"{DRIVER}: " in message and f"nvidia-driver-cuda {DRIVER}-1" in message


def test_nvidia_repo_keyring_must_be_the_pinned_key(
    abi: str, work: Path, tmp_path: Path, standin: dict[str, Any]
) -> None:
    spec = nvidia_spec(tmp_path, standin, abi, standin["other"].keyring, branch="575")
    with pytest.raises(BuildError, match="not only the pinned key"):
        closure(spec, work)


def test_nvidia_repo_signed_by_another_key_is_refused_by_apt(
    abi: str, work: Path, tmp_path: Path, standin: dict[str, Any]
) -> None:
    """The keyring is the pinned key, but the repository's signature is someone else's."""
    served = standin["served"]
    other = standin["other"].root
    saved = {
        name: served.routes[f"/cuda/{name}"] for name in ("InRelease", "Release.gpg", "Release")
    }
    for name in saved:
        served.routes[f"/cuda/{name}"] = Route((other / name).read_bytes())
    try:
        spec = nvidia_spec(tmp_path, standin, abi, standin["repo"].keyring, branch="575")
        with pytest.raises(PackageResolveError, match="is not signed by a key in keyring"):
            closure(spec, tmp_path / "apt")
    finally:
        served.routes.update(saved)


# The bundle, end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_bundle(abi: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bundle built through the CLI from a spec with the debian driver source, timed."""
    root = tmp_path_factory.mktemp("gpu-bundle")
    spec = write_spec(root / "spec", nvidia={"kernel_abis": [abi]})
    with pytest.raises(SystemExit) as done:
        main(["keygen", "-o", str(root / "key")])
    assert done.value.code == 0
    argv = ["--json", "build-bundle", str(spec), "-o", str(root / "out"),
            "--sign-key", str(root / "key"), "--cache", str(root / "cache")]  # fmt: skip
    stdout = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as done:
        main(argv)
    seconds = time.monotonic() - started
    assert done.value.code == 0, stdout.getvalue()
    return {"root": root, "bundle": root / "out", "report": json.loads(stdout.getvalue()),
            "seconds": seconds}  # fmt: skip


@pytest.mark.slow
def test_bundle_from_the_debian_driver_source_holds_the_compute_set_and_no_xorg(
    abi: str, gpu_bundle: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle: Path = gpu_bundle["bundle"]
    report = gpu_bundle["report"]
    manifest = parse_manifest((bundle / "manifest.json").read_bytes(), "manifest.json")
    assert manifest.nvidia is not None
    assert manifest.nvidia.abis() == [abi]
    assert manifest.nvidia.kernel_abis[0].headers == f"linux-headers-{abi}"
    # The repository the hosts install from lists the compute set, and nothing of X.org.
    packages = (bundle / "repo/Packages").read_text()
    names = set(re.findall(r"^Package: (\S+)$", packages, re.MULTILINE))
    assert set(manifest.nvidia.install) <= names
    assert {"nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced",
            "firmware-nvidia-gsp", "dkms", f"linux-headers-{abi}"} <= names  # fmt: skip
    assert [name for name in names if nvidia.XORG_RE.match(name)] == []
    versions = {
        parse_field(paragraph, "Package"): parse_field(paragraph, "Version")
        for paragraph in packages.split("\n\n")
        if paragraph.strip()
    }
    for name, version in manifest.nvidia.driver.packages.items():
        assert versions[name] == version
    # Every deb is in the bundle, by digest.
    debs = [entry for entry in manifest.files if entry.kind == "deb"]
    for entry in debs:
        assert hashlib.sha256((bundle / entry.path).read_bytes()).hexdigest() == entry.sha256
    sbom = json.loads((bundle / "sbom.cdx.json").read_bytes())
    driver = next(c for c in sbom["components"] if c["name"] == "nvidia-driver")
    assert driver["version"] == manifest.nvidia.driver.version
    assert {"name": "appliance:nvidia:kernel-abi", "value": abi} in driver["properties"]
    key = gpu_bundle["root"] / "key.pub"
    code, _, err = run_cli(capsys, "verify-bundle", str(bundle), "--pubkey", str(key))
    assert code == 0, err
    deb_bytes = sum(entry.size for entry in debs)
    print(f"\nbundle with the debian driver for {abi}: built in {gpu_bundle['seconds']:.0f} s, "
          f"{report['bytes'] / 1e6:.0f} MB in {report['files']} files, {len(debs)} debs "
          f"({deb_bytes / 1e6:.0f} MB), driver {manifest.nvidia.driver.version}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.docker
def test_an_air_gapped_minimal_debian_can_install_the_compute_set_from_the_bundle_alone(
    gpu_bundle: dict[str, Any], test_image: str
) -> None:
    """apt on a host with no network plans the whole install from the bundle's repository: the
    closure holds everything a fresh host lacks (the install itself, with DKMS, is the
    nvidia_driver role's test)."""
    bundle: Path = gpu_bundle["bundle"]
    manifest = parse_manifest((bundle / "manifest.json").read_bytes(), "manifest.json")
    assert manifest.nvidia is not None
    for path in [bundle, *bundle.rglob("*")]:  # apt reads as its unprivileged _apt user
        path.chmod(0o755 if path.is_dir() else 0o644)
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--network", "none", "-v", f"{bundle}:/srv/bundle:ro",
         test_image, "sleep", "infinity"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    container = started.stdout.strip()
    sources = (
        "Types: deb\nURIs: file:/srv/bundle\nSuites: repo/\n"
        "Signed-By: /srv/bundle/repo/archive-key.gpg\n"
    )
    script = (
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && "
        f"printf '{sources}' > /etc/apt/sources.list.d/appliance.sources && "
        "apt-get update --error-on=any && "
        "apt-get install -s --no-install-recommends " + " ".join(manifest.nvidia.install)
    )
    try:
        done = subprocess.run(
            ["docker", "exec", container, "sh", "-c", script],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    planned = re.findall(r"^Inst (\S+) \((\S+)", done.stdout, re.MULTILINE)
    names = {name for name, _ in planned}
    assert set(manifest.nvidia.install) <= names
    assert [name for name in names if nvidia.XORG_RE.match(name)] == []
    for name, version in planned:
        if name in manifest.nvidia.driver.packages:
            assert version == manifest.nvidia.driver.packages[name]
