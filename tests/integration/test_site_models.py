"""Site models end to end on an air-gapped host: a model "fine-tuned inside the boundary" added
with `appliance models add`, served by llama.cpp behind the audited gateway with its digest in
every audit record, kept by an install of another release, and refused at start once a file of
it changes.

Two real bundles (two releases) from build-bundle, installed by their own install.sh on a
systemd host with no network. The fine-tuned model is a stand-in: the tiny GGUF of
examples/tiny_model.py with its general.name changed (same length), so its bytes and digest
differ from the bundle's model while llama.cpp still loads it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.bundles import signed_bundle
from tests.fixtures.hosts import Host, harness_image, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import operator_key
from tests.fixtures.opt_in import opt_in
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text

pytestmark = [
    pytest.mark.network,
    pytest.mark.docker,
    pytest.mark.slow,
    # Two real releases built and installed, a model added and served: 3-4.5 minutes on 2 cores,
    # kept out of CI's 45 minutes; run before a change to `appliance models` or the runtime lands.
    opt_in("APPLIANCE_TEST_SITE_MODELS"),
]

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = "/opt/appliance/venv/bin/appliance"
ADMIN = "/opt/appliance/gateway/bin/appliance"
AUDIT_DIR = "/var/log/appliance/audit"
EGRESS_TARGET = "http://198.19.255.10/"  # lab range: leads nowhere, must be dropped
SERVED = "/var/lib/appliance/models/tiny-site/tiny-site.gguf"
RELEASES = ("2026.12.1", "2026.12.2")


def spec(release: str) -> str:
    return spec_text(
        "site-models-test",
        release,
        stack=SYSTEMD_LLAMACPP,
        packages=["nftables", "python3-apt", "libgomp1"],
        models=[{"name": "tiny-llama", "source": "models/tiny-llama.gguf", "format": "gguf"}],
        wheels={"llamacpp": ["xllamacpp==2026.10.11549"]},
    )


@dataclass
class Site:
    host: Host
    key: str
    digest: str  # the site model's, sha256:<hex> of its one file

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.host.run(*command)

    def install(self, release: str) -> subprocess.CompletedProcess[str]:
        return self.run(f"/srv/{release}/bundle/install.sh", "--pubkey", f"/srv/{release}/key.pub")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any], str]:
        done = self.run(
            "python3", "-c", CALL, method, f"http://127.0.0.1:8000{path}", self.key,
            json.dumps(body) if body is not None else "",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        return (
            reply["status"],
            json.loads("".join(reply["lines"])),
            reply["headers"]["X-Request-Id"],
        )

    def record(self, request_id: str) -> dict[str, Any]:
        shown = self.run(ADMIN, "--json", "audit", "show", "--dir", AUDIT_DIR,
                         "--request-id", request_id)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        (record,) = json.loads(shown.stdout)["records"]
        return record  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    image = harness_image()
    if image is None:
        pytest.fail("no harness image: run tests/harness/setup.sh")
    root = tmp_path_factory.mktemp("site-models")
    model = root / "tiny-llama.gguf"
    subprocess.run(
        [sys.executable, ROOT / "examples" / "tiny_model.py", "gguf", model],
        check=True,
        capture_output=True,
    )
    finetuned = root / "finetuned"
    finetuned.mkdir()
    data = model.read_bytes()
    assert data.count(b"appliance-tiny-llama") == 1
    (finetuned / "tiny-site.gguf").write_bytes(
        data.replace(b"appliance-tiny-llama", b"appliance-site-llama")
    )
    mounts = {finetuned: "/srv/finetuned"}
    for release in RELEASES:
        (root / release / "models").mkdir(parents=True)
        (root / release / "models" / "tiny-llama.gguf").write_bytes(data)
        signed_bundle(root / release, spec(release), release)
        mounts[root / release / "bundle"] = f"/srv/{release}/bundle"
        mounts[root / release / "key.pub"] = f"/srv/{release}/key.pub"
    host = start_host(image, mounts)
    try:
        first = host.run(f"/srv/{RELEASES[0]}/bundle/install.sh", "--pubkey",
                         f"/srv/{RELEASES[0]}/key.pub")  # fmt: skip
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        digest = hashlib.sha256((finetuned / "tiny-site.gguf").read_bytes()).hexdigest()
        yield Site(host, operator_key(first.stdout), f"sha256:{digest}")
    finally:
        host.remove()


def test_add_records_the_model_with_a_key_made_on_site(site: Site) -> None:
    added = site.run(APPLIANCE, "models", "add", "/srv/finetuned", "--name", "tiny-site")
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[1] == (
        f"Added site model tiny-site: gguf, 1 file(s), 1.9 MiB, {site.digest}."
    )
    key = site.run("stat", "-c", "%a %U", "/var/lib/appliance/site/site-key").stdout.split()
    assert key == ["600", "root"]
    stored = f"/var/lib/appliance/store/models/sha256/{site.digest.removeprefix('sha256:')}"
    assert site.run("test", "-f", stored).returncode == 0
    # A bundle model's name is refused, and the site's signing key appears in no log or record.
    taken = site.run(APPLIANCE, "models", "add", "/srv/finetuned", "--name", "tiny-llama")
    assert taken.returncode == 37, taken.stdout + taken.stderr
    assert f"belongs to a model of the installed bundle (release {RELEASES[0]})" in taken.stderr


def test_the_next_install_serves_it_beside_the_bundles_model(site: Site) -> None:
    again = site.install(RELEASES[0])
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-3000:]
    assert "site models: tiny-site (site manifest /var/lib/appliance/site: signature good)" in (
        again.stdout + again.stderr
    )
    private = site.run("sed", "-n", "2p", "/var/lib/appliance/site/site-key").stdout.strip()
    leaked = site.run("grep", "-rlF", private, "/opt/appliance/runs", "/var/log")
    assert leaked.returncode == 1, leaked.stdout
    status, models, _ = site.call("GET", "/v1/models")
    assert status == 200
    digests = {m["id"]: m["appliance_digest"] for m in models["data"]}
    assert digests["tiny-site"] == site.digest
    assert digests["tiny-llama"] != site.digest


def test_a_call_to_it_is_audited_with_its_digest(site: Site) -> None:
    status, body, request_id = site.call("POST", "/v1/chat/completions", chat("tiny-site"))
    assert status == 200, body
    assert body["model"] == "tiny-site"
    assert body["usage"]["completion_tokens"] > 0
    record = site.record(request_id)
    assert (record["model"], record["model_digest"], record["status"]) == (
        "tiny-site",
        site.digest,
        200,
    )
    chain = site.run(ADMIN, "--json", "audit", "verify", "--dir", AUDIT_DIR)
    assert chain.returncode == 0, chain.stdout + chain.stderr


def test_list_shows_both_origins_and_where_each_is_served(site: Site) -> None:
    listed = site.run(APPLIANCE, "--json", "models", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["models"]}
    assert (rows["tiny-site"]["origin"], rows["tiny-site"]["digest"]) == ("site", site.digest)
    assert (rows["tiny-llama"]["origin"], rows["tiny-llama"]["release"]) == (
        "bundle",
        RELEASES[0],
    )
    # After the bundle's models: a site model moves no bundle model to another port.
    assert rows["tiny-llama"]["served"] == "http://127.0.0.1:8081"
    assert rows["tiny-site"]["served"] == "http://127.0.0.1:8082"


def test_verify_finds_every_served_model_in_a_signed_manifest(site: Site) -> None:
    done = site.run(APPLIANCE, "--json", "verify", "--egress-target", EGRESS_TARGET)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    for name in (
        "site manifest: signature good",
        "served model in the manifest: /etc/appliance/llamacpp/tiny-site.sha256",
        "served model files match their digests: /etc/appliance/llamacpp/tiny-site.sha256",
        "served model in the manifest: /etc/appliance/llamacpp/tiny-llama.sha256",
        "gateway model in the manifest: tiny-site",
        "gateway backend healthy: tiny-site",
    ):
        assert checks[name]["passed"], checks.get(name)
    assert checks["site manifest: signature good"]["evidence"].endswith(f"tiny-site {site.digest}")


def test_an_install_of_another_release_keeps_serving_it(site: Site) -> None:
    upgraded = site.install(RELEASES[1])
    assert upgraded.returncode == 0, upgraded.stdout[-4000:] + upgraded.stderr[-3000:]
    current = site.run("readlink", "/opt/appliance/current").stdout.strip()
    assert current == f"releases/{RELEASES[1]}"
    status, body, request_id = site.call("POST", "/v1/chat/completions", chat("tiny-site"))
    assert status == 200, body
    assert site.record(request_id)["model_digest"] == site.digest


def test_a_changed_file_is_refused_at_start_naming_it(site: Site) -> None:
    # Someone changes the model's bytes in place (the served file is the store's object).
    flip = (
        f"import os; f = os.open('{SERVED}', os.O_RDWR); os.lseek(f, -1, os.SEEK_END); "
        "b = os.read(f, 1); os.lseek(f, -1, os.SEEK_END); os.write(f, bytes([b[0] ^ 1]))"
    )
    assert site.run("python3", "-c", flip).returncode == 0
    said = f"{SERVED}: FAILED"
    try:
        # The unit checks every file against the signed digests before the server starts.
        restart = site.run("systemctl", "restart", "appliance-llamacpp@tiny-site.service")
        assert restart.returncode != 0
        journal = site.run("journalctl", "--no-pager", "-u", "appliance-llamacpp@tiny-site")
        assert said in journal.stdout, journal.stdout[-2000:]
        status, body, request_id = site.call("POST", "/v1/chat/completions", chat("tiny-site"))
        assert status == 502, body
        assert site.record(request_id)["model_digest"] == site.digest
        # install stops too; its run record names the file (from the unit's journal).
        refused = site.install(RELEASES[1])
        assert refused.returncode == 32, refused.stdout[-2000:]
        assert "FAILED: [localhost] Stop with what the servers said" in refused.stdout
        record = refused.stderr.rstrip().rsplit(" ", 1)[-1]
        assert record.startswith("/opt/appliance/runs/"), refused.stderr
        assert site.run("grep", "-rqF", said, record).returncode == 0, refused.stderr
        verify = site.run(APPLIANCE, "--json", "verify", "--egress-target", EGRESS_TARGET)
        assert verify.returncode == 33
        failed = {p["path"]: p["message"] for p in json.loads(verify.stdout)["error"]["problems"]}
        listed = "/etc/appliance/llamacpp/tiny-site.sha256"
        assert said in failed[f"localhost: served model files match their digests: {listed}"]
    finally:
        assert site.run("python3", "-c", flip).returncode == 0  # flipped back
        site.run("systemctl", "reset-failed", "appliance-llamacpp@tiny-site.service")
        site.run("systemctl", "start", "appliance-llamacpp@tiny-site.service")


def test_a_site_manifest_whose_signature_fails_is_refused(site: Site) -> None:
    manifest = "/var/lib/appliance/site/models.json"
    assert site.run("cp", "-a", manifest, "/root/models.json").returncode == 0
    forged = f"sed -i 's/{site.digest.removeprefix('sha256:')[:8]}/00000000/' {manifest}"
    assert site.run("sh", "-c", forged).returncode == 0
    try:
        listed = site.run(APPLIANCE, "models", "list")
        assert listed.returncode == 37
        assert listed.stderr.startswith(
            f"Error: site manifest {manifest}: signature does not verify with "
            "/var/lib/appliance/site/site-key.pub; no site model is served from it"
        ), listed.stderr
        refused = site.install(RELEASES[1])
        assert refused.returncode == 37, refused.stdout[-2000:] + refused.stderr
        assert "signature does not verify" in refused.stderr
        assert "PLAY " not in refused.stdout  # refused before the play, nothing changed
    finally:
        site.run("cp", "-a", "/root/models.json", manifest)
