"""The one-command demo: from a fresh Debian 12 machine to an audited chat completion.

    make demo          (as root; tests/harness/setup.sh has prepared the machine)

1. generates the tiny GGUF model (deterministic: same bytes on every machine),
2. builds the demo bundle from examples/demo.yaml (Debian packages, the wheelhouse with
   llama.cpp's server, the model), signed with a demo key,
3. boots an air-gapped systemd host (no network at all) and installs the bundle with the
   bundle's own install.sh, as an operator would,
4. runs appliance verify on it (egress probed against a lab address that leads nowhere),
5. sends a chat completion through the gateway with the operator key install printed once,
   and prints the answer and its audit record.

The host stays up for you to look around; the last lines say how to reach it and remove it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fixtures.debian_mirror import NoMirrorError, debian_mirror  # noqa: E402
from tests.fixtures.hosts import Host, harness_image, start_host  # noqa: E402

BUILD = ROOT / "build"
DEMO = BUILD / "demo"
HOST_NAME = "appliance-demo"
# A lab address standing in for "the internet": nothing answers there, and the firewall must
# drop the probe before it leaves. Never a real outside address.
EGRESS_TARGET = "http://198.19.255.10/"
# The gateway serves HTTPS with a certificate from the appliance's site CA, which the gateway
# role keeps beside its config for clients on the host.
CHAT = """
import json, os, ssl, urllib.request
context = ssl.create_default_context(cafile="/etc/appliance/gateway/tls/ca.crt")
request = urllib.request.Request(
    "https://127.0.0.1:8000/v1/chat/completions",
    data=json.dumps({"model": "tiny-llama", "max_tokens": 16,
                     "messages": [{"role": "user", "content": "Hello from the demo!"}]}).encode(),
    headers={"Authorization": "Bearer " + os.environ["APPLIANCE_KEY"],
             "Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=120, context=context) as response:
    print(json.dumps({"request_id": response.headers["X-Request-Id"],
                      "answer": json.load(response)}))
"""


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*command: str | Path) -> None:
    subprocess.run([str(c) for c in command], check=True)


def appliance(*args: str | Path) -> None:
    run(ROOT / ".venv" / "bin" / "appliance", *args)


def in_host(host: Host, *command: str) -> str:
    done = host.run(*command)
    if done.returncode != 0:
        sys.exit(
            f"demo: {' '.join(command[:3])} failed on {host.name}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def main() -> None:
    image = harness_image()
    if image is None:
        sys.exit("demo: no test-host image; run tests/harness/setup.sh first (make demo does)")
    try:
        # examples/demo.yaml reads ${DEBIAN_MIRROR}; build-bundle inherits it.
        os.environ["DEBIAN_MIRROR"] = debian_mirror()
    except NoMirrorError as error:
        sys.exit(f"demo: {error}")
    DEMO.mkdir(parents=True, exist_ok=True)

    step("generating the tiny model (deterministic GGUF)")
    run(
        ROOT / ".venv" / "bin" / "python",
        ROOT / "examples" / "tiny_model.py",
        "gguf",
        BUILD / "models" / "tiny-llama.gguf",
    )

    step("building the signed demo bundle from examples/demo.yaml")
    key = DEMO / "demo-key"
    if not key.exists():
        appliance("keygen", "-o", key, "--comment", "appliance demo")
    appliance(
        "build-bundle",
        ROOT / "examples" / "demo.yaml",
        "-o",
        DEMO / "bundle",
        "--sign-key",
        key,
        "--cache",
        ROOT / ".cache" / "bundle-cache",
        "--force",
    )

    step(f"booting {HOST_NAME}: a systemd host with no network at all")
    subprocess.run(["docker", "rm", "-f", HOST_NAME], capture_output=True, check=False)
    host = start_host(
        image,
        {DEMO / "bundle": "/srv/bundle", key.with_suffix(".pub"): "/srv/key.pub"},
        name=HOST_NAME,
    )

    step("installing with the bundle's own install.sh (verifies first, then Ansible, offline)")
    started = time.monotonic()
    done = subprocess.run(
        ["docker", "exec", HOST_NAME, "/srv/bundle/install.sh", "--pubkey", "/srv/key.pub"],
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    if done.returncode != 0:
        sys.exit(f"demo: install failed (exit {done.returncode})")
    found = re.search(r"\(shown this once, store it now\): (\S+)", done.stdout)
    if not found:
        sys.exit("demo: install did not print the operator's API key")
    api_key = found.group(1)
    print(f"installed in {time.monotonic() - started:.0f} s")

    step("appliance verify: sealed, healthy, and a real audited round trip")
    print(
        in_host(
            host, "/opt/appliance/venv/bin/appliance", "verify", "--egress-target", EGRESS_TARGET
        )
    )

    step("a chat completion through the gateway, with the operator key")
    # The key goes in the environment, not on a command line that ps would show.
    asked = subprocess.run(
        ["docker", "exec", "-e", "APPLIANCE_KEY", HOST_NAME, "python3", "-c", CHAT],
        env={**os.environ, "APPLIANCE_KEY": api_key},
        capture_output=True,
        text=True,
        check=False,
    )
    if asked.returncode != 0:
        sys.exit(f"demo: the chat completion failed:\n{asked.stdout}{asked.stderr}")
    reply = json.loads(asked.stdout)
    print(json.dumps(reply["answer"], indent=2))
    print(
        "(a tiny random model: the words are noise; the structure, token counts and audit "
        "trail are real)"
    )

    step("its audit record (hash-chained to the one before)")
    admin = ("/opt/appliance/gateway/bin/appliance", "audit")
    where = ("--dir", "/var/log/appliance/audit")
    shown = in_host(host, *admin, "show", *where, "--request-id", reply["request_id"], "--json")
    print(json.dumps(json.loads(shown)["records"][0], indent=2))
    print(in_host(host, *admin, "verify", *where))

    print(
        f"\nThe appliance runs in the container {HOST_NAME}. Look around with\n"
        f"  docker exec -it {HOST_NAME} bash\n"
        f"and remove it with\n  docker rm -f {HOST_NAME}"
    )


if __name__ == "__main__":
    main()
