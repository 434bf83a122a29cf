"""A throwaway GnuPG home for signing the bundle's apt repository, and the repository key an
operator may bring (``build-bundle --repo-key``).

Every home is made for one call and deleted afterwards, with its agent, so no private key
outlives the call on the build machine. A key the operator brings is read from its file into
memory, checked here before anything is fetched, and imported again only into the home that
signs; its bytes are never printed, logged or written anywhere else.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.errors import KeyFileError

# sun_path holds 108 bytes with its NUL, and gpg-agent (2.2.40) fails at 107 already: measured.
_MAX_SOCKET_PATH = 106
# A secret key with a few subkeys is a few KiB; this only keeps a wrong file out of memory.
_MAX_KEY_BYTES = 1 << 20
_ARMOR_SECRET = b"-----BEGIN PGP PRIVATE KEY BLOCK-----"
_ARMOR_PUBLIC = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
KEY_HINT = (
    "make a signing key without a passphrase and export it armored: "
    "gpg --batch --passphrase '' --quick-generate-key 'appliance apt repository' ed25519 sign "
    "never && gpg --export-secret-keys --armor 'appliance apt repository' > repo-key.asc"
)


@dataclass(frozen=True)
class RepoKey:
    """An operator's repository signing key, checked; ``data`` is its armored secret key."""

    path: Path
    fingerprint: str
    created: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class SecretKey:
    fingerprint: str
    created: int
    capabilities: str


@dataclass(frozen=True)
class GnuPG:
    """gpg in one throwaway home."""

    gpg: str
    home: Path

    def run(
        self, *args: str, failure: str, hint: str, stdin: bytes = b"", epoch: int | None = None
    ) -> bytes:
        """gpg's standard output; a KeyFileError with ``failure`` and gpg's words otherwise.
        With ``epoch``, gpg believes that is the time (for signing and making keys only: an
        import at a faked time older than the key would drop it)."""
        command = [self.gpg, "--batch", "--no-tty", "--quiet", "--homedir", str(self.home)]
        if epoch is not None:
            # "!" freezes the clock: every signature carries exactly this time.
            command += ["--faked-system-time", f"{epoch}!"]
        result = subprocess.run(  # noqa: S603
            [*command, *args], input=stdin, capture_output=True, check=False
        )
        if result.returncode != 0:
            said = result.stderr.decode(errors="replace").strip().splitlines()
            # The faked-time warning says nothing about the failure.
            words = "; ".join(line for line in said if "faked system time" not in line)
            raise KeyFileError(f"{failure}: {words or 'gpg failed'}", hint=hint)
        return result.stdout

    def import_secret(self, key: bytes, failure: str, hint: str) -> list[SecretKey]:
        """Import ``key``; return ``secret_keys``."""
        self.run("--import", failure=failure, hint=hint, stdin=key)
        return self.secret_keys(failure, hint)

    def secret_keys(self, failure: str, hint: str) -> list[SecretKey]:
        """The secret keys in this home, from gpg's colon listing (doc/DETAILS)."""
        listing = self.run("--with-colons", "--list-secret-keys", failure=failure, hint=hint)
        keys: list[SecretKey] = []
        sec: list[str] | None = None
        for line in listing.decode().splitlines():
            fields = line.split(":")
            if fields[0] == "sec":
                sec = fields
            elif fields[0] == "fpr" and sec is not None:
                # The first fpr after a sec line is the primary key's; later ones are subkeys'.
                # Field 12: capabilities, upper case for what the key with its subkeys can do.
                keys.append(SecretKey(fields[9], int(sec[5] or 0), sec[11]))
                sec = None
        return keys


@contextmanager
def gnupg_home(workdir: Path) -> Iterator[GnuPG]:
    """A GnuPG home under ``workdir`` (under the temporary directory, or /tmp, when
    ``workdir`` is too deep for gpg-agent's sockets), deleted with its agent on leaving."""
    gpg = shutil.which("gpg")
    gpgconf = shutil.which("gpgconf")
    if gpg is None or gpgconf is None:
        raise KeyFileError(
            "gpg is not installed on this build machine; it signs the bundle's apt repository",
            hint="install gnupg (Debian: apt-get install gnupg)",
        )
    # Without /run/user/UID, gpg-agent puts its sockets in the home, and a Unix socket path
    # is short (_MAX_SOCKET_PATH): a deep work directory (or TMPDIR) would keep the agent from
    # starting, so the home goes to the first of these that is short enough.
    for parent in (workdir, Path(tempfile.gettempdir()), Path("/tmp")):  # noqa: S108
        socket = parent.absolute() / "gnupg-12345678" / "S.gpg-agent.browser"
        if len(str(socket).encode()) <= _MAX_SOCKET_PATH:
            break
    parent.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="gnupg-", dir=parent))
    try:
        yield GnuPG(gpg, home)
    finally:
        # The agent holds the private key in memory and would outlive the deleted home.
        subprocess.run(  # noqa: S603
            [gpgconf, "--homedir", str(home), "--kill", "all"], capture_output=True, check=False
        )
        shutil.rmtree(home, ignore_errors=True)


def load_repo_key(path: Path, workdir: Path, epoch: int | None) -> RepoKey:
    """The repository key in ``path``, checked: an armored OpenPGP secret key, exactly one,
    able to sign, without a passphrase, and (with ``epoch``) made no later than ``epoch``."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(
            f"cannot read the repo key {path}: {exc.strerror or exc}", hint=KEY_HINT
        ) from None
    head = data.lstrip()
    if head.startswith(_ARMOR_PUBLIC):
        raise KeyFileError(
            f"the repo key {path} is a public key; signing needs the secret key", hint=KEY_HINT
        )
    if len(data) > _MAX_KEY_BYTES or not head.startswith(_ARMOR_SECRET):
        raise KeyFileError(
            f"the repo key {path} is not an armored OpenPGP secret key", hint=KEY_HINT
        )
    failure = f"the repo key {path} cannot be read as an OpenPGP secret key"
    with gnupg_home(workdir) as gpg:
        keys = gpg.import_secret(data, failure, KEY_HINT)
        if len(keys) != 1:
            raise KeyFileError(
                f"the repo key {path} holds {len(keys)} secret keys; it must hold exactly one",
                hint=KEY_HINT,
            )
        fingerprint, created = keys[0].fingerprint, keys[0].created
        if "S" not in keys[0].capabilities:
            raise KeyFileError(
                f"the repo key {path} ({fingerprint}) has no key that can sign", hint=KEY_HINT
            )
        if epoch is not None and created > epoch:
            when = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise KeyFileError(
                f"the repo key {path} was made at {when}, after SOURCE_DATE_EPOCH ({epoch}): "
                "a signature cannot be older than its key",
                hint="set SOURCE_DATE_EPOCH to a later time (e.g. the last commit's), or use "
                "a key made before it",
            )
        try:
            # Signs nothing of value: the one way to learn that gpg would ask for a passphrase.
            gpg.run(
                "--pinentry-mode", "error", "--local-user", fingerprint, "--detach-sign",
                failure=f"the repo key {path} ({fingerprint}) cannot sign unattended",
                hint=KEY_HINT,
            )  # fmt: skip
        except KeyFileError as exc:
            if "pinentry" in exc.message.lower() or "passphrase" in exc.message.lower():
                raise KeyFileError(
                    f"the repo key {path} ({fingerprint}) is protected by a passphrase, and a "
                    "build signs unattended",
                    hint=KEY_HINT,
                ) from None
            raise
    return RepoKey(path=path, fingerprint=fingerprint, created=created, data=data)
