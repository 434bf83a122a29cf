"""appliance install end to end: the real command, on air-gapped systemd hosts, from a bundle
built by build-bundle. Nothing reaches any network: the hosts have none."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.install import mounts

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

Run = Callable[..., subprocess.CompletedProcess[str]]
Host = Callable[..., tuple[str, Run]]


@pytest.fixture
def inventories(bundle: Path) -> Path:
    directory = bundle / "inventories"
    directory.mkdir(exist_ok=True)
    local = "ansible_connection: local\n          ansible_python_interpreter: /usr/bin/python3"
    (directory / "too-big.yml").write_text(
        "all:\n  children:\n    depot:\n      hosts:\n        localhost:\n"
        f"          {local}\n          preflight_data_bytes: 1125899906842624\n"
    )
    (directory / "unknown-group.yml").write_text(
        f"all:\n  children:\n    depot:\n      hosts:\n        localhost:\n          {local}\n"
        "    databases:\n      hosts:\n        db-1:\n"
    )
    (directory / "unreachable.yml").write_text(
        f"all:\n  children:\n    depot:\n      hosts:\n        localhost:\n          {local}\n"
        "    gpu_nodes:\n      hosts:\n        gpu-1:\n          ansible_host: 198.18.99.99\n"
        "          ansible_ssh_timeout: 3\n"
    )
    return directory


def install(run: Run, *args: str) -> subprocess.CompletedProcess[str]:
    return run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub", *args)


def untouched(run: Run) -> None:
    """Nothing of the install reached the host's configuration."""
    assert run("test", "-e", "/etc/apt/sources.list.d/appliance.sources").returncode == 1
    assert run("test", "-e", "/etc/systemd/system/appliance-firewall.service").returncode == 1
    assert (
        run("nft", "list", "tables").stdout == ""
        or "appliance" not in run("nft", "list", "tables").stdout
    )


def test_first_install_then_an_idempotent_rerun(
    bundle: Path, inventories: Path, systemd_host: Host
) -> None:
    _, run = systemd_host(mounts(bundle))
    first = install(run)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert "PLAY Check every host before anything changes" in lines
    assert "PLAY Deny egress" in lines
    assert "    changed: [localhost] Refresh the package lists" in lines
    assert lines[-2].startswith("installed install-test 2026.11.7 on 1 host in ")
    assert "failed=0" in lines[-2]

    # The bundle's repository is the only package source, and it works with no network.
    sources = run("sh", "-c", "ls /etc/apt/sources.list.d; cat /etc/apt/sources.list")
    assert sources.stdout.split() == ["appliance.sources"]
    assert (
        "URIs: file:/opt/appliance/releases/2026.11.7"
        in run("cat", "/etc/apt/sources.list.d/appliance.sources").stdout
    )
    assert run("jq", "--version").stdout.strip() == "jq-1.6"
    # Egress is denied by a persistent ruleset.
    chain = run("nft", "list", "chain", "inet", "appliance", "output").stdout
    assert "policy drop" in chain
    assert run("systemctl", "is-enabled", "appliance-firewall.service").stdout.strip() == "enabled"
    assert run("readlink", "/opt/appliance/current").stdout.strip() == "releases/2026.11.7"

    second = install(run)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = second.stdout.splitlines()[-2]
    assert "changed=0 failed=0" in summary, summary
    assert "    changed:" not in second.stdout


def test_failing_task_is_reported_by_host_task_and_message(
    bundle: Path, inventories: Path, systemd_host: Host
) -> None:
    _, run = systemd_host(mounts(bundle))
    result = install(run, "--inventory", "/srv/inventories/too-big.yml")
    assert result.returncode == 32
    assert "    FAILED: [localhost] Assert each filesystem has room for what it will hold" in (
        result.stdout
    )
    error = result.stderr.splitlines()
    assert error[0].startswith(
        "Error: localhost failed at task 'Assert each filesystem has room for what it will "
        "hold': localhost: / has "
    )
    assert "needs 1.00 PB" in error[0]
    record = error[-1].rsplit(" ", 1)[-1]
    assert error[-1].startswith("Hint: fix the cause and run install again")
    assert run("test", "-f", f"{record}/stdout").returncode == 0
    untouched(run)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--pubkey", "/srv/other.pub"], 10, "signed by another key than /srv/other.pub"),
        (["--inventory", "/srv/inventories/unknown-group.yml"], 30, "unknown group databases"),
        (["--inventory", "/srv/inventories/unreachable.yml"], 32, "Error: gpu-1 is unreachable"),
    ],
    ids=["wrong-pubkey", "unknown-group", "unreachable-host"],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    bundle: Path,
    inventories: Path,
    systemd_host: Host,
    args: list[str],
    code: int,
    message: str,
) -> None:
    _, run = systemd_host(mounts(bundle))
    pubkey = args[1] if args[0] == "--pubkey" else "/srv/key.pub"
    rest = [] if args[0] == "--pubkey" else args
    result = run("/srv/bundle/install.sh", "--pubkey", pubkey, *rest)
    assert result.returncode != 0
    if code == 10:
        # install.sh verifies before handing over: the error is verify-bundle's.
        assert message in result.stderr
        assert "the bundle did not verify; nothing was installed" in result.stderr
        assert run("test", "-e", "/opt/appliance/releases").returncode == 1
    else:
        assert result.returncode == code, result.stdout + result.stderr
        assert message in result.stderr
    untouched(run)


def test_remote_hosts_without_an_ssh_client_are_refused_up_front(
    bundle: Path, inventories: Path, systemd_host: Host
) -> None:
    _, run = systemd_host(mounts(bundle))
    assert run("mv", "/usr/bin/ssh", "/usr/bin/ssh.hidden").returncode == 0
    result = install(run, "--inventory", "/srv/inventories/unreachable.yml")
    assert result.returncode == 31
    assert (
        "Error: the inventory names other hosts (gpu-1) but this machine has no ssh client"
        in result.stderr
    )
    assert run("test", "-e", "/opt/appliance/releases").returncode == 1
    untouched(run)


def test_tampered_bundle_is_refused_before_anything_changes(
    bundle: Path, inventories: Path, systemd_host: Host
) -> None:
    shutil.copytree(bundle / "bundle", bundle / "tampered", dirs_exist_ok=True)
    packages = bundle / "tampered" / "repo" / "Packages"
    packages.chmod(0o644)
    packages.write_text(packages.read_text().replace("Package: jq", "Package: jq-evil"))
    _, run = systemd_host(mounts(bundle, "tampered"))
    result = install(run)
    assert result.returncode == 1
    assert "corrupt content: 1 file" in result.stderr
    assert "  repo/Packages: size " in result.stderr
    assert run("test", "-e", "/opt/appliance/releases").returncode == 1
    untouched(run)
