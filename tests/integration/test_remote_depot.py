"""Installing from an admin machine onto a depot that is another machine: SFTP staging with
resume and a digest check on the depot, then the playbook over SSH. The admin machine is this
one (the test process); the depot is an air-gapped container on an internal lab network."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.cli import main

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

Run = Callable[..., subprocess.CompletedProcess[str]]
SUBNET, DEPOT = "198.18.21.0/24", "198.18.21.10"


def admin_access(tmp_path: Path, depot: Run) -> Path:
    """An admin key in the depot's authorized_keys, its host key in our known_hosts; returns
    the inventory that reaches it."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "admin")], check=True
    )
    public = (tmp_path / "admin.pub").read_text().strip()
    depot("sh", "-c", f"mkdir -p /root/.ssh && echo '{public}' >> /root/.ssh/authorized_keys")
    scan = subprocess.run(
        ["ssh-keyscan", "-T", "5", DEPOT], capture_output=True, text=True, check=True
    )
    (tmp_path / "known_hosts").write_text(scan.stdout)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    depot:\n      hosts:\n        depot-1:\n"
        f"          ansible_host: {DEPOT}\n          ansible_user: root\n"
        f"          ansible_ssh_private_key_file: {tmp_path / 'admin'}\n"
        f"          ansible_ssh_common_args: -o UserKnownHostsFile={tmp_path / 'known_hosts'}\n"
        f"          appliance_known_hosts: {tmp_path / 'known_hosts'}\n"
        "          ansible_python_interpreter: /usr/bin/python3\n"
    )
    return inventory


def install(
    bundle: Path, inventory: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(
            [
                "install",
                "--bundle",
                str(bundle / "bundle"),
                "--pubkey",
                str(bundle / "key.pub"),
                "--inventory",
                str(inventory),
                "--work-dir",
                str(work),
                "--internal-cidr",
                SUBNET,
            ]
        )
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_remote_depot_is_staged_over_sftp_resumed_and_checked(
    bundle: Path,
    lab_network: Callable[[str], str],
    systemd_host: Callable[..., tuple[str, Run]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, depot = systemd_host(network=lab_network(SUBNET), address=DEPOT)
    inventory = admin_access(tmp_path, depot)
    blobs = sorted(
        (bundle / "bundle" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size
    )
    big, other = blobs[-1], blobs[-2]
    partial = "/opt/appliance/releases/.2026.11.7.partial/blobs/sha256"
    # An earlier transfer that stopped half way through one file (resumed), and one that left a
    # file of the right size with wrong bytes (caught by the depot's own digest check).
    depot("mkdir", "-p", partial)
    subprocess.run(
        ["docker", "exec", "-i", depot_name(depot), "sh", "-c", f"cat > {partial}/{big.name}"],
        input=big.read_bytes()[: big.stat().st_size // 2],
        check=True,
    )
    depot("sh", "-c", f"head -c {other.stat().st_size} /dev/zero > {partial}/{other.name}")

    code, _, err = install(bundle, inventory, tmp_path / "work", capsys)
    assert code == 31
    assert f"depot-1: 1 file(s) differ after the copy: blobs/sha256/{other.name}" in err
    assert depot("test", "-e", "/opt/appliance/releases/2026.11.7").returncode == 1

    code, out, err = install(bundle, inventory, tmp_path / "work", capsys)
    assert code == 0, out + err
    assert "installed install-test 2026.11.7 on 1 host in " in out
    release = "/opt/appliance/releases/2026.11.7"
    assert depot("sh", "-c", f"cd {release} && sha256sum --quiet -c SHA256SUMS").returncode == 0
    assert depot("readlink", "/opt/appliance/current").stdout.strip() == "releases/2026.11.7"
    assert (
        f"URIs: file:{release}" in depot("cat", "/etc/apt/sources.list.d/appliance.sources").stdout
    )
    assert depot("jq", "--version").stdout.strip() == "jq-1.6"
    # The run's record stays on the admin machine.
    assert list((tmp_path / "work" / "runs").iterdir())

    # The same bundle again: the depot's current manifest, read over SFTP, makes it a replay.
    code, out, err = install(bundle, inventory, tmp_path / "work", capsys)
    assert code == 0, out + err
    assert "release 2026.11.7 is already current: this is its own bundle again" in out


def depot_name(run: Run) -> str:
    return str(run("hostname").stdout.strip())
