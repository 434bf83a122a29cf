"""Upgrades on a real (containerised, air-gapped) host: a no-change upgrade against the first
install, and a one-model upgrade carried by a delta bundle. Prints figures and ratios; asserts
nothing.

An upgrade here is the whole transition (appliance.install.upgrade): open the bundle, plan,
stage it (files of the running release linked), run the play's roles that the plan changes
(none for the no-change upgrade; the runtime, the gateway and preflight for the added model),
verify the new release (skipping the evidence the play could not change) and commit. The first
install does not verify, so ``appliance verify`` alone (which checks everything) is timed as
well, to show the upgrade's own share. The load average is printed: on a shared machine the
figures move with it. Needs the test harness (tests/harness/setup.sh) and, to build the
bundles once, Debian's archive and PyPI.

    .venv/bin/python benchmarks/upgrade.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import tiny_model  # noqa: E402

from appliance.build import BuildOptions, build_bundle  # noqa: E402
from appliance.bundle import layout  # noqa: E402
from appliance.bundle.signing import keygen  # noqa: E402
from tests.fixtures.hosts import Host, harness_image, start_host  # noqa: E402
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text  # noqa: E402

EGRESS_TARGET = "http://198.19.255.10/"  # lab range: leads nowhere
DRIVER = "/srv/upgrade_driver.py"
PYTHON = "/opt/appliance/venv/bin/python"
APPLIANCE = "/opt/appliance/venv/bin/appliance"
MODEL = {"name": "tiny-llama", "source": "models/tiny-llama.gguf", "format": "gguf"}
ADDED = {"name": "tiny-llama-c", "source": "models/tiny-llama-c.gguf", "format": "gguf"}


def build(root: Path, label: str, sequence: int, models: list[Any], base: str | None) -> None:
    spec: dict[str, Any] = yaml.safe_load(
        spec_text(
            "upgrade-bench",
            label,
            stack=SYSTEMD_LLAMACPP,
            packages=["nftables", "python3-apt", "libgomp1"],
            models=models,
            wheels={"llamacpp": ["xllamacpp==2026.10.11549"]},
        )
    )
    spec["sequence"] = sequence
    (root / f"{label}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    build_bundle(
        BuildOptions(
            root / f"{label}.yaml",
            root / label,
            root / "key",
            cache=Path.home() / ".cache" / "appliance",
            base=None if base is None else root / base / layout.MANIFEST,
        )
    )


def timed(host: Host, *command: str) -> float:
    started = time.perf_counter()
    done = host.run(*command)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-4000:] + done.stderr[-4000:])
    last = done.stdout.strip().splitlines()[-1]
    if last.startswith("{") and json.loads(last).get("outcome") != "committed":
        raise RuntimeError(done.stdout[-4000:])
    return seconds


def upgrade(host: Host, label: str) -> float:
    return timed(host, PYTHON, DRIVER, f"/srv/{label}", "/srv/key.pub", EGRESS_TARGET)


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    image = harness_image()
    if image is None:
        sys.exit("run tests/harness/setup.sh first")
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-", dir=ROOT) as tmp:
        root = Path(tmp)
        tiny_model.main(["gguf", str(root / "models" / "tiny-llama.gguf")])
        tiny_model.SEED += 1  # another model: other weights, other digest
        tiny_model.main(["gguf", str(root / "models" / "tiny-llama-c.gguf")])
        keygen(root / "key", "benchmark")
        build(root, "v1", 1, [MODEL], None)
        build(root, "v2", 2, [MODEL], None)  # the same content: a no-change upgrade
        build(root, "v3", 3, [MODEL, ADDED], "v2")  # a delta that adds one model
        mounts = {root / label: f"/srv/{label}" for label in ("v1", "v2", "v3")}
        mounts[root / "key.pub"] = "/srv/key.pub"
        mounts[ROOT / "tests" / "fixtures" / "upgrade_driver.py"] = DRIVER
        host = start_host(image, mounts)
        try:
            started_load = os.getloadavg()[0]
            first = timed(host, "/srv/v1/install.sh", "--pubkey", "/srv/key.pub")
            check = timed(host, APPLIANCE, "verify", "--egress-target", EGRESS_TARGET)
            same = upgrade(host, "v2")
            delta = upgrade(host, "v3")
        finally:
            host.remove()
        load = f"{started_load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        print(f"single box, air-gapped, one llama.cpp model (1-minute load average {load}):")
        print(f"  first install (install.sh, no verify)   {first:6.1f} s")
        print(f"  appliance verify alone                  {check:6.1f} s")
        print(
            f"  no-change upgrade (apply+verify+commit) {same:6.1f} s = {same / first:.0%} of the "
            f"first install (goal <= 30%); less verify: {(same - check) / first:.0%}"
        )
        print(
            f"  one-model upgrade by delta              {delta:6.1f} s = {delta / first:.0%} "
            f"of the first install; delta bundle {size(root / 'v3') / 1e6:.1f} MB against "
            f"{size(root / 'v2') / 1e6:.1f} MB full"
        )


if __name__ == "__main__":
    main()
