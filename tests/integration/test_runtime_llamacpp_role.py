"""The runtime_llamacpp role on an air-gapped systemd host: a venv from the bundle's wheels, one
hardened unit per GGUF model, /health, and the backends published for the gateway.

The "bundle" here is the part of one the role reads: blobs by digest plus the extravars that
appliance install passes (appliance_models, appliance_wheel_sets). libgomp1 stands in for the
bundle's package repository (installed with dpkg before the role runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.hosts import ROOT, Host, start_host
from tests.fixtures.roles import blob_file, converge, single_box_topology

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

Run = Callable[..., subprocess.CompletedProcess[str]]
WHEELS = Path.home() / ".cache" / "appliance" / "test-wheels"
MODELS = ["tiny", "tiny-chat", "tiny-embed"]
# The spec's task of each model (chat unless named here).
TASKS = {"tiny-embed": "embedding"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import xllamacpp

    root = tmp_path_factory.mktemp("runtime-llamacpp")
    WHEELS.mkdir(parents=True, exist_ok=True)
    wanted = [f"xllamacpp=={xllamacpp.__version__}", "pip==24.2"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "-d", str(WHEELS), *wanted],
        check=True,
    )  # fmt: skip
    subprocess.run(["apt-get", "download", "-q", "libgomp1"], cwd=root, check=True)
    gguf = root / "tiny.gguf"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_model.py"), "gguf", str(gguf)],
        check=True,
        capture_output=True,
    )
    bundle = root / "bundle"
    wheels = {w.name.split("-")[0]: blob_file(bundle, w) for w in sorted(WHEELS.glob("*.whl"))}
    file = blob_file(bundle, gguf)
    models = [
        {"name": name, "format": "gguf", "source": "./tiny.gguf", "task": TASKS.get(name, "chat"),
         "digest": f"sha256:{file['sha256']}", "files": [file]}
        for name in MODELS
    ]  # fmt: skip
    extravars = {
        "appliance_bundle_dir": "/srv/bundle",
        "appliance_models": models,
        "appliance_topology": single_box_topology("llamacpp", models),
        "appliance_wheel_sets": {"installer": [wheels["pip"]], "llamacpp": [wheels["xllamacpp"]]},
        "runtime_llamacpp_ctx_size": 512,
        "runtime_llamacpp_threads": 1,
        "runtime_llamacpp_health_retries": 15,
        "runtime_llamacpp_health_delay": 1,
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    (root / "site.yml").write_text(
        "- name: Serve the bundle's GGUF models\n  hosts: all\n  gather_facts: false\n"
        "  roles: [runtime_llamacpp]\n  post_tasks:\n"
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
        ["docker", "cp", str(next(bundle.glob("libgomp1_*.deb"))), f"{host.name}:/srv/gomp.deb"],
        check=True,
    )
    assert host.run("dpkg", "-i", "/srv/gomp.deb").returncode == 0
    first = converge(bundle, host.name)
    assert first.returncode == 0, first.stdout[-4000:]
    yield host
    host.remove()


def _get(run: Run, url: str) -> dict[str, object]:
    fetched = run(
        "python3", "-c", f"import urllib.request as u; print(u.urlopen('{url}').read().decode())"
    )
    assert fetched.returncode == 0, fetched.stderr
    return json.loads(fetched.stdout)  # type: ignore[no-any-return]


def test_one_unit_per_model_is_active_and_enabled(served: Host) -> None:
    run = served.run
    for name in MODELS:
        assert (
            run("systemctl", "is-active", f"appliance-llamacpp@{name}.service").stdout == "active\n"
        )
        assert (
            run("systemctl", "is-enabled", f"appliance-llamacpp@{name}.service").stdout
            == "enabled\n"
        )


def test_each_model_on_its_own_port_under_its_own_name(served: Host) -> None:
    run = served.run
    for index, name in enumerate(MODELS):
        models = _get(run, f"http://127.0.0.1:{8081 + index}/v1/models")
        assert [m["id"] for m in models["data"]] == [name]  # type: ignore[index,union-attr]


def test_backends_are_published_for_the_gateway(served: Host, bundle: Path) -> None:
    backends = json.loads((bundle / "backends.json").read_text())
    digest = json.loads((bundle / "extravars.json").read_text())["appliance_models"][0]["digest"]
    assert backends == [
        {"name": name, "digest": digest, "url": f"http://127.0.0.1:{8081 + i}",
         "backend_model": name, "runtime": "llamacpp"}
        | ({"task": TASKS[name]} if name in TASKS else {})
        for i, name in enumerate(MODELS)
    ]  # fmt: skip


def test_the_embedding_model_is_started_for_embeddings(served: Host) -> None:
    embed = 8081 + MODELS.index("tiny-embed")
    script = (
        "import json, sys, urllib.request as u, urllib.error as e\n"
        "for port in sys.argv[1:]:\n"
        "    body = json.dumps({'input': ['hello', 'world']}).encode()\n"
        "    ask = u.Request(f'http://127.0.0.1:{port}/v1/embeddings', body,\n"
        "                    {'Content-Type': 'application/json'})\n"
        "    try:\n"
        "        data = json.load(u.urlopen(ask))['data']\n"
        "        print(port, [len(d['embedding']) for d in data])\n"
        "    except e.HTTPError as error:\n"
        "        print(port, error.code)\n"
    )
    answered = served.run("python3", "-c", script, str(embed), "8081")
    assert answered.stdout.splitlines() == [f"{embed} [256, 256]", "8081 501"], answered.stderr
    env = served.run("cat", "/etc/appliance/llamacpp/tiny-embed.env").stdout
    assert "LLAMACPP_TASK_ARGS=--embedding --pooling mean\n" in env


def test_servers_run_unprivileged_and_confined(served: Host) -> None:
    run = served.run
    pid = run("systemctl", "show", "-p", "MainPID", "--value", "appliance-llamacpp@tiny").stdout
    status = run("cat", f"/proc/{pid.strip()}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    uid = fields["Uid"].split()[0]
    assert run("id", "-un", uid).stdout.strip() == "appliance-llamacpp"
    # The root filesystem (and so the model, a hard link to the bundle's blob) is read-only.
    mounts = run("cat", f"/proc/{pid.strip()}/mountinfo").stdout.splitlines()
    root = next(line for line in mounts if line.split()[4] == "/")
    assert root.split()[5].startswith("ro")
    exposure = run("systemd-analyze", "security", "--no-pager", "appliance-llamacpp@tiny.service")
    assert "Overall exposure level" in exposure.stdout
    assert (
        float(exposure.stdout.split("Overall exposure level for")[1].split(":")[1].split()[0]) < 2
    )


def test_a_second_run_changes_nothing(served: Host, bundle: Path) -> None:
    again = converge(bundle, served.name)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "changed=0" in again.stdout.split("PLAY RECAP")[1], again.stdout[-4000:]


def test_a_server_that_does_not_come_up_is_reported_with_its_journal(
    served: Host, bundle: Path
) -> None:
    models = json.loads((bundle / "extravars.json").read_text())["appliance_models"]
    name = models[0]["name"]
    model = f"/var/lib/appliance/models/{name}/{models[0]['files'][0]['name']}"
    # The server's user can no longer read its model: it exits at start.
    assert served.run("systemctl", "stop", f"appliance-llamacpp@{name}.service").returncode == 0
    assert served.run("chmod", "000", model).returncode == 0
    try:
        failed = converge(
            bundle,
            served.name,
            "-e",
            "runtime_llamacpp_health_retries=2",
            "-e",
            "runtime_llamacpp_health_delay=1",
        )
        assert failed.returncode != 0
        said = re.search(
            rf"appliance-llamacpp@{name} does not answer /health; its last journal lines: (.+?)"
            r"\. Fix the cause",
            failed.stdout,
        )
        assert said, failed.stdout[-3000:]
        assert said.group(1).strip(" |"), "the journal lines are missing"
    finally:
        served.run("chmod", "644", model)
        served.run("systemctl", "restart", f"appliance-llamacpp@{name}.service")
