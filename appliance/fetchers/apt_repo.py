"""Helpers for Debian control paragraphs and for writing a signed flat apt repository.

The repository is indexed and signed the way apt-ftparchive and reprepro leave it (Packages,
Packages.gz, Release, InRelease, Release.gpg), but from paragraphs already in hand, so no .deb
is read again. The signing key is made per repository in a throwaway GnuPG home: the target
trusts exactly this repository, and no private key outlives the call.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from appliance.errors import KeyFileError

KEY_FILE = "archive-key.gpg"
_MAX_SOCKET_PATH = 107


@functools.cache
def _field_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}:[ \t]*(.*)$", re.MULTILINE)


def parse_field(control: str, name: str) -> str | None:
    """The first line of field ``name`` in a control paragraph, or None when it is absent."""
    match = _field_re(name).search(control)
    return match[1].strip() if match else None


def replace_field(control: str, name: str, value: str) -> str:
    """``control`` with the single-line field ``name`` set to ``value``; nothing else moves."""
    replaced, count = _field_re(name).subn(lambda _: f"{name}: {value}", control, count=1)
    if count != 1:
        raise ValueError(f"control paragraph has no {name} field")
    return replaced


def write_indexes(
    paragraphs: list[str], repo_dir: Path, *, label: str, architectures: list[str]
) -> list[Path]:
    """Write Packages, Packages.gz and an unsigned Release; return their paths."""
    packages = "".join(f"{paragraph}\n\n" for paragraph in paragraphs).encode()
    packages_path = repo_dir / "Packages"
    packages_path.write_bytes(packages)
    gz_path = repo_dir / "Packages.gz"
    # mtime=0 and no embedded name, so the same paragraphs always give the same bytes.
    with gz_path.open("wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as compressed:
        compressed.write(packages)
    indexes = {"Packages": packages, "Packages.gz": gz_path.read_bytes()}
    lines = [
        f"Origin: {label}",
        f"Label: {label}",
        # apt checks that a flat repository "DIR/" calls itself DIR, and warns otherwise.
        f"Suite: {repo_dir.name}",
        # apt refuses a Release dated in the future, so this is the one field that must vary.
        "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()),
        f"Architectures: {' '.join(architectures)}",
    ]
    for section, algorithm in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        lines.append(f"{section}:")
        for name, data in indexes.items():
            digest = hashlib.new(algorithm, data).hexdigest()
            lines.append(f" {digest} {len(data):>16} {name}")
    release_path = repo_dir / "Release"
    release_path.write_text("\n".join(lines) + "\n")
    return [packages_path, gz_path, release_path]


def sign_repo(repo_dir: Path, *, label: str, workdir: Path) -> tuple[str, list[Path], Path]:
    """Sign ``repo_dir/Release`` with a new key; return (fingerprint, signed files, public key).

    The key lives in a GnuPG home under ``workdir`` (under the system's temporary directory
    when ``workdir`` is too deep for gpg-agent's sockets) that is deleted before returning.
    """
    gpg = shutil.which("gpg")
    gpgconf = shutil.which("gpgconf")
    if gpg is None or gpgconf is None:
        raise KeyFileError(
            "gpg is not installed on this build machine; it signs the bundle's apt repository",
            hint="install gnupg (Debian: apt-get install gnupg)",
        )
    workdir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="gnupg-", dir=workdir))
    # Without /run/user/UID, gpg-agent puts its sockets in the home, and a Unix socket path
    # has at most 107 bytes: a deep work directory would keep the agent from starting.
    if len(str(home / "S.gpg-agent.browser").encode()) > _MAX_SOCKET_PATH:
        home.rmdir()
        home = Path(tempfile.mkdtemp(prefix="appliance-gnupg-"))
    try:

        def run(*args: str) -> bytes:
            command = [gpg, "--batch", "--no-tty", "--quiet", "--homedir", str(home), *args]
            result = subprocess.run(command, capture_output=True, check=False)  # noqa: S603
            if result.returncode != 0:
                raise KeyFileError(
                    f"gpg failed while signing the apt repository at {repo_dir}: "
                    + result.stderr.decode(errors="replace").strip(),
                    hint="check that gpg and gpg-agent work on this machine (gpg --version) "
                    "and that the disk is not full",
                )
            return result.stdout

        run(
            "--passphrase", "", "--quick-generate-key",
            f"{label} apt repository", "ed25519", "sign", "never",
        )  # fmt: skip
        listing = run("--with-colons", "--list-secret-keys").decode()
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        release = repo_dir / "Release"
        signing = ["--local-user", fingerprint, "--digest-algo", "SHA512", "--yes"]
        run(*signing, "--clearsign", "--output", str(repo_dir / "InRelease"), str(release))
        run(
            *signing,
            "--armor",
            "--detach-sign",
            "--output",
            str(repo_dir / "Release.gpg"),
            str(release),
        )
        (repo_dir / KEY_FILE).write_bytes(run("--export", fingerprint))
    finally:
        # The agent holds the private key in memory and would outlive the deleted home.
        subprocess.run(  # noqa: S603
            [gpgconf, "--homedir", str(home), "--kill", "all"], capture_output=True, check=False
        )
        shutil.rmtree(home, ignore_errors=True)
    signed = [repo_dir / "InRelease", repo_dir / "Release.gpg"]
    return fingerprint, signed, repo_dir / KEY_FILE
