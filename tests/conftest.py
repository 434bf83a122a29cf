"""Shared fixtures: the harness test-host image and air-gapped containers made from it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.bundle.signing import keygen
from tests.fixtures.debian_mirror import NoMirrorError, debian_mirror, debian_security_mirror
from tests.fixtures.hosts import Host, harness_image, start_host


def pytest_configure(config: pytest.Config) -> None:
    """The specs the tests build read ``${DEBIAN_MIRROR}``: unless the environment sets it, use
    the mirror this machine's apt sources use. Without one, a test that builds from Debian's
    archive fails with the spec's own report naming the variable."""
    with contextlib.suppress(NoMirrorError):
        os.environ["DEBIAN_MIRROR"] = debian_mirror()
    # The NVIDIA driver's security updates come from Debian's security archive.
    with contextlib.suppress(NoMirrorError):
        os.environ["DEBIAN_SECURITY_MIRROR"] = debian_security_mirror()


@pytest.fixture(scope="session")
def test_image() -> str:
    """The systemd test-host image built by tests/harness/setup.sh."""
    image = harness_image()
    if shutil.which("docker") is None or image is None:
        pytest.skip("needs Docker and the harness image: run tests/harness/setup.sh")
    probe = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"harness image {image} is missing: run tests/harness/setup.sh")
    return image


Exec = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def airgapped_host(test_image: str) -> Iterator[Callable[..., Exec]]:
    """Start containers with no network at all (``--network none``); removed afterwards.

    Call it with bind mounts (``{host_path: container_path}``); it returns a function that runs
    a command inside the container.
    """
    names: list[str] = []

    def start(mounts: dict[Path, str] | None = None) -> Exec:
        name = f"appliance-test-{uuid.uuid4().hex[:10]}"
        volumes = [
            arg for host, inner in (mounts or {}).items() for arg in ("-v", f"{host}:{inner}:ro")
        ]
        subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "none",
                *volumes,
                test_image,
                "sleep",
                "infinity",
            ],
            check=True,
            capture_output=True,
        )
        names.append(name)

        def run(*command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["docker", "exec", name, *command], capture_output=True, text=True, check=False
            )

        return run

    yield start
    for name in names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.fixture
def systemd_host(test_image: str) -> Iterator[Callable[..., tuple[str, Exec]]]:
    """Air-gapped hosts with systemd as PID 1 (``--network none``), booted and given a default
    route that leads nowhere; removed afterwards. Returns (container name, run function)."""
    hosts: list[Host] = []

    def start(
        mounts: dict[Path, str] | None = None,
        network: str | None = None,
        address: str | None = None,
    ) -> tuple[str, Exec]:
        host = start_host(test_image, mounts, network, address)
        hosts.append(host)
        return host.name, host.run

    yield start
    for host in hosts:
        host.remove()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(private key, its public key, another signer's public key), for signing test bundles."""
    root = tmp_path_factory.mktemp("keys")
    keygen(root / "key", "tests")
    keygen(root / "other", "someone else")
    return root / "key", root / "key.pub", root / "other.pub"
