"""Seeding the registry from a bundle's OCI layout, with the very code the registry role runs
(its module_utils, through appliance.registry), against Debian's docker-registry speaking TLS
with basic authentication on loopback: images made here, one of them a two-platform index."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.registry import Client, RegistryError, auth_file, repository, seed_image
from tests.fixtures.registry import layer, push_image, push_index, registry, site_ca, tls_registry

PUSH = ("appliance-push", "push-secret-made-here")


def _bundle_layout(root: Path) -> dict[str, Any]:
    """An OCI layout as build-bundle writes one (each image under its spec reference, digests
    preserved), from a plain registry on loopback."""
    base = layer({"lib/base.bin": os.urandom(200_000)})
    with registry(root / "upstream") as address:
        single = push_image(root / "src", f"{address}/team/app:1", [base, layer({"a": b"1"})])
        index = push_index(
            root / "src-multi",
            f"{address}/team/multi:1",
            {"amd64": [base, layer({"b": b"2"})], "arm64": [layer({"c": b"3"})]},
        )
        refs = {f"{address}/team/app:1@{single}": single, f"{address}/team/multi:1@{index}": index}
        for ref, digest in refs.items():
            name = ref.partition(":1@")[0]
            subprocess.run(
                ["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
                 "--src-tls-verify=false", f"docker://{name}@{digest}",
                 f"oci:{root / 'bundle'}:{ref}"],
                check=True, capture_output=True,
            )  # fmt: skip
    return {"layout": root / "bundle", "refs": refs}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("seed")
    bundle = _bundle_layout(root)
    with tls_registry(root / "local", dict([PUSH])) as (address, ca):
        authfile = root / "push-auth.json"
        authfile.write_text(auth_file(address, *PUSH))
        certs = root / "certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(ca.read_bytes())
        client = Client(address, str(ca), *PUSH)

        def seed(skopeo: str) -> list[dict[str, Any]]:
            return [
                seed_image(client, str(bundle["layout"]), ref, digest, {}, str(authfile),
                           str(certs), skopeo=skopeo)
                for ref, digest in bundle["refs"].items()
            ]  # fmt: skip

        first = seed("skopeo")
        # A re-seed that tried to copy anything would fail: its skopeo is false(1).
        again = seed("false")
        yield {**bundle, "address": address, "ca": ca, "client": client, "first": first,
               "again": again, "root": root, "authfile": authfile, "certs": certs}  # fmt: skip


def test_every_image_is_pushed_under_its_upstream_name_by_digest(seeded: dict[str, Any]) -> None:
    address, refs = seeded["address"], seeded["refs"]
    assert [s["pushed"] for s in seeded["first"]] == [True, True]
    assert [s["target"] for s in seeded["first"]] == [
        f"{address}/{repository(ref)}@{digest}" for ref, digest in refs.items()
    ]
    upstream = next(iter(refs)).split("/", 1)[0]
    assert repository(next(iter(refs))) == f"{upstream.replace(':', '_')}/team/app"


def test_the_registry_serves_each_manifest_with_its_digest(seeded: dict[str, Any]) -> None:
    for ref, digest in seeded["refs"].items():
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", "--cert-dir", str(seeded["certs"]),
             "--authfile", str(seeded["authfile"]),
             f"docker://{seeded['address']}/{repository(ref)}@{digest}"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == digest


def test_every_platform_of_an_index_is_seeded(seeded: dict[str, Any]) -> None:
    ref, digest = list(seeded["refs"].items())[1]
    client: Client = seeded["client"]
    index = client.manifest(repository(ref), digest)
    platforms = sorted(m["platform"]["architecture"] for m in index["manifests"])
    assert platforms == ["amd64", "arm64"]
    for child in index["manifests"]:
        assert client.has_manifest(repository(ref), child["digest"])
    # The index, two manifests, two configs and three distinct layers were read back.
    assert seeded["first"][1]["checked"] == 8


def test_a_reseed_pushes_nothing_and_reads_everything_back(seeded: dict[str, Any]) -> None:
    assert [s["pushed"] for s in seeded["again"]] == [False, False]
    assert [s["checked"] for s in seeded["again"]] == [s["checked"] for s in seeded["first"]]


def test_a_blob_the_bundle_lists_but_the_registry_lacks_fails_the_read_back(
    seeded: dict[str, Any],
) -> None:
    ref, digest = next(iter(seeded["refs"].items()))
    with pytest.raises(RegistryError, match=r"blob sha256:f{64} is missing"):
        seed_image(seeded["client"], str(seeded["layout"]), ref, digest, {"f" * 64: 1},
                   str(seeded["authfile"]), str(seeded["certs"]))  # fmt: skip


def test_a_wrong_ca_is_refused_before_anything_is_pushed(
    seeded: dict[str, Any], tmp_path: Path
) -> None:
    other, _crt, _key = site_ca(tmp_path / "other")
    client = Client(seeded["address"], str(other), *PUSH)
    ref = "ghcr.io/never/pushed@sha256:" + "0" * 64
    with pytest.raises(RegistryError) as caught:
        seed_image(client, str(seeded["layout"]), ref, "sha256:" + "0" * 64, {},
                   str(seeded["authfile"]), str(tmp_path))  # fmt: skip
    assert str(caught.value).startswith(
        f"the registry at {seeded['address']} presents a certificate that the CA in {other} did "
        "not sign"
    )
    assert str(caught.value).endswith("nothing was pushed")
    repositories = seeded["root"] / "local" / "data" / "docker" / "registry" / "v2" / "repositories"
    assert not (repositories / "ghcr.io").exists()


def test_wrong_credentials_are_named(seeded: dict[str, Any]) -> None:
    client = Client(seeded["address"], str(seeded["ca"]), "appliance-push", "not-the-password")
    ref, digest = next(iter(seeded["refs"].items()))
    with pytest.raises(RegistryError, match=r"refused these credentials \(HTTP 401\)"):
        client.has_manifest(repository(ref), digest)
    assert json.loads(seeded["authfile"].read_text())["auths"][seeded["address"]]["auth"]
