"""Fixtures for the integration tests that install a bundle."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.bundle.signing import keygen
from tests.fixtures.bundles import signed_bundle
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with jq, nftables, python3-apt and nginx-light, built once per session."""
    root = tmp_path_factory.mktemp("install")
    keygen(root / "other", "someone else")
    spec = spec_text(
        "install-test",
        "2026.11.7",
        stack=SYSTEMD_LLAMACPP,
        packages=["jq", "nftables", "python3-apt", "nginx-light"],
    )
    signed_bundle(root, spec, "install test")
    return root


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
