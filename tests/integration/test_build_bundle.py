"""build-bundle end to end, through the real CLI: build, inspect, verify, rebuild from cache,
pack, and bootstrap the installer on an air-gapped host from the bundle alone."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.cli import main
from tests.fixtures.cli import run_cli
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("build")
    payload = os.urandom(1 << 20)
    (root / "payload.bin").write_bytes(payload)
    (root / "models").mkdir()
    (root / "models" / "tiny.gguf").write_bytes(b"GGUF" + os.urandom(4096))
    (root / "spec.yaml").write_text(
        "---\n"
        + spec_text(
            "e2e",
            "2026.11.0",
            stack=SYSTEMD_LLAMACPP,
            files=[
                {
                    "name": "payload",
                    "url": (root / "payload.bin").as_uri(),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                }
            ],
            packages=["jq"],
            models=[{"name": "tiny", "source": "models/tiny.gguf", "format": "gguf"}],
            wheels={"extra": ["six==1.16.0"]},
        )
    )
    return root


@pytest.fixture(scope="module")
def built(workspace: Path) -> dict[str, object]:
    """Build once for the module, through the CLI, with --json."""
    with pytest.raises(SystemExit) as done:
        main(["keygen", "-o", str(workspace / "key")])
    assert done.value.code == 0
    argv = ["--json", "build-bundle", str(workspace / "spec.yaml"), "-o", str(workspace / "out"),
            "--sign-key", str(workspace / "key"), "--cache", str(workspace / "cache")]  # fmt: skip
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0, stdout.getvalue()
    return json.loads(stdout.getvalue())


def test_build_reports_what_it_did(built: dict[str, object], workspace: Path) -> None:
    assert built["ok"] is True
    assert isinstance(built["fetched"], dict)
    kinds = built["by_kind"]
    assert isinstance(kinds, dict)
    assert built["fetched"]["files"] == 1 + kinds["deb"]  # the payload and the debs
    assert kinds["file"] == 1 and kinds["model"] == 1 and kinds["installer"] == 1
    # jq's closure (jq, libjq1, libonig5) and the roles' packages with theirs (nftables,
    # python3-apt, nginx-light, libgomp1 for llama.cpp): 45; the rest is in a minbase target.
    # Plus the 7 minbase packages built from the same sources (gcc-12-base, libgcc-s1 and
    # libstdc++6 beside libgomp1; libcap2; libtinfo6, ncurses-base, ncurses-bin): a host from
    # an older point release needs their exact versions and finds them only in the bundle.
    # And openssl, for the site CA that issues the gateway's certificate: 53.
    assert kinds["deb"] == 53
    assert kinds["repo-index"] == 6
    assert kinds["wheel"] >= 20  # the installer's closure plus six
    assert not list(workspace.glob(".out.partial-*"))


def test_manifest_lists_every_file_once_with_digest(workspace: Path) -> None:
    bundle = workspace / "out"
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    listed = {entry["path"] for entry in manifest["files"]}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    trust = {"manifest.json", "manifest.json.sig", "SHA256SUMS", "SHA256SUMS.sig"}
    assert on_disk - trust == listed
    for entry in manifest["files"]:
        assert hashlib.sha256((bundle / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    wheels = {e["name"] for e in manifest["files"] if e["kind"] == "wheel"}
    assert "six-1.16.0-py2.py3-none-any.whl" in wheels
    assert any(name.startswith("appliance-0.1.0-") for name in wheels)
    assert any(name.startswith("pip-") for name in wheels)
    debs = {e["component"].partition(":")[0] for e in manifest["files"] if e["kind"] == "deb"}
    assert {"jq", "libjq1", "libonig5", "nftables", "python3-apt", "nginx-light"} <= debs
    # Same source, same version: what a host from an older point release cannot match alone.
    versions = {
        e["component"].partition(":")[0]: e["name"].split("_")[1] for e in manifest["files"]
        if e["kind"] == "deb"
    }  # fmt: skip
    assert versions["gcc-12-base"] == versions["libgcc-s1"] == versions["libgomp1"]
    assert manifest["packages"] == ["jq"]
    assert manifest["role_packages"] == {
        "firewall": ["nftables"],
        "local_repo": ["nginx-light", "python3-apt"],
        "runtime_llamacpp": ["libgomp1"],
        # The site CA that issues the gateway's HTTPS certificate.
        "site_ca": ["openssl"],
    }
    sbom = json.loads((bundle / "sbom.cdx.json").read_bytes())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    purls = {c.get("purl") for c in sbom["components"]}
    assert "pkg:pypi/six@1.16.0" in purls


def test_inspect_json(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    code, out, _ = run_cli(capsys, "--json", "inspect", str(workspace / "out"))
    info = json.loads(out)
    assert code == 0
    assert (info["name"], info["release"]) == ("e2e", "2026.11.0")
    assert info["kinds"]["model"] == {"files": 1, "bytes": 4100}
    assert {c["name"] for c in info["components"]} >= {"payload", "tiny", "six:extra"}
    required = {c["name"]: c.get("required_by") for c in info["components"]}
    assert required["nftables:amd64"] == ["firewall"]
    assert required["python3-apt:amd64"] == ["local_repo"]
    assert required["jq:amd64"] is None  # the spec's own, no role's
    assert info["not_carried"] == {}


def test_inspect_says_which_role_requires_a_package(
    capsys: pytest.CaptureFixture[str], workspace: Path
) -> None:
    code, out, _ = run_cli(capsys, "inspect", str(workspace / "out"))
    assert code == 0
    lines = out.splitlines()
    nftables = next(line for line in lines if " nftables:amd64 " in line)
    assert nftables.endswith("  required by role firewall")
    assert not next(line for line in lines if " jq:amd64 " in line).endswith("firewall")


def test_verify_bundle_cli(capsys: pytest.CaptureFixture[str], workspace: Path) -> None:
    code, out, err = run_cli(
        capsys, "verify-bundle", str(workspace / "out"), "--pubkey", str(workspace / "key.pub")
    )
    assert (code, err) == (0, "")
    assert out.startswith(f"{workspace / 'out'}: verified e2e 2026.11.0: signature good, ")


def test_rebuild_of_unchanged_spec_downloads_nothing(
    capsys: pytest.CaptureFixture[str], workspace: Path
) -> None:
    code, out, _ = run_cli(
        capsys, "--json", "build-bundle", str(workspace / "spec.yaml"), "-o",
        str(workspace / "again"), "--sign-key", str(workspace / "key"),
        "--cache", str(workspace / "cache"),
    )  # fmt: skip
    report = json.loads(out)
    assert code == 0
    assert report["fetched"] == {"files": 0, "bytes": 0}
    assert report["from_cache"]["files"] == 1 + report["by_kind"]["deb"]
    first = json.loads((workspace / "out/manifest.json").read_bytes())
    second = json.loads((workspace / "again/manifest.json").read_bytes())

    # Same payload, byte for byte; only the repo's index differs (a fresh key signs each bundle).
    def payload(files: list[dict[str, object]]) -> list[dict[str, object]]:
        return [f for f in files if f["kind"] != "repo-index"]

    assert payload(first["files"]) == payload(second["files"])


def test_existing_output_is_refused_and_kept(
    capsys: pytest.CaptureFixture[str], workspace: Path
) -> None:
    before = (workspace / "out/manifest.json").read_bytes()
    code, _, err = run_cli(
        capsys, "build-bundle", str(workspace / "spec.yaml"), "-o", str(workspace / "out"),
        "--sign-key", str(workspace / "key"), "--cache", str(workspace / "cache"),
    )  # fmt: skip
    assert code == 23
    assert err.startswith(f"Error: {workspace / 'out'} already exists\n")
    assert (workspace / "out/manifest.json").read_bytes() == before


def test_mismatched_file_fails_and_leaves_no_bundle(
    capsys: pytest.CaptureFixture[str], workspace: Path
) -> None:
    spec = workspace / "bad.yaml"
    text = (workspace / "spec.yaml").read_text()
    digest = text.split("sha256: ")[1].split()[0]
    spec.write_text(text.replace(digest, "'" + "0" * 64 + "'"))
    code, _, err = run_cli(
        capsys, "build-bundle", str(spec), "-o", str(workspace / "bad"),
        "--sign-key", str(workspace / "key"), "--cache", str(workspace / "cache2"),
    )  # fmt: skip
    assert code == 22, err
    assert f"expected {'0' * 64}, got {digest}" in err
    assert not (workspace / "bad").exists()
    assert not list(workspace.glob(".bad.partial-*"))


@pytest.mark.docker
def test_install_sh_bootstraps_the_installer_on_an_airgapped_host(
    workspace: Path, airgapped_host: Callable[..., Callable[..., object]]
) -> None:
    host = airgapped_host({workspace / "out": "/srv/bundle", workspace / "key.pub": "/srv/key.pub"})
    # An inventory that does not exist stops `appliance install` right after the hand-over, so
    # this test sees the bootstrap alone (tests/integration/test_install.py installs for real).
    result = host(
        "/srv/bundle/install.sh", "--pubkey", "/srv/key.pub", "--inventory", "/srv/none.yml"
    )
    # The host has no network and no pip of its own: the venv came from the bundle alone.
    assert "creating the installer venv /opt/appliance/venv from the bundle" in result.stdout  # type: ignore[attr-defined]
    assert "/srv/bundle: verified e2e 2026.11.0: signature good" in result.stdout  # type: ignore[attr-defined]
    assert result.returncode == 30  # type: ignore[attr-defined]
    assert "Error: inventory /srv/none.yml does not exist" in result.stderr  # type: ignore[attr-defined]
    version = host("/opt/appliance/venv/bin/appliance", "--version")
    assert version.stdout == "appliance, version 0.1.0\n"  # type: ignore[attr-defined]


@pytest.mark.docker
def test_install_sh_refuses_a_tampered_bundle(
    workspace: Path, tmp_path: Path, airgapped_host: Callable[..., Callable[..., object]]
) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(workspace / "out", copy)
    model = next(p for p in (copy / "blobs/sha256").iterdir() if p.read_bytes()[:4] == b"GGUF")
    model.chmod(0o644)
    model.write_bytes(b"GGUF" + b"\0" * 4096)
    host = airgapped_host({copy: "/srv/bundle", workspace / "key.pub": "/srv/key.pub"})
    result = host("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
    assert result.returncode == 1  # type: ignore[attr-defined]
    assert "corrupt content: 1 file" in result.stderr  # type: ignore[attr-defined]
    assert "the bundle did not verify; nothing was installed" in result.stderr  # type: ignore[attr-defined]


@pytest.mark.docker
def test_bundle_repo_is_the_only_package_source_an_airgapped_host_needs(
    workspace: Path, airgapped_host: Callable[..., Callable[..., object]]
) -> None:
    host = airgapped_host({workspace / "out": "/srv/bundle"})
    source = (
        "Types: deb\nURIs: file:/srv/bundle\nSuites: repo/\n"
        "Signed-By: /srv/bundle/repo/archive-key.gpg\n"
    )
    steps = [
        ("sh", "-c", f"printf '{source}' > /etc/apt/sources.list.d/appliance.sources"),
        ("apt-get", "update", "--error-on=any"),
        ("apt-get", "install", "-y", "--no-install-recommends", "jq"),
        ("jq", "--version"),
    ]
    for step in steps:
        result = host(*step)
        assert result.returncode == 0, (step, result.stdout, result.stderr)  # type: ignore[attr-defined]
    assert result.stdout.strip() == "jq-1.6"  # type: ignore[attr-defined]
