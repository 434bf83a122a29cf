"""appliance install on real (containerised, air-gapped) hosts: first run vs re-run, and one
GPU node vs three from one depot. Prints figures and ratios; asserts nothing.

Needs the test harness (tests/harness/setup.sh) and, to build the bundle once, Debian's archive
and PyPI.

    .venv/bin/python benchmarks/install.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.build import BuildOptions, build_bundle  # noqa: E402
from appliance.bundle.signing import keygen  # noqa: E402
from tests.fixtures.hosts import Host, harness_image, lab_inventory, start_host  # noqa: E402
from tests.fixtures.multihost import multihost_lab  # noqa: E402
from tests.fixtures.specs import SYSTEMD_LLAMACPP, spec_text  # noqa: E402


def install(host: Host, *args: str) -> float:
    started = time.perf_counter()
    result = host.run("/srv/bundle/install.sh", "--pubkey", "/srv/key.pub", *args)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    print("   ", result.stdout.splitlines()[-2])
    return time.perf_counter() - started


def fleet(root: Path, nodes: int) -> float:
    addresses = {f"gpu-{i}": f"198.18.30.{11 + i}" for i in range(nodes)}
    (root / "inventories" / "bench.yml").write_text(lab_inventory("198.18.30.10", addresses))
    with multihost_lab("198.18.30.0/24", "198.18.30.10", addresses, _mounts(root)) as lab:
        return install(
            lab.depot, "--inventory", "/srv/inventories/bench.yml", "--internal-cidr",
            "198.18.30.0/24",
        )  # fmt: skip


def _mounts(root: Path) -> dict[Path, str]:
    return {
        root / "bundle": "/srv/bundle",
        root / "key.pub": "/srv/key.pub",
        root / "inventories": "/srv/inventories",
    }


def main() -> None:
    image = harness_image()
    if image is None:
        sys.exit("run tests/harness/setup.sh first")
    with tempfile.TemporaryDirectory(prefix="bench-install-", dir=ROOT) as tmp:
        root = Path(tmp)
        (root / "inventories").mkdir()
        (root / "spec.yaml").write_text(
            spec_text(
                "install-test",
                "2026.11.7",
                stack=SYSTEMD_LLAMACPP,
                packages=["jq", "nftables", "python3-apt", "nginx-light"],
            )
        )
        keygen(root / "key", "benchmark")
        build_bundle(
            BuildOptions(
                root / "spec.yaml",
                root / "bundle",
                root / "key",
                cache=Path.home() / ".cache" / "appliance",
            )
        )

        print("single box, air-gapped:")
        host = start_host(image, _mounts(root))
        try:
            first = install(host)
            again = install(host)
        finally:
            host.remove()
        print(
            f"  first install {first:5.1f} s; re-run {again:5.1f} s = {again / first:.0%} of "
            "the first (goal <= 30%, changed=0)"
        )

        print("one depot, GPU nodes over SSH:")
        one = fleet(root, 1)
        three = fleet(root, 3)
        print(f"  1 node {one:5.1f} s; 3 nodes {three:5.1f} s = {three / one:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
