"""Stage a verified bundle onto a depot that is another machine: SFTP with paramiko.

Resumable (a file already partly there continues where it stopped), with progress in bytes,
and a final digest check run on the depot itself before the release directory appears.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko

from appliance.bundle import layout
from appliance.bundle.manifest import Manifest
from appliance.bundle.store import CHUNK
from appliance.errors import InstallError

# Bytes per SFTP write: large writes keep the pipe full without large buffers.
_WRITE = CHUNK


@dataclass(frozen=True)
class RemoteDepot:
    host: str  # the address to connect to
    name: str  # the inventory name, for messages
    user: str = "root"
    port: int = 22
    key_file: str | None = None
    known_hosts: str | None = None


def _connect(depot: RemoteDepot) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_system_host_keys()
    if depot.known_hosts:
        client.load_host_keys(depot.known_hosts)
    # Never trust an unknown host key: an isolated network is where that matters most.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            depot.host,
            port=depot.port,
            username=depot.user,
            key_filename=depot.key_file,
            timeout=15,
            banner_timeout=15,
            auth_timeout=15,
        )
    except (paramiko.SSHException, OSError) as exc:
        raise InstallError(
            f"cannot reach the depot {depot.name} ({depot.user}@{depot.host}:{depot.port}) over "
            f"SSH: {exc}",
            hint="check the address, that its host key is in known_hosts, and that your key is "
            "in the depot's authorized_keys",
        ) from exc
    return client


def _run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=600)
    output = stdout.read().decode(errors="replace") + stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), output


def stage_remote(
    bundle: Path,
    manifest: Manifest,
    depot: RemoteDepot,
    root: str,
    advance: Callable[[int], None] = lambda _n: None,
) -> str:
    """Copy ``bundle`` to ``depot:<root>/releases/<release>``; returns that path."""
    releases = PurePosixPath(root) / "releases"
    final = releases / manifest.release
    partial = releases / f".{manifest.release}.partial"
    names = [*layout.TRUST_FILES, *sorted(manifest.by_path())]
    client = _connect(depot)
    try:
        code, _ = _run(client, f"test -d {shlex.quote(str(final))}")
        if code == 0:
            _check_digests(client, depot, final)
            return str(final)
        sftp = client.open_sftp()
        for directory in sorted({str((partial / name).parent) for name in names}):
            _run(client, f"mkdir -p {shlex.quote(directory)}")
        for name in names:
            _send(sftp, bundle / name, str(partial / name), advance)
        _check_digests(client, depot, partial)
        code, output = _run(client, f"mv -T {shlex.quote(str(partial))} {shlex.quote(str(final))}")
        if code != 0:
            raise InstallError(f"{depot.name}: cannot move the staged bundle into place: {output}")
        return str(final)
    finally:
        client.close()


def _send(
    sftp: paramiko.SFTPClient, source: Path, target: str, advance: Callable[[int], None]
) -> None:
    size = source.stat().st_size
    try:
        offset = sftp.stat(target).st_size or 0
    except FileNotFoundError:
        offset = 0
    if offset > size:
        sftp.remove(target)
        offset = 0
    advance(offset)
    if offset == size:
        return
    with source.open("rb") as local, sftp.open(target, "r+b" if offset else "wb") as remote:
        remote.set_pipelined(True)
        local.seek(offset)
        remote.seek(offset)
        while chunk := local.read(_WRITE):
            remote.write(chunk)
            advance(len(chunk))


def _check_digests(
    client: paramiko.SSHClient, depot: RemoteDepot, directory: PurePosixPath
) -> None:
    """The depot checks what it holds with its own sha256sum: the copy is proven end to end."""
    code, output = _run(
        client, f"cd {shlex.quote(str(directory))} && sha256sum --quiet -c {layout.SHA256SUMS}"
    )
    if code != 0:
        bad = [line.split(":")[0] for line in output.splitlines() if line.endswith("FAILED")]
        # Remove what failed so the next run sends it again instead of resuming a bad file.
        for name in bad:
            _run(client, f"rm -f {shlex.quote(str(directory / name))}")
        raise InstallError(
            f"{depot.name}: {len(bad) or 'some'} file(s) differ after the copy: "
            f"{', '.join(bad[:5]) or output.strip()[-300:]}",
            hint="the transfer was corrupted; run install again to send those files anew",
        )


def depot_from_inventory(name: str, variables: dict[str, Any]) -> RemoteDepot:
    """Connection settings as Ansible reads them, so both reach the depot the same way."""
    return RemoteDepot(
        host=str(variables.get("ansible_host", name)),
        name=name,
        user=str(variables.get("ansible_user", "root")),
        port=int(variables.get("ansible_port", 22)),
        key_file=variables.get("ansible_ssh_private_key_file"),
        known_hosts=variables.get("appliance_known_hosts"),
    )


def point_current_remote(depot: RemoteDepot, root: str, release: str) -> None:
    client = _connect(depot)
    try:
        link = PurePosixPath(root) / "current"
        code, output = _run(
            client,
            f"ln -sfn {shlex.quote(f'releases/{release}')} {shlex.quote(str(link))}.new && "
            f"mv -T {shlex.quote(str(link))}.new {shlex.quote(str(link))}",
        )
        if code != 0:
            raise InstallError(f"{depot.name}: cannot point {link} at {release}: {output}")
    finally:
        client.close()


def read_current_remote(depot: RemoteDepot, root: str) -> bytes | None:
    """The manifest of the release ``<root>/current`` points at on the depot, or None before the
    first complete install there."""
    client = _connect(depot)
    try:
        path = PurePosixPath(root) / "current" / layout.MANIFEST
        code, _ = _run(client, f"test -f {shlex.quote(str(path))}")
        if code != 0:
            return None
        with client.open_sftp() as sftp, sftp.open(str(path), "rb") as remote:
            return bytes(remote.read())
    finally:
        client.close()
