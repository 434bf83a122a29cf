"""Signatures with OpenSSH's SSHSIG format (`ssh-keygen -Y`).

Chosen because a stock tool can check it: `ssh-keygen -Y verify` from openssh-client needs
nothing else. Signing uses ssh-keygen on the build machine; appliance verifies in Python, so an
isolated host needs no OpenSSH tools. Keys are plain OpenSSH ed25519 key pairs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import subprocess
from pathlib import Path

from appliance.bundle import layout
from appliance.bundle.manifest import Manifest
from appliance.errors import BundleSignatureError, KeyFileError

NAMESPACE = "appliance-bundle"


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise KeyFileError(
            "ssh-keygen not found",
            hint="install OpenSSH's client tools (Debian: apt-get install openssh-client)",
        )
    return path


def keygen(private: Path, comment: str) -> Path:
    """Create an ed25519 key pair at ``private`` and ``private``.pub; never overwrite."""
    public = private.with_name(private.name + ".pub")
    for path in (private, public):
        if path.exists():
            raise KeyFileError(
                f"{path} already exists",
                hint="choose another path; appliance never overwrites a key",
            )
    private.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(  # noqa: S603
        [_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise KeyFileError(f"ssh-keygen could not create {private}: {result.stderr.strip()}")
    private.chmod(0o600)
    return public


def sign(private: Path, *paths: Path) -> list[Path]:
    """Write ``path``.sig for each of ``paths``, an SSHSIG signature in the appliance namespace
    (one ssh-keygen for all of them)."""
    if not private.is_file():
        raise KeyFileError(
            f"signing key {private} does not exist",
            hint="create one with `appliance keygen -o KEY`",
        )
    signatures = [path.with_name(path.name + ".sig") for path in paths]
    for signature in signatures:
        signature.unlink(missing_ok=True)
    result = subprocess.run(  # noqa: S603
        [_ssh_keygen(), "-Y", "sign", "-f", str(private), "-n", NAMESPACE, *map(str, paths)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise KeyFileError(
            f"cannot sign with {private}: {result.stderr.strip()}",
            hint="the key must be an OpenSSH private key without a passphrase, readable by you",
        )
    return signatures


def write_trust_files(bundle: Path, manifest: Manifest, sign_key: Path) -> None:
    """manifest.json, SHA256SUMS (every shipped file, manifest included), both signatures."""
    data = manifest.canonical()
    (bundle / layout.MANIFEST).write_bytes(data)
    lines = {path: entry.sha256 for path, entry in manifest.shipped().items()}
    lines[layout.MANIFEST] = hashlib.sha256(data).hexdigest()
    sums = "".join(f"{digest}  {path}\n" for path, digest in sorted(lines.items()))
    (bundle / layout.SHA256SUMS).write_text(sums)
    sign(sign_key, bundle / layout.MANIFEST, bundle / layout.SHA256SUMS)


def read_public_key(public: Path) -> str:
    try:
        text = public.read_text().strip()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read public key {public}: {exc.strerror}",
            hint="pass the .pub file made by `appliance keygen` with --pubkey",
        ) from exc
    fields = text.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise KeyFileError(
            f"{public} is not an OpenSSH public key",
            hint="pass the .pub file made by `appliance keygen` (one line: ssh-ed25519 AAAA...)",
        )
    return f"{fields[0]} {fields[1]}"


def verify_bytes(
    public: Path, data: bytes, signature: bytes, what: str, namespace: str = NAMESPACE
) -> None:
    """Raise BundleSignatureError unless ``signature`` is the trusted key's over ``data``, made
    for ``namespace`` (a signature made for another purpose never verifies here).

    Implemented here (with ``cryptography``) rather than by running ssh-keygen, so an isolated
    host needs no OpenSSH tools; ssh-keygen checks the same signatures (tests prove both agree).
    """
    # Imported here: signing a bundle does not need it.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    trusted = read_public_key(public)
    key_type, _, key_b64 = trusted.partition(" ")
    if key_type != "ssh-ed25519":
        raise KeyFileError(
            f"{public}: {key_type} keys are not supported",
            hint="bundles are signed with ed25519 keys from `appliance keygen`",
        )
    try:
        signer_key, signed, raw = _parse_sshsig(signature, data, namespace)
    except (ValueError, IndexError, binascii.Error) as exc:
        raise BundleSignatureError(
            f"{what}: the signature is malformed ({exc})",
            hint="the signature file was damaged or is not an SSH signature",
        ) from exc
    if signer_key != base64.b64decode(key_b64):
        raise BundleSignatureError(
            f"{what}: signed by another key than {public}",
            hint="get the bundle and its public key again from the publisher, over a trusted "
            "channel",
        )
    try:
        Ed25519PublicKey.from_public_bytes(_ssh_strings(signer_key)[1]).verify(raw, signed)
    except (InvalidSignature, ValueError, IndexError) as exc:
        raise BundleSignatureError(
            f"{what}: signature does not verify with {public}",
            hint="the bundle was changed after it was signed: do not install it; get it again "
            "from the publisher",
        ) from exc


_MAGIC = b"SSHSIG"


def _ssh_strings(blob: bytes) -> list[bytes]:
    """Split an SSH wire-format sequence of length-prefixed strings."""
    items, offset = [], 0
    while offset < len(blob):
        length = int.from_bytes(blob[offset : offset + 4], "big")
        if offset + 4 + length > len(blob):
            raise ValueError("truncated field")
        items.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


def _ssh_string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _parse_sshsig(armored: bytes, data: bytes, expected: str) -> tuple[bytes, bytes, bytes]:
    """(signer public key blob, the bytes that were signed, raw ed25519 signature)."""
    lines = armored.decode("ascii").strip().splitlines()
    if (
        not lines
        or lines[0] != "-----BEGIN SSH SIGNATURE-----"
        or lines[-1] != ("-----END SSH SIGNATURE-----")
    ):
        raise ValueError("not an armored SSH signature")
    blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    if not blob.startswith(_MAGIC) or int.from_bytes(blob[6:10], "big") != 1:
        raise ValueError("not an SSHSIG version 1 signature")
    public_key, namespace, reserved, hash_name, sig = _ssh_strings(blob[10:])
    if namespace != expected.encode():
        raise ValueError(f"namespace {namespace[:40]!r}, expected {expected!r}")
    hashes = {b"sha512": hashlib.sha512, b"sha256": hashlib.sha256}
    if hash_name not in hashes:
        raise ValueError(f"hash algorithm {hash_name[:20]!r}")
    digest = hashes[hash_name](data)
    signed = _MAGIC + b"".join(
        _ssh_string(field) for field in (namespace, reserved, hash_name, digest.digest())
    )
    sig_type, raw = _ssh_strings(sig)
    if sig_type != b"ssh-ed25519":
        raise ValueError(f"signature type {sig_type[:20]!r}")
    return public_key, signed, raw


def sign_bytes(private: Path, data: bytes, namespace: str) -> bytes:
    """An armored SSHSIG signature of ``data`` by the OpenSSH ed25519 key at ``private``, made
    in Python (``ssh-keygen -Y verify`` accepts it): a key made on an isolated host signs there
    with no OpenSSH tools."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"cannot read signing key {private}: {getattr(exc, 'strerror', None) or exc}",
            hint="the key must be an unencrypted OpenSSH ed25519 private key readable by you",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{private} is not an ed25519 key", hint="use an ed25519 key")
    raw_public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    public_blob = _ssh_string(b"ssh-ed25519") + _ssh_string(raw_public)
    fields = (namespace.encode(), b"", b"sha512", hashlib.sha512(data).digest())
    signature = key.sign(_MAGIC + b"".join(_ssh_string(f) for f in fields))
    blob = (
        _MAGIC
        + (1).to_bytes(4, "big")
        + b"".join(_ssh_string(f) for f in (public_blob, *fields[:3]))
        + _ssh_string(_ssh_string(b"ssh-ed25519") + _ssh_string(signature))
    )
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return (
        "\n".join(["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----"]) + "\n"
    ).encode()
