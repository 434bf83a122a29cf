"""Fixtures for the integration tests that install a bundle."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.bundle.build import BuildOptions, build_bundle
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


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with jq, nftables, python3-apt and nginx-light, built once per session."""
    root = tmp_path_factory.mktemp("install")
    (root / "spec.yaml").write_text(SPEC)
    keygen(root / "key", "install test")
    keygen(root / "other", "someone else")
    build_bundle(
        BuildOptions(
            spec_path=root / "spec.yaml",
            output=root / "bundle",
            sign_key=root / "key",
            cache=Path.home() / ".cache" / "appliance",
        )
    )
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
