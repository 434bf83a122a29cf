"""The NVIDIA driver set: which packages the GPU hosts get, the pins, and the refusals (mixed
driver versions, X.org, a keyring that is not the pinned key). The same rules run against
Debian's real indexes in tests/integration/test_nvidia_packages.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle.content import sbom
from appliance.bundle.manifest import KernelAbi, Manifest, NvidiaDriver, NvidiaInfo
from appliance.errors import BuildError
from appliance.fetchers import nvidia
from appliance.fetchers.apt import DebPackage
from appliance.fetchers.apt_root import Candidate
from appliance.spec.nvidia import Nvidia

ABI = "6.1.0-57-amd64"


def spec(**driver: str) -> Nvidia:
    return Nvidia.model_validate({"driver": driver, "kernel_abis": [ABI, "6.1.0-50-amd64"]})


def deb(
    name: str, version: str, source: str | None = None, url: str = "http://198.18.0.1"
) -> DebPackage:
    control = (
        f"Package: {name}\n" + (f"Source: {source}\n" if source else "") + f"Version: {version}"
    )
    return DebPackage(
        name, version, "amd64", f"{name}.deb", f"{url}/{name}.deb", "0" * 64, 1, control
    )


def test_debian_compute_set_is_headless_and_has_headers_for_every_abi() -> None:
    wanted = nvidia.compute_set(spec())
    assert wanted.roots == [
        "nvidia-kernel-dkms",
        "nvidia-smi",
        "libcuda1",
        "libnvidia-ptxjitcompiler1",
        "libnvidia-nvvm4",
        "firmware-nvidia-gsp",
        "nvidia-detect",
        "nvidia-persistenced",
        "dkms",
        f"linux-headers-{ABI}",
        "linux-headers-6.1.0-50-amd64",
    ]
    # Debian builds nvidia-persistenced from a source of its own, at another version.
    assert "nvidia-persistenced" not in wanted.driver
    assert wanted.dkms_package == "nvidia-kernel-dkms"
    assert wanted.fabricmanager == []


def test_open_modules_and_names_the_spec_pins_itself() -> None:
    wanted = nvidia.compute_set(spec(modules="open"), ["libcuda1=535.261.03-1"])
    assert wanted.roots[0] == wanted.dkms_package == "nvidia-open-kernel-dkms"
    assert "libcuda1" not in wanted.roots and "libcuda1" not in wanted.driver


def test_nvidia_repo_carries_fabric_manager_on_auto_and_the_toolkit_when_asked() -> None:
    config = Nvidia.model_validate(
        {
            "driver": {"source": "nvidia-repo", "version": "575.57.08", "modules": "open"},
            "kernel_abis": [ABI],
            "container_toolkit": True,
        }
    )
    wanted = nvidia.compute_set(config)
    assert wanted.fabricmanager == ["nvidia-fabricmanager-575", "libnvidia-nscq-575"]
    assert wanted.driver == [
        "nvidia-kernel-open-dkms",
        "nvidia-driver-cuda",
        "nvidia-persistenced",
        "nvidia-fabricmanager-575",
        "libnvidia-nscq-575",
    ]
    assert wanted.roots[-4:] == list(nvidia.CONTAINER_TOOLKIT)
    off = config.model_copy(update={"fabricmanager": "off"})
    assert nvidia.compute_set(off).fabricmanager == []


@pytest.mark.parametrize(
    ("driver", "pin"),
    [({"version": "535.261.03"}, "535.261.03-*"), ({"branch": "535"}, "535.*"), ({}, None)],
)
def test_preferences_pin_the_driver_set(driver: dict[str, str], pin: str | None) -> None:
    text = nvidia.preferences(spec(**driver))
    if pin is None:
        assert text == ""
    else:
        assert text == (
            "Package: nvidia-* libnvidia-* libcuda1 firmware-nvidia-gsp\n"
            f"Pin: version {pin}\nPin-Priority: 1001\n"
        )


@pytest.mark.parametrize(
    ("version", "driver"),
    [
        ("535.309.01-0+deb12u1", "535.309.01"),
        ("1:575.57.08-1", "575.57.08"),
        ("535.261.03-1", "535.261.03"),
    ],
)
def test_upstream_version(version: str, driver: str) -> None:
    assert nvidia.upstream(version) == driver


def test_one_version_is_the_driver_version() -> None:
    packages = {"libcuda1": "535.309.01-0+deb12u1", "nvidia-smi": "535.309.01-0+deb12u1"}
    assert nvidia.check_one_version(packages) == "535.309.01"


def test_mixed_versions_are_refused_naming_each_package_and_version() -> None:
    packages = {
        "nvidia-open-kernel-dkms": "535.261.03-1",
        "libcuda1": "535.309.01-0+deb12u1",
        "nvidia-smi": "535.309.01-0+deb12u1",
    }
    with pytest.raises(BuildError) as caught:
        nvidia.check_one_version(packages, common={"535.261.03"}, modules="open")
    assert caught.value.message == (
        "nvidia: the driver packages do not carry one driver version, and a kernel module of one "
        "version cannot serve the libraries of another: 535.261.03: nvidia-open-kernel-dkms "
        "535.261.03-1; 535.309.01: libcuda1 535.309.01-0+deb12u1, nvidia-smi "
        "535.309.01-0+deb12u1"
    )
    assert caught.value.hint is not None
    assert caught.value.hint.startswith(
        "pin nvidia.driver.version to one that every package has (535.261.03), or use modules: "
        "proprietary"
    )
    # In a resolved closure, a pin of the spec's own made the mix.
    with pytest.raises(BuildError) as caught:
        nvidia.check_one_version(packages)
    assert str(caught.value.hint).startswith("drop the versions the spec pins on driver packages")


def test_candidate_check_refuses_before_apt_solves() -> None:
    check = nvidia.check_candidates(spec(), ["nvidia-kernel-dkms", "nvidia-fabricmanager-535"])
    with pytest.raises(BuildError, match="carry no nvidia-fabricmanager-535"):
        check(
            {
                "nvidia-kernel-dkms": Candidate("535.309.01-0+deb12u1", ["535.309.01-0+deb12u1"]),
                "nvidia-fabricmanager-535": Candidate(None, []),
            }
        )
    check = nvidia.check_candidates(spec(), ["nvidia-kernel-dkms", "libcuda1"])
    with pytest.raises(BuildError) as caught:
        check(
            {
                "nvidia-kernel-dkms": Candidate("535.309.01-1", ["535.309.01-1", "535.261.03-1"]),
                "libcuda1": Candidate("535.261.03-1", ["535.261.03-1"]),
            }
        )
    assert "535.261.03: libcuda1 535.261.03-1; 535.309.01: nvidia-kernel-dkms" in str(
        caught.value.message
    )
    assert "(535.261.03)" in str(caught.value.hint)


def test_driver_set_is_the_driver_sources_fabric_manager_and_what_nvidia_builds() -> None:
    nvidia_url = "http://198.18.0.2/cuda"
    debs = [
        deb("nvidia-smi", "535.309.01-0+deb12u1", "nvidia-graphics-drivers"),
        deb("firmware-nvidia-gsp", "535.309.01-0+deb12u1", "nvidia-graphics-drivers"),
        deb("nvidia-open-kernel-dkms", "535.261.03-1", "nvidia-open-gpu-kernel-modules (1)"),
        deb("nvidia-persistenced", "535.171.04-1~deb12u1"),  # Debian: a source of its own
        deb("nvidia-support", "20220217+3~deb12u1"),
        deb("dkms", "3.0.10-8+deb12u1"),
        deb("nvidia-fabricmanager-535", "535.309.01-1"),
        deb("nvidia-persistenced", "575.57.08-1", url=nvidia_url),
        deb("nvidia-container-toolkit", "1.20.1-1", url=nvidia_url),
    ]
    assert nvidia.driver_set(debs[:-2], []) == {
        "nvidia-smi": "535.309.01-0+deb12u1",
        "firmware-nvidia-gsp": "535.309.01-0+deb12u1",
        "nvidia-open-kernel-dkms": "535.261.03-1",
        "nvidia-fabricmanager-535": "535.309.01-1",
    }
    from_nvidia = nvidia.driver_set(debs[-2:], [nvidia_url])
    assert from_nvidia == {"nvidia-persistenced": "575.57.08-1"}


# From the closure of `nvidia-driver` on bookworm (display) and of the compute set (not).
DISPLAY = [
    "xserver-xorg-video-nvidia", "xserver-common", "x11-common", "x11-xkb-utils", "libx11-6",
    "libxcb1", "libxext6", "libgl1", "libglx0", "libglx-nvidia0", "libegl-nvidia0",
    "libgl1-nvidia-glvnd-glx", "libgles-nvidia2", "libvulkan1", "libwayland-client0",
    "libnvidia-egl-wayland1", "libnvidia-glcore", "nvidia-egl-icd", "nvidia-vulkan-icd",
    "nvidia-driver", "nvidia-driver-libs", "nvidia-settings", "xorg",
]  # fmt: skip
HEADLESS = [
    "nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "libnvidia-ml1", "libnvidia-cfg1",
    "nvidia-alternative", "nvidia-kernel-support", "glx-alternative-nvidia",
    "glx-alternative-mesa", "glx-diversions", "update-glx", "nvidia-driver-bin",
    "nvidia-driver-cuda", "firmware-nvidia-gsp",
    "linux-headers-6.1.0-57-amd64", "libxxhash0", "libxml2", "xz-utils",
]  # fmt: skip


def test_xorg_rule_separates_the_display_stack_from_the_compute_set() -> None:
    assert [name for name in DISPLAY if not nvidia.XORG_RE.match(name)] == []
    assert [name for name in HEADLESS if nvidia.XORG_RE.match(name)] == []
    with pytest.raises(BuildError) as caught:
        nvidia.check_headless([deb("libcuda1", "1"), deb("xserver-xorg-video-nvidia", "2")])
    assert caught.value.message.endswith(": xserver-xorg-video-nvidia 2")
    nvidia.check_headless([deb(name, "1") for name in HEADLESS])


def test_describe_records_the_driver_and_refuses_a_version_other_than_the_pinned_one() -> None:
    config = spec(version="535.309.01")
    wanted = nvidia.compute_set(config)
    debs = [
        deb("nvidia-kernel-dkms", "535.309.01-0+deb12u1", "nvidia-graphics-drivers"),
        deb("libcuda1", "535.309.01-0+deb12u1", "nvidia-graphics-drivers"),
        deb(f"linux-headers-{ABI}", "6.1.192-3", "linux"),
        deb("linux-headers-6.1.0-50-amd64", "6.1.170-1", "linux"),
    ]
    info = nvidia.describe(config, wanted, debs, [])
    assert info.driver.version == "535.309.01" and info.driver.branch == "535"
    assert info.driver.packages == {
        "libcuda1": "535.309.01-0+deb12u1",
        "nvidia-kernel-dkms": "535.309.01-0+deb12u1",
    }
    assert info.abis() == [ABI, "6.1.0-50-amd64"]
    assert info.kernel_abis[0] == KernelAbi(
        abi=ABI, headers=f"linux-headers-{ABI}", version="6.1.192-3"
    )
    with pytest.raises(
        BuildError, match=r"resolve driver 535\.309\.01, not the pinned 535\.261\.03"
    ):
        nvidia.describe(spec(version="535.261.03"), wanted, debs, [])


def test_manifest_and_sbom_carry_the_driver() -> None:
    info = NvidiaInfo(
        driver=NvidiaDriver(
            source="debian",
            version="535.309.01",
            branch="535",
            modules="proprietary",
            dkms_package="nvidia-kernel-dkms",
            packages={"libcuda1": "535.309.01-0+deb12u1"},
        ),
        kernel_abis=[KernelAbi(abi=ABI, headers=f"linux-headers-{ABI}", version="6.1.192-3")],
        install=["nvidia-kernel-dkms"],
    )
    manifest = Manifest(
        name="m", release="1", created="2026-12-01T00:00:00Z", appliance_version="0",
        spec_sha256="0" * 64, target={"os": "debian-12", "arch": "amd64"}, stack={},
        components=[], files=[], nvidia=info,
    )  # fmt: skip
    assert Manifest.model_validate_json(manifest.canonical()).nvidia == info
    document = sbom("m", "1", "0" * 64, [], [], nvidia=info)
    driver = document["components"][-1]
    assert (driver["type"], driver["name"], driver["version"]) == (
        "device-driver",
        "nvidia-driver",
        "535.309.01",
    )
    assert {"name": "appliance:nvidia:kernel-abi", "value": ABI} in driver["properties"]
    assert {"name": "appliance:nvidia:source", "value": "debian"} in driver["properties"]
    assert {"name": "appliance:nvidia:modules", "value": "proprietary"} in driver["properties"]
    assert driver["components"][0]["version"] == "535.309.01-0+deb12u1"


def _gpg(home: Path, *args: str) -> str:
    command = ["gpg", "--batch", "--homedir", str(home), "--passphrase", "", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    home = tmp_path_factory.mktemp("gnupg")
    for name in ("nvidia-standin", "someone-else"):
        _gpg(home, "--quick-generate-key", name, "ed25519", "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-keys")
    lines = listing.splitlines()
    fingerprints = [
        line.split(":")[9]
        for previous, line in zip(["", *lines], lines, strict=False)
        if line.startswith("fpr:") and previous.startswith("pub:")
    ]
    yield home, fingerprints
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def test_keyring_must_hold_exactly_the_pinned_key(
    keys: tuple[Path, list[str]], tmp_path: Path
) -> None:
    home, (pinned, other) = keys
    one = tmp_path / "one.gpg"
    one.write_bytes(subprocess.run(
        ["gpg", "--homedir", str(home), "--export", pinned], capture_output=True, check=True
    ).stdout)  # fmt: skip
    nvidia.check_keyring(one, pinned, "packages.sources[1]")
    with pytest.raises(BuildError) as caught:
        nvidia.check_keyring(one, other, "packages.sources[1]")
    assert caught.value.message == (
        f"packages.sources[1]: keyring {one} holds {pinned}, not only the pinned key {other}"
    )
    both = tmp_path / "both.gpg"
    both.write_bytes(subprocess.run(
        ["gpg", "--homedir", str(home), "--export", pinned, other], capture_output=True, check=True
    ).stdout)  # fmt: skip
    with pytest.raises(BuildError, match="not only the pinned key"):
        nvidia.check_keyring(both, pinned, "packages.sources[1]")
    junk = tmp_path / "junk.gpg"
    junk.write_text("not a key")
    with pytest.raises(BuildError, match="holds no OpenPGP key"):
        nvidia.check_keyring(junk, pinned, "packages.sources[1]")
