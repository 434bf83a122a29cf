"""The apt fetcher against Debian's real archive, and its repository on an air-gapped host.

Nothing is mocked: ``resolve`` runs apt against Debian's archive (``$DEBIAN_MIRROR``, or the
mirror this machine's apt sources use), and the repository that ``write_repo`` signs is consumed
by apt inside a harness container that has no network.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import PackageResolveError
from appliance.fetchers.apt import DebPackage, RepoIndex, resolve, write_repo
from appliance.fetchers.gnupg import load_repo_key
from appliance.spec.models import AptSource, Packages
from tests.fixtures.build_machines import make_repo_key
from tests.fixtures.debian_mirror import debian_mirror
from tests.fixtures.hosts import harness_image
from tests.fixtures.specs import DEBIAN_KEYRING

DEBIAN = debian_mirror()
ROOT = Path(__file__).resolve().parents[2]
REPO_FILES = [
    "repo/Packages",
    "repo/Packages.gz",
    "repo/Release",
    "repo/InRelease",
    "repo/Release.gpg",
    "repo/archive-key.gpg",
]


def debian(
    install: list[str], components: list[str] | None = None, keyring: str = DEBIAN_KEYRING
) -> Packages:
    source = AptSource(
        kind="apt",
        url=DEBIAN,
        suites=["bookworm"],
        components=components or ["main"],
        keyring=keyring,
    )
    return Packages(sources=[source], install=install)


@pytest.fixture(scope="module")
def jq_closure(tmp_path_factory: pytest.TempPathFactory) -> list[DebPackage]:
    return resolve(debian(["jq"]), "amd64", tmp_path_factory.mktemp("resolve-jq"))


@pytest.mark.network
def test_resolve_jq_lists_what_minbase_lacks(jq_closure: list[DebPackage]) -> None:
    names = [pkg.name for pkg in jq_closure]
    assert names == sorted(names)
    assert {"jq", "libjq1", "libonig5"} <= set(names)
    assert "libc6" not in names, "libc6 is part of every minbase target"
    for pkg in jq_closure:
        assert pkg.arch in {"amd64", "all"}
        assert pkg.filename.startswith("pool/main/") and pkg.filename.endswith(".deb")
        assert pkg.url == f"{DEBIAN}/{pkg.filename}"
        assert re.fullmatch(r"[0-9a-f]{64}", pkg.sha256)
        assert pkg.size > 0
        assert pkg.control.startswith(f"Package: {pkg.name}\n")
        assert f"\nVersion: {pkg.version}\n" in pkg.control
        assert f"\nSHA256: {pkg.sha256}" in pkg.control
        assert not pkg.control.endswith("\n")
    jq = next(pkg for pkg in jq_closure if pkg.name == "jq")
    assert f"libjq1 (= {jq.version})" in jq.control


@pytest.mark.network
def test_resolve_rejects_an_index_signed_by_another_key(tmp_path: Path) -> None:
    wrong_key = tmp_path / "unrelated.gpg"
    # GnuPG's socket path must stay short, so the throwaway home is not under tmp_path.
    home = tempfile.mkdtemp(prefix="gpg-")
    try:
        gpg = ["gpg", "--batch", "--quiet", "--homedir", home]
        subprocess.run(
            [*gpg, "--passphrase", "", "--quick-generate-key", "unrelated", "ed25519"],
            check=True,
            capture_output=True,
        )
        wrong_key.write_bytes(
            subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout
        )
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
        shutil.rmtree(home)

    with pytest.raises(PackageResolveError) as raised:
        resolve(debian(["jq"], keyring=str(wrong_key)), "amd64", tmp_path / "work")

    assert DEBIAN in raised.value.message
    assert str(wrong_key) in raised.value.message
    assert "NO_PUBKEY" in raised.value.message
    assert raised.value.hint and "keyring" in raised.value.hint


@pytest.mark.network
def test_resolve_names_an_unknown_package(tmp_path: Path) -> None:
    with pytest.raises(PackageResolveError) as raised:
        resolve(debian(["jq", "no-such-package-here"]), "amd64", tmp_path)

    assert "'no-such-package-here' is not in any apt source" in raised.value.message
    assert DEBIAN in raised.value.message
    assert raised.value.exit_code == 20


@pytest.mark.network
def test_resolve_explains_an_unsatisfiable_dependency(tmp_path: Path) -> None:
    # non-free alone lacks the main packages nvidia-driver depends on.
    with pytest.raises(PackageResolveError) as raised:
        resolve(debian(["nvidia-driver"], components=["non-free"]), "amd64", tmp_path)

    assert "The following packages have unmet dependencies:" in raised.value.message
    assert "nvidia-driver : PreDepends:" in raised.value.message


def test_resolve_says_to_install_apt_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(PackageResolveError) as raised:
        resolve(debian(["jq"]), "amd64", tmp_path)

    assert "apt-get is not installed" in raised.value.message
    assert raised.value.hint and "install apt" in raised.value.hint


def _download(pkg: DebPackage, dest: Path) -> None:
    with urllib.request.urlopen(pkg.url, timeout=60) as response:  # noqa: S310 - http(s) only
        data = response.read()
    assert hashlib.sha256(data).hexdigest() == pkg.sha256, pkg.url
    assert len(data) == pkg.size
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def _make_world_readable(tree: Path) -> None:
    # apt inside the container reads the bundle as its unprivileged _apt user, and pytest
    # makes its temporary directories private to root.
    for path in [tree, *tree.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _image() -> str:
    image = harness_image()
    assert image is not None, "run tests/harness/setup.sh first: it builds the test-host image"
    return image


@pytest.fixture
def air_gapped_host(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A container with no network and two empty bundle mounts: good and tampered."""
    good, tampered = tmp_path / "bundle", tmp_path / "tampered"
    good.mkdir()
    tampered.mkdir()
    started = subprocess.run(
        ["docker", "run", "-d", "--network", "none",
         "-v", f"{good}:/srv/bundle:ro", "-v", f"{tampered}:/srv/tampered:ro",
         _image(), "sleep", "infinity"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    container = started.stdout.strip()
    try:
        yield container, good, tampered
    finally:
        subprocess.run(["docker", "rm", "-f", container], check=False, capture_output=True)


def _in_host(container: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", "-e", "DEBIAN_FRONTEND=noninteractive", container, "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )


def _use_bundle(container: str, mount: str) -> subprocess.CompletedProcess[str]:
    sources = (
        f"Types: deb\nURIs: file:{mount}\nSuites: repo/\nSigned-By: {mount}/repo/archive-key.gpg\n"
    )
    return _in_host(
        container,
        f"printf '{sources}' > /etc/apt/sources.list.d/appliance.sources"
        " && rm -rf /var/lib/apt/lists/* && apt-get update --error-on=any",
    )


@pytest.mark.docker
@pytest.mark.network
def test_signed_repo_installs_jq_on_an_air_gapped_host(
    jq_closure: list[DebPackage],
    air_gapped_host: tuple[str, Path, Path],
    tmp_path: Path,
) -> None:
    container, bundle, tampered = air_gapped_host
    entries = []
    for pkg in jq_closure:
        # Blobs are stored by digest alone, without a .deb suffix; apt must not mind.
        blob = f"blobs/sha256/{pkg.sha256}"
        _download(pkg, bundle / blob)
        entries.append((pkg, blob))
    work = tmp_path / "work"

    index = write_repo(entries, bundle / "repo", label="appliance-test", workdir=work)

    assert index == RepoIndex(
        files=REPO_FILES, fingerprint=index.fingerprint, key_path="repo/archive-key.gpg"
    )
    assert len(index.fingerprint) == 40
    assert sorted(p.name for p in (bundle / "repo").iterdir()) == sorted(
        Path(f).name for f in REPO_FILES
    )
    assert list(work.iterdir()) == [], "the throwaway GnuPG home must be gone"
    packages = (bundle / "repo/Packages").read_text()
    expected = "".join(
        pkg.control.replace(f"Filename: {pkg.filename}", f"Filename: {blob}") + "\n\n"
        for pkg, blob in entries
    )
    assert packages == expected
    key = subprocess.run(
        ["gpg", "--show-keys", "--with-colons", str(bundle / "repo/archive-key.gpg")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert key.startswith("pub:") and "\nsec:" not in key
    assert f"fpr:::::::::{index.fingerprint}:" in key
    release = (bundle / "repo/Release").read_text()
    assert "Valid-Until" not in release and "Label: appliance-test\n" in release
    again = write_repo(entries[::-1], tmp_path / "again/repo", label="appliance-test", workdir=work)
    assert again.fingerprint != index.fingerprint, "every repository gets a key of its own"
    for name in ("Packages", "Packages.gz"):
        assert (tmp_path / "again/repo" / name).read_bytes() == (
            bundle / "repo" / name
        ).read_bytes()
    undated = [line for line in release.splitlines() if not line.startswith("Date:")]
    again_release = (tmp_path / "again/repo/Release").read_text().splitlines()
    assert [line for line in again_release if not line.startswith("Date:")] == undated
    shutil.copytree(bundle, tampered, dirs_exist_ok=True)
    listing = tampered / "repo/Packages"
    data = bytearray(listing.read_bytes())
    data[data.index(b"Version: ") + len("Version: ")] ^= 0x01
    listing.write_bytes(bytes(data))
    _make_world_readable(bundle)
    _make_world_readable(tampered)

    update = _use_bundle(container, "/srv/bundle")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stderr, update.stderr
    install = _in_host(container, "apt-get install -y jq && jq --version")
    assert install.returncode == 0, install.stdout + install.stderr
    assert install.stdout.rstrip().endswith("jq-1.6"), install.stdout

    broken = _use_bundle(container, "/srv/tampered")
    assert broken.returncode != 0, broken.stdout + broken.stderr
    assert "Hash Sum mismatch" in broken.stdout + broken.stderr


@pytest.mark.docker
@pytest.mark.network
def test_a_repo_signed_with_the_operators_key_at_source_date_epoch_installs_jq(
    jq_closure: list[DebPackage],
    air_gapped_host: tuple[str, Path, Path],
    tmp_path: Path,
) -> None:
    """build-bundle --repo-key with SOURCE_DATE_EPOCH: a Release dated and signed in the past,
    by a key older still, is what apt on the host trusts and installs from."""
    container, bundle, _ = air_gapped_host
    entries = []
    for pkg in jq_closure:
        blob = f"blobs/sha256/{pkg.sha256}"
        _download(pkg, bundle / blob)
        entries.append((pkg, blob))
    epoch = 1_790_000_000
    key = load_repo_key(make_repo_key(tmp_path / "repo-key.asc"), tmp_path / "work", epoch)

    index = write_repo(
        entries, bundle / "repo", label="appliance-test", workdir=tmp_path / "work",
        key=key, epoch=epoch,
    )  # fmt: skip

    assert index.fingerprint == key.fingerprint
    assert "Date: Mon, 21 Sep 2026 14:13:20 UTC\n" in (bundle / "repo/Release").read_text()
    _make_world_readable(bundle)
    update = _use_bundle(container, "/srv/bundle")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stderr, update.stderr
    install = _in_host(container, "apt-get install -y jq && jq --version")
    assert install.returncode == 0, install.stdout + install.stderr


@pytest.mark.slow
@pytest.mark.network
def test_resolve_nvidia_driver_from_every_component(tmp_path: Path) -> None:
    started = time.monotonic()
    closure = resolve(
        debian(["nvidia-driver"], components=["main", "contrib", "non-free", "non-free-firmware"]),
        "amd64",
        tmp_path,
    )
    elapsed = time.monotonic() - started

    names = {pkg.name for pkg in closure}
    assert {"nvidia-driver", "nvidia-kernel-dkms", "dkms", "nvidia-driver-libs"} <= names
    total = sum(pkg.size for pkg in closure)
    print(
        f"\nnvidia-driver closure: {len(closure)} packages, {total} bytes "
        f"({total / 2**20:.1f} MiB), resolved in {elapsed:.1f}s"
    )
    assert total > 100 * 2**20
