"""The apt repository key an operator brings (build-bundle --repo-key): what is refused, that
two signings with one key and one SOURCE_DATE_EPOCH are byte for byte alike, and that the
secret key reaches no file, message or repr. Real gpg throughout, in homes the tests make."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle.signing import keygen
from appliance.errors import KeyFileError
from appliance.fetchers.apt_repo import KEY_FILE, sign_repo, write_indexes
from appliance.fetchers.gnupg import KEY_HINT, RepoKey, gnupg_home, load_repo_key
from tests.fixtures.cli import run_cli
from tests.fixtures.specs import spec_text

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg")
EPOCH = 1_900_000_000  # 2030: after every key these tests make
ARMOR_LINES = 3  # base64 lines of a key, any of which in an output would be a leak


def gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(
        ["gpg", "--batch", "--no-tty", "--quiet", "--homedir", str(home), *args],
        check=True,
        capture_output=True,
    ).stdout


@pytest.fixture(scope="module")
def keys() -> Iterator[dict[str, Path]]:
    """Armored key files: good, encrypted, cert-only (cannot sign), two keys, public only."""
    # Short: gpg-agent's socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="repokey-"))
    home = root / "home"
    home.mkdir(mode=0o700)
    made = {
        "good": ["--passphrase", "", "--quick-generate-key", "good", "ed25519", "sign", "never"],
        "encrypted": ["--pinentry-mode", "loopback", "--passphrase", "pw", "--quick-generate-key",
                      "encrypted", "ed25519", "sign", "never"],
        "cert-only": ["--passphrase", "", "--quick-generate-key", "cert-only", "ed25519", "cert",
                      "never"],
    }  # fmt: skip
    files = {}
    for name, args in made.items():
        gpg(home, *args)
        files[name] = root / f"{name}.asc"
        unlock = ["--pinentry-mode", "loopback", "--passphrase", "pw"]
        files[name].write_bytes(gpg(home, *unlock, "--export-secret-keys", "--armor", f"={name}"))
    files["two"] = root / "two.asc"
    files["two"].write_bytes(gpg(home, "--export-secret-keys", "--armor", "=good", "=cert-only"))
    files["public"] = root / "public.asc"
    files["public"].write_bytes(gpg(home, "--export", "--armor", "=good"))
    try:
        yield files
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(root)


def armor_body(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if len(line) == 64]
    return lines[:ARMOR_LINES]


def test_the_hint_makes_a_key_that_is_accepted(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="hint-"))
    home.chmod(0o700)
    command = KEY_HINT.split(": ", 1)[1]
    try:
        subprocess.run(  # noqa: S602 (the hint is a shell command line; it runs as printed)
            command, shell=True, cwd=tmp_path, check=True, capture_output=True,
            env={"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home)
    key = load_repo_key(tmp_path / "repo-key.asc", tmp_path / "work", EPOCH)
    assert len(key.fingerprint) == 40
    assert list((tmp_path / "work").iterdir()) == []  # the GnuPG home is gone


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read the repo key"),
        (b"just some text\n", "is not an armored OpenPGP secret key"),
        (b"\x00" * 64, "is not an armored OpenPGP secret key"),
        (
            b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nU0VDUkVUR0FSQkFHRQ==\n"
            b"-----END PGP PRIVATE KEY BLOCK-----\n",
            "cannot be read as an OpenPGP secret key",
        ),
    ],
)
def test_a_file_that_is_not_a_key_is_refused_by_name(
    tmp_path: Path, content: bytes | None, said: str
) -> None:
    path = tmp_path / "repo-key.asc"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError) as caught:
        load_repo_key(path, tmp_path / "work", None)
    assert said in caught.value.message and str(path) in caught.value.message
    assert "--quick-generate-key" in (caught.value.hint or "")
    assert "--export-secret-keys --armor" in (caught.value.hint or "")
    assert "U0VDUkVUR0FSQkFHRQ" not in caught.value.message  # the file's body is not echoed


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("public", "is a public key"),
        ("encrypted", "protected by a passphrase"),
        ("cert-only", "has no key that can sign"),
        ("two", "holds 2 secret keys"),
    ],
)
def test_a_key_that_cannot_sign_unattended_is_refused(
    keys: dict[str, Path], tmp_path: Path, name: str, said: str
) -> None:
    with pytest.raises(KeyFileError) as caught:
        load_repo_key(keys[name], tmp_path / "work", EPOCH)
    assert said in caught.value.message and str(keys[name]) in caught.value.message
    for line in armor_body(keys[name]):
        assert line not in caught.value.message and line not in (caught.value.hint or "")


def test_a_key_newer_than_source_date_epoch_is_refused(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(KeyFileError, match="after SOURCE_DATE_EPOCH"):
        load_repo_key(keys["good"], tmp_path / "work", 1_000_000_000)


def sign(repo: Path, key: RepoKey | None, epoch: int | None) -> dict[str, bytes]:
    repo.mkdir(parents=True)
    paragraph = "Package: jq\nVersion: 1.6-2.1\nArchitecture: amd64\nFilename: b/jq.deb"
    write_indexes([paragraph], repo, label="test", architectures=["amd64"], epoch=epoch)
    sign_repo(repo, label="test", workdir=repo.parent / "work", key=key, epoch=epoch)
    return {path.name: path.read_bytes() for path in sorted(repo.iterdir())}


def test_one_key_and_one_epoch_sign_byte_for_byte_alike(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    key = load_repo_key(keys["good"], tmp_path / "work", EPOCH)
    first = sign(tmp_path / "a" / "repo", key, EPOCH)
    second = sign(tmp_path / "b" / "repo", key, EPOCH)
    assert first == second
    assert b"Date: Sun, 17 Mar 2030 17:46:40 UTC" in first["Release"]
    # apt's own check: the signatures verify with the key the bundle ships.
    for signed in (["InRelease"], ["Release.gpg", "Release"]):
        subprocess.run(
            ["gpgv", "--keyring", str(tmp_path / "a" / "repo" / KEY_FILE),
             *(str(tmp_path / "a" / "repo" / name) for name in signed)],
            check=True, capture_output=True,
        )  # fmt: skip
    listing = subprocess.run(
        ["gpg", "--list-packets"], input=first["Release.gpg"], capture_output=True, check=True
    ).stdout.decode()
    assert f"created {EPOCH}" in listing and "notation" not in listing
    assert key.fingerprint in listing.upper() or key.fingerprint[-16:] in listing.upper()
    for name in ("a", "b"):
        assert list((tmp_path / name / "work").iterdir()) == []


@pytest.mark.parametrize("extra", [0, 1, 80])
def test_gpg_agent_starts_however_deep_the_work_directory(extra: int) -> None:
    """The longest socket path the home may give is the longest gpg-agent accepts (measured);
    one byte deeper, or far deeper, and the home moves to a short temporary directory."""
    # The socket, S.gpg-agent.browser in a gnupg-XXXXXXXX home, must be at most 106 bytes.
    root = Path(tempfile.mkdtemp(prefix="deep-"))
    workdir = root / ("d" * (106 - len("/gnupg-12345678/S.gpg-agent.browser") - len(f"{root}/")))
    workdir = workdir.with_name(workdir.name + "e" * extra)
    try:
        with gnupg_home(workdir) as gpg:
            assert (gpg.home.parent == workdir) is (extra == 0)
            gpg.run(
                "--passphrase", "", "--quick-generate-key", "deep", "ed25519", "sign", "never",
                failure="gpg failed", hint="",
            )  # fmt: skip
            assert len(gpg.secret_keys("gpg failed", "")) == 1
        assert not gpg.home.exists()
    finally:
        shutil.rmtree(root)


def test_without_a_key_every_repository_has_its_own(tmp_path: Path) -> None:
    first = sign(tmp_path / "a" / "repo", None, EPOCH)
    second = sign(tmp_path / "b" / "repo", None, EPOCH)
    assert first["Release"] == second["Release"]  # the epoch dates both alike
    assert first[KEY_FILE] != second[KEY_FILE] and first["InRelease"] != second["InRelease"]


def first_packet(data: bytes) -> tuple[int, bytes]:
    """The tag and body of the first OpenPGP packet in ``data`` (RFC 4880 4.2)."""
    if data[0] & 0x40:  # new format, a one-byte length (a key packet is short)
        tag, start, length = data[0] & 0x3F, 2, data[1]
    else:  # old format: the length's size is in the low two bits
        size = 1 << (data[0] & 3)
        tag, start = (data[0] >> 2) & 0xF, 1 + size
        length = int.from_bytes(data[1:start])
    return tag, data[start : start + length]


def secret_scalar(armored: bytes, public: bytes) -> bytes:
    """The secret MPI of an unprotected key: its secret key packet is the public key packet's
    body, the S2K usage 0, then the MPI (RFC 4880 5.5.3)."""
    raw = subprocess.run(["gpg", "--dearmor"], input=armored, capture_output=True, check=True)
    (tag, body), (public_tag, public_body) = first_packet(raw.stdout), first_packet(public)
    assert (tag, public_tag) == (5, 6) and body.startswith(public_body)
    assert body[len(public_body)] == 0  # not encrypted
    bits = int.from_bytes(body[len(public_body) + 1 : len(public_body) + 3])
    start = len(public_body) + 3
    return body[start : start + (bits + 7) // 8]


def test_the_secret_key_reaches_no_output(keys: dict[str, Path], tmp_path: Path) -> None:
    key = load_repo_key(keys["good"], tmp_path / "work", EPOCH)
    assert key.data.decode() not in repr(key) and armor_body(keys["good"])[0] not in repr(key)
    files = sign(tmp_path / "repo", key, EPOCH)
    secret = secret_scalar(key.data, files[KEY_FILE])
    assert len(secret) >= 24  # 32 for ed25519, less only with leading zero bytes
    for name, data in files.items():
        for line in armor_body(keys["good"]):
            assert line.encode() not in data, name
        assert secret not in data, name
    packets = subprocess.run(
        ["gpg", "--list-packets"], input=files[KEY_FILE], capture_output=True, check=True
    ).stdout.decode()
    assert ":public key packet:" in packets and "secret" not in packets


def test_build_bundle_refuses_a_bad_repo_key_before_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keygen(tmp_path / "sign-key", "publisher")
    (tmp_path / "repo-key.asc").write_text("not a key")
    (tmp_path / "spec.yaml").write_text(spec_text("bad-repo-key"))
    code, out, _ = run_cli(
        capsys, "--json", "build-bundle", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "b"),
        "--sign-key", str(tmp_path / "sign-key"), "--repo-key", str(tmp_path / "repo-key.asc"),
    )  # fmt: skip
    assert code == KeyFileError.exit_code
    error = json.loads(out)["error"]
    assert str(tmp_path / "repo-key.asc") in error["message"]
    assert "--quick-generate-key" in error["hint"]
    assert not (tmp_path / "b").exists()
