"""Helpers for Debian control paragraphs and for writing a signed flat apt repository.

The repository is indexed and signed the way apt-ftparchive and reprepro leave it (Packages,
Packages.gz, Release, InRelease, Release.gpg), but from paragraphs already in hand, so no .deb
is read again. The signing key is made per repository in a throwaway GnuPG home (the target
trusts exactly this repository, and no private key outlives the call), unless the operator
brings one (``build-bundle --repo-key``) so that two builds sign alike.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import time
from pathlib import Path

from appliance.fetchers.gnupg import RepoKey, gnupg_home

KEY_FILE = "archive-key.gpg"


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
    paragraphs: list[str],
    repo_dir: Path,
    *,
    label: str,
    architectures: list[str],
    epoch: int | None = None,
) -> list[Path]:
    """Write Packages, Packages.gz and an unsigned Release (dated ``epoch`` when set, else
    now); return their paths."""
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
        # apt refuses a Release dated in the future, so this is the one field that must vary,
        # unless SOURCE_DATE_EPOCH fixes the build's time.
        "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(epoch)),
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


def sign_repo(
    repo_dir: Path,
    *,
    label: str,
    workdir: Path,
    key: RepoKey | None = None,
    epoch: int | None = None,
) -> tuple[str, list[Path], Path]:
    """Sign ``repo_dir/Release``; return (fingerprint, signed files, public key).

    With ``key`` (the operator's, checked by ``load_repo_key``) the signatures are made with it;
    without, with a key made for this repository alone. With ``epoch`` gpg signs at that time:
    an ed25519 (or RSA) signature depends only on key, data and time, so two builds with one
    key and one epoch sign byte for byte alike.
    """
    failure = f"gpg failed while signing the apt repository at {repo_dir}"
    hint = (
        "check that gpg and gpg-agent work on this machine (gpg --version) and that the disk "
        "is not full"
    )
    with gnupg_home(workdir) as gpg:
        if key is None:
            gpg.run(
                "--passphrase", "", "--quick-generate-key",
                f"{label} apt repository", "ed25519", "sign", "never",
                failure=failure, hint=hint, epoch=epoch,
            )  # fmt: skip
            fingerprint = gpg.secret_keys(failure, hint)[0].fingerprint
        else:
            gpg.import_secret(key.data, failure, hint)
            fingerprint = key.fingerprint
        release = str(repo_dir / "Release")
        signing = ["--pinentry-mode", "error", "--local-user", fingerprint]
        signing += ["--digest-algo", "SHA512", "--yes"]
        inrelease, detached = repo_dir / "InRelease", repo_dir / "Release.gpg"
        for output, how in ((inrelease, ["--clearsign"]), (detached, ["--armor", "-b"])):
            gpg.run(
                *signing, *how, "--output", str(output), release,
                failure=failure, hint=hint, epoch=epoch,
            )  # fmt: skip
        # Only the key and its self-signatures: what apt needs, and the same for every build.
        public = gpg.run(
            "--export-options", "export-minimal", "--export", fingerprint,
            failure=failure, hint=hint,
        )  # fmt: skip
        (repo_dir / KEY_FILE).write_bytes(public)
    return fingerprint, [inrelease, detached], repo_dir / KEY_FILE
