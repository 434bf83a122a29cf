"""Inference end to end on an air-gapped host: the llama.cpp runtime and the audited gateway,
installed from a real bundle by its own install.sh, called over real HTTP inside the host.

The host has no network; the bundle carries the Debian packages, the wheelhouse (llama.cpp's
server, the gateway) and two tiny GGUF models. The models are random: the tests assert
structure, token counts, finish reasons and model ids, never the words.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.build import BuildOptions, build_bundle
from tests.fixtures.bundles import signed_bundle
from tests.fixtures.hosts import Host, harness_image, start_host
from tests.fixtures.inference import CALL, chat
from tests.fixtures.install import operator_key
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EGRESS_TARGET = "http://198.19.255.10/"  # lab range: leads nowhere, must be dropped
GATEWAY = "http://127.0.0.1:8000"
AUDIT_DIR = "/var/log/appliance/audit"
ADMIN = "/opt/appliance/gateway/bin/appliance"

# libgomp1: OpenMP, which xllamacpp links.
SPEC = spec_text(
    "inference-test",
    "2026.11.27",
    stack=SYSTEMD_LLAMACPP,
    packages=["nftables", "python3-apt", "libgomp1"],
    models=[
        {"name": "tiny-llama", "source": "models/tiny-llama.gguf", "format": "gguf"},
        {"name": "tiny-llama-b", "source": "models/tiny-llama.gguf", "format": "gguf"},
    ],
    wheels={"llamacpp": ["xllamacpp==2026.10.11549"]},
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    lines: list[str]

    @property
    def json(self) -> Any:
        return json.loads("".join(self.lines))

    @property
    def request_id(self) -> str:
        return self.headers["X-Request-Id"]


@dataclass
class Appliance:
    host: Host
    key: str
    install_stdout: str
    model_sha256: str
    root: Path  # the spec, its model and the signing key the bundle was built from

    def call(self, method: str, path: str, key: str | None, body: Any = None) -> Reply:
        done = self.host.run(
            "python3",
            "-c",
            CALL,
            method,
            GATEWAY + path,
            key or "",
            json.dumps(body) if body is not None else "",
        )
        assert done.returncode == 0, done.stderr
        return Reply(**json.loads(done.stdout))

    def audit(self) -> list[dict[str, Any]]:
        text = self.host.run("sh", "-c", f"cat {AUDIT_DIR}/audit*.jsonl").stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    image = harness_image()
    if image is None:
        pytest.fail("no harness image: run tests/harness/setup.sh")
    root = tmp_path_factory.mktemp("inference")
    model = root / "models" / "tiny-llama.gguf"
    subprocess.run(
        [sys.executable, ROOT / "examples" / "tiny_model.py", "gguf", model],
        check=True,
        capture_output=True,
    )
    signed_bundle(root, SPEC, "inference test")
    host = start_host(image, {root / "bundle": "/srv/bundle", root / "key.pub": "/srv/key.pub"})
    try:
        done = host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        key = operator_key(done.stdout)
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        yield Appliance(host, key, done.stdout, digest, root)
    finally:
        host.remove()


def test_install_shows_the_operator_key_once_and_keeps_only_hashes(appliance: Appliance) -> None:
    run = appliance.host.run
    assert run("test", "-e", "/opt/appliance/secrets/operator.key").returncode == 1
    verify_key = run("stat", "-c", "%a %U", "/opt/appliance/secrets/appliance-verify.key")
    assert verify_key.stdout.split() == ["600", "root"]
    keys = json.loads(run("cat", "/etc/appliance/gateway/keys.json").stdout)
    assert [k["name"] for k in keys["keys"]] == ["operator", "appliance-verify"]
    assert appliance.key not in json.dumps(keys)
    operator = keys["keys"][0]
    assert operator["sha256"] == hashlib.sha256(appliance.key.encode()).hexdigest()
    assert run("stat", "-c", "%a %U %G", "/etc/appliance/gateway/keys.json").stdout.split() == [
        "640",
        "root",
        "appliance-gateway",
    ]
    # No run record holds the plaintext.
    leaked = run("grep", "-rlF", appliance.key, "/opt/appliance/runs")
    assert leaked.returncode == 1, leaked.stdout


def test_models_are_listed_with_their_digests(appliance: Appliance) -> None:
    reply = appliance.call("GET", "/v1/models", appliance.key)
    assert reply.status == 200
    listed = {m["id"]: m for m in reply.json["data"]}
    assert sorted(listed) == ["tiny-llama", "tiny-llama-b"]
    for model in listed.values():
        assert model["object"] == "model"
        assert model["appliance_digest"] == f"sha256:{appliance.model_sha256}"


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-llama-b"])
def test_chat_completion_is_routed_by_model(appliance: Appliance, model: str) -> None:
    reply = appliance.call("POST", "/v1/chat/completions", appliance.key, chat(model))
    assert reply.status == 200, reply.lines
    body = reply.json
    assert body["object"] == "chat.completion"
    assert body["model"] == model
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"length", "stop"}
    assert 0 < body["usage"]["completion_tokens"] <= 8
    assert body["usage"]["prompt_tokens"] > 0


def test_completion(appliance: Appliance) -> None:
    reply = appliance.call(
        "POST",
        "/v1/completions",
        appliance.key,
        {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": 5},
    )
    assert reply.status == 200, reply.lines
    body = reply.json
    assert body["model"] == "tiny-llama"
    assert body["choices"][0]["finish_reason"] in {"length", "stop"}
    assert body["usage"]["completion_tokens"] == 5 or body["choices"][0]["finish_reason"] == "stop"


def test_streaming_passes_sse_through(appliance: Appliance) -> None:
    asked = chat("tiny-llama", stream=True, stream_options={"include_usage": True})
    reply = appliance.call("POST", "/v1/chat/completions", appliance.key, asked)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: ") :].strip() for line in reply.lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert 0 < len(deltas) <= 8
    (finish,) = [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0].get("finish_reason")
    ]
    # The client asked for usage: it arrives in the stream (the gateway drops it for clients
    # that did not ask). A token that ends inside a UTF-8 character sends no text of its own,
    # so deltas may be fewer.
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage, "no usage chunk"
    assert len(deltas) <= usage[-1]["completion_tokens"] <= 8
    assert finish == "stop" or usage[-1]["completion_tokens"] == 8


def test_wrong_or_missing_key_is_refused_and_audited(appliance: Appliance) -> None:
    wrong = appliance.key[:-4] + ("AAAA" if not appliance.key.endswith("AAAA") else "BBBB")
    for key in (wrong, None, "not-a-key"):
        reply = appliance.call("POST", "/v1/chat/completions", key, chat("tiny-llama"))
        assert reply.status == 401, reply.lines
        assert reply.json["error"]["code"]
        (record,) = [r for r in appliance.audit() if r.get("request_id") == reply.request_id]
        assert record["status"] == 401
        assert record["completion_tokens"] in (None, 0)


def test_a_model_off_the_keys_allow_list_is_refused(appliance: Appliance) -> None:
    made = appliance.host.run(
        ADMIN,
        "--json",
        "gateway",
        "new-key",
        "--keys-file",
        "/etc/appliance/gateway/keys.json",
        "--name",
        "only-b",
        "--model",
        "tiny-llama-b",
    )
    assert made.returncode == 0, made.stderr
    limited = json.loads(made.stdout)
    assert appliance.host.run("systemctl", "reload", "appliance-gateway").returncode == 0
    # `systemctl reload` returns once the signal is sent; the gateway takes the new key within
    # a second (its watcher polls the file, the signal only hastens it): wait until it has.
    for _ in range(50):
        if appliance.call("GET", "/v1/models", limited["key"]).status != 401:
            break
        time.sleep(0.1)

    refused = appliance.call("POST", "/v1/chat/completions", limited["key"], chat("tiny-llama"))
    assert refused.status == 403, refused.lines
    allowed = appliance.call("POST", "/v1/chat/completions", limited["key"], chat("tiny-llama-b"))
    assert allowed.status == 200, allowed.lines
    listed = appliance.call("GET", "/v1/models", limited["key"]).json
    assert [m["id"] for m in listed["data"]] == ["tiny-llama-b"]

    records = {r.get("request_id"): r for r in appliance.audit()}  # key events have none
    assert records[refused.request_id]["status"] == 403
    assert records[refused.request_id]["key_id"] == limited["id"]
    assert records[allowed.request_id]["key_id"] == limited["id"]
    assert records[allowed.request_id]["model"] == "tiny-llama-b"


def test_every_call_is_in_the_audit_log_with_key_and_model_digest(appliance: Appliance) -> None:
    before = len(appliance.audit())
    replies = [
        appliance.call("POST", "/v1/chat/completions", appliance.key, chat("tiny-llama")),
        appliance.call(
            "POST", "/v1/chat/completions", appliance.key, chat("tiny-llama", stream=True)
        ),
        appliance.call("GET", "/v1/models", appliance.key),
    ]
    records = appliance.audit()
    assert len(records) == before + len(replies)
    by_id = {r.get("request_id"): r for r in records}
    key_id = "k-" + appliance.key.split("_")[1]
    for reply in replies:
        record = by_id[reply.request_id]
        assert record["key_id"] == key_id
        assert record["status"] == 200
    chat_record = by_id[replies[0].request_id]
    assert chat_record["model_digest"] == f"sha256:{appliance.model_sha256}"
    assert (
        chat_record["response_sha256"]
        == hashlib.sha256("".join(replies[0].lines).encode()).hexdigest()
    )
    assert chat_record["completion_tokens"] == replies[0].json["usage"]["completion_tokens"]
    stream_record = by_id[replies[1].request_id]
    assert stream_record["stream"] is True
    assert stream_record["completion_tokens"] > 0
    # One chain: every record names the hash of the one before it.
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))


def test_a_tampered_audit_log_is_detected(appliance: Appliance) -> None:
    run = appliance.host.run
    intact = run(ADMIN, "--json", "audit", "verify", "--dir", AUDIT_DIR)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    # Tamper with a copy: the live log stays whole for the other tests.
    assert run("cp", "-a", AUDIT_DIR, "/root/audit-copy").returncode == 0
    # The first call's record (the chain opens with the install's key_created events).
    line = next(n for n, record in enumerate(appliance.audit(), 1) if record.get("status") == 200)
    edit = f'sed -i \'{line}s/"status":200/"status":500/\' /root/audit-copy/audit.jsonl'
    assert run("sh", "-c", edit).returncode == 0
    tampered = run(ADMIN, "audit", "verify", "--dir", "/root/audit-copy")
    assert tampered.returncode == 34, tampered.stdout + tampered.stderr
    assert (
        f"audit.jsonl (line {line}): record seq {line - 1}: its content does not match its hash"
        in tampered.stderr
    )


def test_verify_proves_an_audited_round_trip_and_no_route_out(appliance: Appliance) -> None:
    done = appliance.host.run(
        "/opt/appliance/venv/bin/appliance", "--json", "verify", "--egress-target", EGRESS_TARGET
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    for name in (
        "runtime running",
        f"runtime appliance-llamacpp@tiny-llama.service: egress blocked: {EGRESS_TARGET}",
        f"runtime appliance-llamacpp@tiny-llama-b.service: egress blocked: {EGRESS_TARGET}",
        "gateway backend healthy: tiny-llama",
        "gateway backend healthy: tiny-llama-b",
        "gateway completion: tiny-llama",
        "gateway audit log: the call is recorded",
        "gateway audit log: hash chain intact",
    ):
        assert checks[name]["passed"], checks.get(name)
    assert (
        "uid"
        in checks[
            f"runtime appliance-llamacpp@tiny-llama.service: egress blocked: {EGRESS_TARGET}"
        ]["evidence"]
    )


def test_a_keys_reload_while_the_gateway_starts_does_not_leave_it_down(
    appliance: Appliance,
) -> None:
    """An install restarts the gateway and reloads its keys (SIGHUP) one task after the other.
    A SIGHUP that lands while the new process still imports kills it, which systemd counts as
    a clean exit: without RestartForceExitStatus=SIGHUP the gateway stayed down."""
    run = appliance.host.run
    unit = "appliance-gateway.service"
    # Right after the restart the process is still importing (hundreds of milliseconds).
    race = f"systemctl restart {unit} && systemctl kill -s HUP --kill-whom=main {unit}"
    assert run("sh", "-c", race).returncode == 0
    deadline = time.monotonic() + 60
    while True:
        done = run("python3", "-c", CALL, "GET", GATEWAY + "/health/live", "", "")
        if done.returncode == 0 and json.loads(done.stdout)["status"] == 200:
            break
        assert time.monotonic() < deadline, run("systemctl", "status", unit).stdout
        time.sleep(0.2)  # the restart takes under a few seconds: a whole second overshoots it
    assert run("systemctl", "is-active", unit).stdout.strip() == "active"
    models = appliance.call("GET", "/v1/models", appliance.key)
    assert models.status == 200


def test_verify_fails_when_a_runtime_is_down(appliance: Appliance) -> None:
    run = appliance.host.run
    assert run("systemctl", "stop", "appliance-llamacpp@tiny-llama-b.service").returncode == 0
    try:
        done = run(
            "/opt/appliance/venv/bin/appliance",
            "--json",
            "verify",
            "--egress-target",
            EGRESS_TARGET,
        )
        assert done.returncode == 33, done.stdout
        failed = {p["path"] for p in json.loads(done.stdout)["error"]["problems"]}
        assert any("gateway backend healthy: tiny-llama-b" in p for p in failed), failed
    finally:
        run("systemctl", "start", "appliance-llamacpp@tiny-llama-b.service")


def test_rerun_changes_nothing_and_keeps_the_keys(appliance: Appliance) -> None:
    run = appliance.host.run
    keys_before = run("cat", "/etc/appliance/gateway/keys.json").stdout
    again = run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "changed=0" in again.stdout.splitlines()[-2], again.stdout[-1500:]
    assert "shown this once" not in again.stdout
    assert run("cat", "/etc/appliance/gateway/keys.json").stdout == keys_before
    # The operator's key still works.
    assert appliance.call("GET", "/v1/models", appliance.key).status == 200


def test_the_runtime_probe_reports_an_answer_when_there_is_one(appliance: Appliance) -> None:
    # The probe is not a constant "no answer": pointed (wrongly) at an address that answers,
    # the first runtime's own port on loopback (plain HTTP; the gateway's port is HTTPS now),
    # every runtime's check fails with what it saw.
    inside = "http://127.0.0.1:8081/health"
    done = appliance.host.run(
        "/opt/appliance/venv/bin/appliance", "--json", "verify", "--egress-target", inside
    )
    assert done.returncode == 33, done.stdout
    failed = {p["path"]: p["message"] for p in json.loads(done.stdout)["error"]["problems"]}
    unit = f"localhost: runtime appliance-llamacpp@tiny-llama.service: egress blocked: {inside}"
    assert "answered HTTP 200" in failed[unit], failed


def test_another_release_keeps_the_keys_and_the_audit_chain(appliance: Appliance) -> None:
    """Keys and the audit log are data, outside ``<root>/releases``: an install of another
    release keeps both. Last in this module: it moves the host to that release."""
    run = appliance.host.run
    before = appliance.call("POST", "/v1/chat/completions", appliance.key, chat("tiny-llama"))
    assert before.status == 200, before.lines
    keys = run("cat", "/etc/appliance/gateway/keys.json").stdout
    (appliance.root / "next.yaml").write_text(SPEC.replace("2026.11.27", "2026.11.28"))
    build_bundle(
        BuildOptions(
            spec_path=appliance.root / "next.yaml",
            output=appliance.root / "next",
            sign_key=appliance.root / "key",
            cache=Path.home() / ".cache" / "appliance",
        )
    )
    copy = ["docker", "cp", str(appliance.root / "next"), f"{appliance.host.name}:/srv/next"]
    subprocess.run(copy, check=True, capture_output=True)
    done = run("/srv/next/install.sh", "--pubkey", "/srv/key.pub")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "shown this once" not in done.stdout
    assert run("readlink", "/opt/appliance/current").stdout.strip() == "releases/2026.11.28"
    assert run("cat", "/etc/appliance/gateway/keys.json").stdout == keys
    # The operator's key works on the new release, and one chain holds calls from both.
    after = appliance.call("POST", "/v1/chat/completions", appliance.key, chat("tiny-llama"))
    assert after.status == 200, after.lines
    ids = [record.get("request_id") for record in appliance.audit()]  # key events have none
    assert ids.index(before.request_id) < ids.index(after.request_id)
    verified = run(ADMIN, "--json", "audit", "verify", "--dir", AUDIT_DIR)
    assert verified.returncode == 0, verified.stdout + verified.stderr
