"""Fixtures for the integration tests that install a bundle."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.build import BuildOptions, build_bundle
from appliance.bundle.signing import keygen

SPEC = """\
version: 1
name: install-test
release: 2026.11.7
targets: [{os: debian-12, arch: amd64}]
stack: {orchestrator: systemd, registry: none, object_store: filesystem, runtime: llamacpp}
packages:
  sources:
    - kind: apt
      url: http://deb.debian.org/debian
      suites: [bookworm]
      components: [main]
      keyring: /usr/share/keyrings/debian-archive-keyring.gpg
  install: [jq, nftables, python3-apt, nginx-light]
"""


# What install prints once, at the end of the first install of a bundle with models.
_OPERATOR_KEY = re.compile(r"\(shown this once, store it now\): (apl_\S+)")


def signed_bundle(root: Path, spec: str, signer: str) -> Path:
    """``spec`` built into ``root/bundle``, signed with a fresh ``root/key`` (and key.pub),
    through the shared download cache."""
    (root / "spec.yaml").write_text(spec)
    keygen(root / "key", signer)
    build_bundle(
        BuildOptions(
            spec_path=root / "spec.yaml",
            output=root / "bundle",
            sign_key=root / "key",
            cache=Path.home() / ".cache" / "appliance",
        )
    )
    return root / "bundle"


def operator_key(install_stdout: str) -> str:
    """The operator's API key from a first install's output."""
    found = _OPERATOR_KEY.search(install_stdout)
    assert found, install_stdout[-2000:]
    return found.group(1)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with jq, nftables, python3-apt and nginx-light, built once per session."""
    root = tmp_path_factory.mktemp("install")
    keygen(root / "other", "someone else")
    signed_bundle(root, SPEC, "install test")
    return root


def mounts(root: Path, bundle_dir: str = "bundle") -> dict[Path, str]:
    return {
        root / bundle_dir: "/srv/bundle",
        root / "key.pub": "/srv/key.pub",
        root / "other.pub": "/srv/other.pub",
        root / "inventories": "/srv/inventories",
    }


@pytest.fixture
def lab_network() -> Iterator[Callable[[str], str]]:
    """Internal docker networks (no way out) in the lab range: call with a subnet."""
    names: list[str] = []

    def create(subnet: str) -> str:
        name = f"appliance-lab-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["docker", "network", "create", "--internal", "--subnet", subnet, name],
            check=True,
            capture_output=True,
        )
        names.append(name)
        return name

    yield create
    for name in names:
        subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)
