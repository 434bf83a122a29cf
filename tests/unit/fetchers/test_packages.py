"""The roles' OS packages join the spec's as roots of the apt closure, and the manifest says
which role needs which."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle.manifest import Target
from appliance.errors import BuildError
from appliance.fetchers.packages import PackagesSource, by_role, closure_roots
from appliance.fetchers.source import Request
from appliance.spec import parse_spec

BASE = (
    "version: 1\nname: unit\nrelease: '1'\ntargets: [{os: debian-12, arch: amd64}]\n"
    "stack: {orchestrator: systemd, registry: none, object_store: filesystem, runtime: llamacpp}\n"
)
SOURCES = (
    "packages:\n  sources:\n    - {kind: apt, url: 'http://198.18.0.1/debian', suites: [bookworm],"
    " components: [main], keyring: keyring.gpg}\n"
)
BASE_ROLES = {"firewall": ["nftables"], "local_repo": ["nginx-light", "python3-apt"]}
MODEL = "models:\n  - {name: tiny, source: tiny.gguf}\n"


def request(tmp_path: Path, text: str) -> Request:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return Request(parse_spec(text, str(path)), path, Target(os="debian-12", arch="amd64"), None)


def test_role_packages_are_roots_beside_the_spec_packages_and_a_pin_wins() -> None:
    needed = {"python3-apt": ["local_repo"], "nftables": ["firewall"], "jq": ["someone"]}
    assert closure_roots(["jq=1.6-2.1", "curl"], needed) == [
        "jq=1.6-2.1",
        "curl",
        "python3-apt",
        "nftables",
    ]
    assert by_role({"nftables": ["firewall"], "libfoo": ["b_role", "a_role"]}) == {
        "a_role": ["libfoo"],
        "b_role": ["libfoo"],
        "firewall": ["nftables"],
    }


def test_a_spec_listing_only_sources_gets_the_roles_packages(tmp_path: Path) -> None:
    (tmp_path / "keyring.gpg").write_bytes(b"key")
    plan = PackagesSource().check(request(tmp_path, BASE + SOURCES))
    assert plan is not None and plan.packages is not None
    assert plan.packages.install == ["python3-apt", "nginx-light", "nftables"]
    assert plan.requested == []
    assert plan.role_packages == BASE_ROLES
    # Keyrings are relative to the spec, made absolute for apt.
    assert plan.packages.sources[0].keyring == str(tmp_path / "keyring.gpg")


def test_a_runtime_role_adds_its_packages_when_the_bundle_serves_models(tmp_path: Path) -> None:
    (tmp_path / "keyring.gpg").write_bytes(b"key")
    text = BASE + SOURCES + "  install: [jq]\n" + MODEL
    plan = PackagesSource().check(request(tmp_path, text))
    assert plan is not None and plan.packages is not None
    # openssl: the site CA's, for the gateway's HTTPS certificate (gateway_tls: site_ca).
    assert plan.packages.install == [
        "jq", "python3-apt", "nginx-light", "nftables", "libgomp1", "openssl"
    ]  # fmt: skip
    assert plan.requested == ["jq"]
    assert plan.role_packages["runtime_llamacpp"] == ["libgomp1"]
    assert plan.role_packages["site_ca"] == ["openssl"]


def test_no_packages_section_builds_but_warns_with_every_package_and_role(
    tmp_path: Path,
) -> None:
    spec_request = request(tmp_path, BASE)
    plan = PackagesSource().check(spec_request)
    assert plan is not None and plan.packages is None
    assert plan.role_packages == BASE_ROLES
    assert spec_request.warnings == [
        "the spec has no packages section, so the bundle carries no OS packages: every host "
        "must already have python3-apt (role local_repo); nginx-light (role local_repo); "
        "nftables (role firewall), or the install fails. Add a packages section with the "
        "archive's sources to carry them"
    ]


def test_a_missing_keyring_is_named_before_anything_is_fetched(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"packages.sources\[0\].keyring: .*keyring.gpg does not"):
        PackagesSource().check(request(tmp_path, BASE + SOURCES))


def test_the_nvidia_section_adds_the_compute_set_and_the_spec_keeps_its_own_pins(
    tmp_path: Path,
) -> None:
    (tmp_path / "keyring.gpg").write_bytes(b"key")
    sources = SOURCES.replace(
        "components: [main]", "components: [main, contrib, non-free, non-free-firmware]"
    )
    text = (
        BASE + sources + "  install: [jq, libcuda1=535.261.03-1]\n"
        "nvidia:\n  kernel_abis: [6.1.0-57-amd64]\n"
    )
    plan = PackagesSource().check(request(tmp_path, text))
    assert plan is not None and plan.packages is not None and plan.gpu is not None
    assert plan.packages.install == [
        "jq", "libcuda1=535.261.03-1",
        "nvidia-kernel-dkms", "nvidia-smi", "libnvidia-ptxjitcompiler1", "libnvidia-nvvm4",
        "firmware-nvidia-gsp", "nvidia-detect", "nvidia-persistenced", "dkms",
        "linux-headers-6.1.0-57-amd64",
        "python3-apt", "nginx-light", "nftables",
        # The nvidia_driver role's own (initramfs rebuild, module tools, Secure Boot signing).
        "initramfs-tools", "kmod", "mokutil", "openssl",
    ]  # fmt: skip
    assert plan.role_packages["nvidia_driver"] == ["initramfs-tools", "kmod", "mokutil", "openssl"]
    # What the manifest lists as the spec's own stays the spec's.
    assert plan.requested == ["jq", "libcuda1"]


def test_an_nvidia_source_whose_keyring_is_not_a_key_is_refused_before_fetching(
    tmp_path: Path,
) -> None:
    (tmp_path / "keyring.gpg").write_bytes(b"key")
    (tmp_path / "nvidia.gpg").write_bytes(b"not a key")
    text = (
        BASE + SOURCES + "    - {kind: nvidia, url: 'http://198.18.0.2/cuda', keyring: nvidia.gpg,"
        f" fingerprint: {'A' * 40}}}\n"
    )
    with pytest.raises(BuildError) as caught:
        PackagesSource().check(request(tmp_path, text))
    assert caught.value.message == (
        f"packages.sources[1]: keyring {tmp_path / 'nvidia.gpg'} holds no OpenPGP key, not only "
        f"the pinned key {'A' * 40}"
    )
