"""Shared fixtures: the harness test-host image and air-gapped containers made from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _harness_image() -> str | None:
    if "APPLIANCE_TEST_IMAGE" in os.environ:
        return os.environ["APPLIANCE_TEST_IMAGE"]
    env = ROOT / ".cache" / "harness.env"
    if env.is_file():
        for line in env.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "APPLIANCE_TEST_IMAGE":
                return value
    return None


@pytest.fixture(scope="session")
def test_image() -> str:
    """The systemd test-host image built by tests/harness/setup.sh."""
    image = _harness_image()
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


SYSTEMD_FLAGS = [
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--cgroupns=host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/tmp",
]

# An isolated server has no gateway, but k3s (and so preflight) wants a default route. This
# kernel has no dummy driver: a veth pair whose peer goes nowhere gives the same shape.
NOWHERE_ROUTE = (
    "ip link add air0 type veth peer name air0-peer && "
    "ip addr add 198.18.255.254/32 dev air0 && ip link set air0-peer up && "
    "ip link set air0 up && ip route add default dev air0"
)


@pytest.fixture
def systemd_host(test_image: str) -> Iterator[Callable[..., tuple[str, Exec]]]:
    """Air-gapped hosts with systemd as PID 1 (``--network none``), booted and given a default
    route that leads nowhere; removed afterwards. Returns (container name, run function)."""
    names: list[str] = []

    def start(mounts: dict[Path, str] | None = None) -> tuple[str, Exec]:
        name = f"appliance-host-{uuid.uuid4().hex[:10]}"
        volumes = [
            a for host, inner in (mounts or {}).items() for a in ("-v", f"{host}:{inner}:ro")
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
                *SYSTEMD_FLAGS,
                *volumes,
                test_image,
            ],
            check=True,
            capture_output=True,
        )
        names.append(name)

        def run(*command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["docker", "exec", name, *command], capture_output=True, text=True, check=False
            )

        state = ""
        for _ in range(100):
            state = run("systemctl", "is-system-running").stdout.strip()
            if state in {"running", "degraded"}:
                break
            time.sleep(0.2)
        assert state in {"running", "degraded"}, f"{name} did not boot: {state}"
        assert run("sh", "-c", NOWHERE_ROUTE).returncode == 0
        return name, run

    yield start
    for name in names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
