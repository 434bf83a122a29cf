"""The runtime_ollama role on an air-gapped systemd host, with a STAND-IN for the Ollama binary
(tests/fixtures/ollama_standin.py: the real release cannot be fetched here). What this proves:
the release is unpacked from the bundle, OLLAMA_MODELS is merged from the models' manifests and
blobs by hard links, the unit runs `ollama serve` confined with the offline environment, and the
backends are published. What it cannot: that the real Ollama loads and answers with a model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.hosts import ROOT, Host, start_host
from tests.fixtures.roles import blob_file, converge, single_box_topology

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]


def _model(bundle: Path, work: Path, name: str, manifest_path: str, layers: list[Path]) -> dict:
    config = work / f"{name}-config.json"
    config.write_text(json.dumps({"model_format": "gguf", "name": name}))
    entry = [
        {"digest": "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in [config, *layers]
    ]
    manifest = work / f"{name}-manifest.json"
    manifest.write_text(json.dumps({"schemaVersion": 2, "config": entry[0], "layers": entry[1:]}))
    files = []
    for source, relative in [(manifest, manifest_path)] + [
        (p, "blobs/" + e["digest"].replace(":", "-"))
        for p, e in zip([config, *layers], entry, strict=True)
    ]:
        files.append({**blob_file(bundle, source), "name": relative})
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    return {"name": name, "format": "ollama", "source": f"ollama://{name}",
            "digest": f"sha256:{digest}", "files": files}  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runtime-ollama")
    bundle = root / "bundle"
    # The role's declared OS package (runtime_ollama_packages); stands in for the bundle's
    # repository, installed with dpkg before the role runs.
    subprocess.run(["apt-get", "download", "-q", "zstd"], cwd=root, check=True)
    archive = root / "ollama-linux-amd64.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ROOT / "tests" / "fixtures" / "ollama_standin.py", arcname="bin/ollama")
    release = {**blob_file(bundle, archive), "name": "ollama", "file_name": archive.name}
    weights = root / "weights.bin"
    weights.write_bytes(b"shared layer " * 1000)  # both models carry this blob
    models = [
        _model(bundle, root, "tiny-ollama", "manifests/registry.ollama.ai/library/tiny/latest",
               [weights]),
        _model(bundle, root, "tiny-other", "manifests/registry.example.internal/team/tiny/v1",
               [weights]),
    ]  # fmt: skip
    extravars = {
        "appliance_bundle_dir": "/srv/bundle",
        "appliance_files": [release],
        "appliance_models": models,
        "appliance_topology": single_box_topology("ollama", models),
        "runtime_ollama_device": "cpu",
        "runtime_ollama_health_retries": 15,
        "runtime_ollama_health_delay": 1,
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    (root / "site.yml").write_text(
        "- name: Serve the bundle's Ollama models\n  hosts: all\n  gather_facts: false\n"
        "  roles: [runtime_ollama]\n  post_tasks:\n"
        "    - name: Hand the backends to the test\n      ansible.builtin.copy:\n"
        "        content: '{{ appliance_backends | to_json }}'\n"
        f"        dest: {root}/backends.json\n        mode: '0644'\n"
        "      delegate_to: localhost\n      changed_when: false\n"
    )
    return root


@pytest.fixture(scope="module")
def served(bundle: Path, test_image: str) -> Iterator[Host]:
    host = start_host(test_image, {bundle / "bundle": "/srv/bundle"})
    subprocess.run(
        ["docker", "cp", str(next(bundle.glob("zstd_*.deb"))), f"{host.name}:/srv/zstd.deb"],
        check=True,
    )
    assert host.run("dpkg", "-i", "/srv/zstd.deb").returncode == 0
    first = converge(bundle, host.name)
    assert first.returncode == 0, first.stdout[-4000:]
    yield host
    host.remove()


def _get(host: Host, path: str) -> dict:
    code = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:11434{path}').read().decode())"
    fetched = host.run("python3", "-c", code)
    assert fetched.returncode == 0, fetched.stderr
    return json.loads(fetched.stdout)


def test_ollama_serves_every_model_from_the_merged_layout(served: Host, bundle: Path) -> None:
    models = json.loads((bundle / "extravars.json").read_text())["appliance_models"]
    tags = _get(served, "/api/tags")["models"]
    assert sorted(t["name"] for t in tags) == [
        "registry.example.internal/team/tiny:v1",
        "tiny:latest",
    ]
    assert sorted("sha256:" + t["digest"] for t in tags) == sorted(m["digest"] for m in models)


def test_blobs_are_hard_links_to_the_laid_out_models(served: Host) -> None:
    listing = served.run("sh", "-c", "stat -c '%h %n' /var/lib/appliance/ollama/models/blobs/*")
    lines = listing.stdout.splitlines()
    assert len(lines) == 3  # two configs, one shared layer: merged, not duplicated
    assert all(int(line.split()[0]) >= 2 for line in lines)


def test_ollama_runs_offline_unprivileged_and_read_only(served: Host) -> None:
    seen = _get(served, "/standin/env")
    assert seen["env"]["OLLAMA_NO_CLOUD"] == "1"
    assert seen["env"]["OLLAMA_NOPRUNE"] == "1"
    assert seen["env"]["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert seen["env"]["OLLAMA_MODELS"] == "/var/lib/appliance/ollama/models"
    assert seen["env"]["HOME"] == "/var/lib/appliance-ollama"
    assert seen["uid"] != 0
    assert seen["models_writable"] is False
    assert served.run("systemctl", "is-enabled", "appliance-ollama.service").stdout == "enabled\n"


def test_backends_name_each_model_as_ollama_knows_it(served: Host, bundle: Path) -> None:
    backends = json.loads((bundle / "backends.json").read_text())
    assert [(b["name"], b["backend_model"], b["url"], b["runtime"]) for b in backends] == [
        ("tiny-ollama", "tiny:latest", "http://127.0.0.1:11434", "ollama"),
        (
            "tiny-other",
            "registry.example.internal/team/tiny:v1",
            "http://127.0.0.1:11434",
            "ollama",
        ),
    ]


def test_a_second_run_changes_nothing(served: Host, bundle: Path) -> None:
    again = converge(bundle, served.name)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "changed=0" in again.stdout.split("PLAY RECAP")[1], again.stdout[-4000:]
