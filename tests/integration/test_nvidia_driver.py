"""The nvidia_driver role on an air-gapped systemd test host, from a bundle that carries
Debian's real driver set (tests/fixtures/gpu_bundles.py): the bundle's repository is the host's
only package source and the host has no network at all.

What a container cannot do, and so what these tests stop short of: load a kernel module (the
module is built for a named kernel ABI the host does not run, and the role stops at the reboot
phase), reboot, or touch UEFI variables (mokutil). The GPUs are a sysfs PCI tree made from the
real H200 capture (tests/fixtures/gpu), handed to the role's facts in place of /sys.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gpu_bundles import DRIVER_VERSION, KERNEL_ABI, driver_bundle
from tests.fixtures.gpu_hosts import (
    GPU_FIXTURES,
    H200,
    h200_pci_devices,
    h200_proc_version,
    write_sysfs,
)
from tests.fixtures.hosts import Host, start_host
from tests.fixtures.roles import converge

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.network]

# An H100 SXM's PCI ID (10de:2330), at the captured H200's bus address: a GPU Debian's 535
# branch lists as supported (its nvidia-detect nvidia.ids), unlike the H200 (10de:2335).
H100 = [(bus, "0x2330", klass) for bus, _device, klass in h200_pci_devices()]
SIGNER = "appliance module signing key depot-1"
SITE = """\
- name: Make the bundle's repository the only package source
  hosts: all
  gather_facts: false
  roles: [local_repo]

- name: Install the NVIDIA driver
  hosts: all
  gather_facts: false
  roles: [nvidia_driver]
"""
NVIDIA_PACKAGE = re.compile(r"^(nvidia-|libnvidia-|libcuda|firmware-nvidia-)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return driver_bundle(tmp_path_factory.mktemp("gpu-driver"))


def appliance_nvidia(bundle: Path) -> dict[str, Any]:
    """What install passes from the manifest's nvidia section, read here from the bundle's
    own package list (every NVIDIA package at the version the repository carries)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    versions = {
        c["name"].split(":")[0]: c["version"] for c in manifest["components"] if c["kind"] == "deb"
    }
    pinned = {name: version for name, version in versions.items() if NVIDIA_PACKAGE.match(name)}
    headers = f"linux-headers-{KERNEL_ABI}"
    return {
        "driver": {
            "source": "debian",
            "version": DRIVER_VERSION,
            "branch": DRIVER_VERSION.split(".")[0],
            "modules": "proprietary",
            "dkms_package": "nvidia-kernel-dkms",
            "packages": pinned,
        },
        "kernel_abis": [{"abi": KERNEL_ABI, "headers": headers, "version": versions[headers]}],
        "install": [*manifest["packages"]],
    }


def start(test_image: str, bundle: Path, devices: list[tuple[str, str, str]], tmp: Path) -> Host:
    host = start_host(test_image, mounts={bundle: "/srv/bundle"})
    pci = write_sysfs(tmp / "pci", devices)
    subprocess.run(["docker", "cp", str(pci), f"{host.name}:/srv/pci"], check=True)
    return host


def play(
    root: Path, host: Host, bundle: Path, *options: str, **extra: Any
) -> subprocess.CompletedProcess[str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "site.yml").write_text(SITE)
    extravars = {
        "appliance_bundle_dir": "/srv/bundle",
        "appliance_repo_key": str(bundle / "repo" / "archive-key.gpg"),
        "appliance_nvidia": appliance_nvidia(bundle),
        "gpu_facts_pci_devices": "/srv/pci",
        "nvidia_driver_kernel_abi": KERNEL_ABI,
        **extra,
    }
    (root / "extravars.json").write_text(json.dumps(extravars))
    return converge(root, host.name, *options)


def recap(output: str) -> dict[str, int]:
    found = re.search(r"depot-1\s+:\s+(.*)$", output, re.MULTILINE)
    assert found, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}


@pytest.fixture
def host(test_image: str, bundle: Path, tmp_path: Path) -> Iterator[Host]:
    host = start(test_image, bundle, H100, tmp_path)
    yield host
    host.remove()


def test_an_h200_is_refused_by_debians_535_branch(
    test_image: str, bundle: Path, tmp_path: Path
) -> None:
    """The captured H200's PCI ID against the supported-GPU list of the bundle's real driver."""
    host = start(test_image, bundle, h200_pci_devices(), tmp_path)
    try:
        done = play(tmp_path / "play", host, bundle)
        assert done.returncode != 0
        assert (
            "depot-1: GPU 0000:00:06.0 (PCI ID 10de:2335) is not among the GPUs driver "
            "535.261.03 supports (nvidia-detect:/usr/share/nvidia/nvidia.ids)"
        ) in " ".join(done.stdout.split()), done.stdout[-3000:]
        # Refused before anything of the driver was installed.
        assert host.run("dpkg-query", "-W", "nvidia-kernel-dkms").returncode != 0
    finally:
        host.remove()


def test_a_host_running_another_driver_gets_a_plan_not_a_replacement(
    host: Host, bundle: Path, tmp_path: Path
) -> None:
    """The host answers as the captured machine does (driver 580.159.04 loaded, nvidia-smi's
    report): the bundle's 535.261.03 is refused with what replacing would do."""
    (tmp_path / "version").write_text(h200_proc_version())
    for source, target in (
        (GPU_FIXTURES / "nvidia-smi", "/usr/local/bin/nvidia-smi"),
        (H200 / "nvidia-smi-q.xml", "/srv/nvidia-smi-q.xml"),
        (tmp_path / "version", "/srv/nvidia-version"),
    ):
        subprocess.run(["docker", "cp", str(source), f"{host.name}:{target}"], check=True)
    host.run("sh", "-c", "echo XML=/srv/nvidia-smi-q.xml > /etc/nvidia-smi-standin")
    done = play(
        tmp_path / "play", host, bundle, gpu_facts_driver_version_file="/srv/nvidia-version"
    )
    text = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert (
        f"depot-1 runs NVIDIA driver 580.159.04. The bundle carries {DRIVER_VERSION}. Replacing it "
        "would: stop the runtimes; install "
    ) in text, done.stdout[-3000:]
    assert (
        "To do it, run the install again with nvidia_driver_replace set to true "
        "(appliance install --replace-driver)."
    ) in text
    assert host.run("test", "-e", "/etc/apt/preferences.d/appliance-nvidia.pref").returncode != 0


def test_missing_headers_for_the_running_kernel_are_named(
    host: Host, bundle: Path, tmp_path: Path
) -> None:
    done = play(tmp_path / "play", host, bundle, nvidia_driver_kernel_abi="")
    running = host.run("uname", "-r").stdout.strip()
    text = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert (
        f"the NVIDIA module must be built for kernel {running} (the running kernel), but the "
        f"bundle lacks linux-headers-{running}; it carries headers for {KERNEL_ABI}."
    ) in text, done.stdout[-3000:]


@pytest.mark.dkms
@pytest.mark.skipif(
    os.environ.get("APPLIANCE_TEST_DKMS") != "1",
    reason="opt-in (minutes on 2 cores): APPLIANCE_TEST_DKMS=1 compiles the NVIDIA module",
)
def test_dkms_builds_the_signed_module_for_a_named_abi_offline(
    host: Host, bundle: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    first = play(tmp_path / "first", host, bundle, nvidia_driver_module_signing=True)
    minutes = (time.monotonic() - started) / 60
    text = " ".join(first.stdout.split())
    # The container cannot load the module: the install stops at the reboot phase, saying why.
    assert first.returncode != 0, first.stdout[-3000:]
    assert (
        f"depot-1 must reboot before the NVIDIA driver {DRIVER_VERSION} can run: the NVIDIA "
        f"module {DRIVER_VERSION} is not loaded; the module is built for kernel {KERNEL_ABI}"
    ) in text, first.stdout[-3000:]
    print(f"first run (install + DKMS build): {minutes:.1f} min")

    vermagic = host.run("modinfo", "-k", KERNEL_ABI, "-F", "vermagic", "nvidia-current")
    assert vermagic.stdout.startswith(f"{KERNEL_ABI} SMP "), vermagic
    signer = host.run("modinfo", "-k", KERNEL_ABI, "-F", "signer", "nvidia-current")
    assert signer.stdout.strip() == SIGNER
    # The signature's key is the certificate made on the host, and its private half was never
    # logged.
    serial = host.run("openssl", "x509", "-inform", "DER", "-in", "/var/lib/dkms/mok.pub",
                      "-noout", "-serial").stdout.strip().split("=")[1]  # fmt: skip
    sig_key = host.run("modinfo", "-k", KERNEL_ABI, "-F", "sig_key", "nvidia-current").stdout
    assert sig_key.strip().replace(":", "").lstrip("0") == serial.lstrip("0")
    assert host.run("stat", "-c", "%a", "/var/lib/dkms/mok.key").stdout.strip() == "600"
    key = host.run("cat", "/var/lib/dkms/mok.key").stdout
    body = "".join(key.splitlines()[1:3])
    assert body and body not in first.stdout + first.stderr

    state = json.loads(host.run("cat", "/var/lib/appliance/nvidia-driver.json").stdout)
    assert state["phase"] == "reboot"
    assert state["kernel_abi"] == KERNEL_ABI
    blacklist = host.run("cat", "/etc/modprobe.d/appliance-blacklist-nouveau.conf").stdout
    assert "blacklist nouveau" in blacklist

    # A re-run (after the reboot that never comes here) changes nothing and stops the same way.
    second = play(tmp_path / "second", host, bundle, nvidia_driver_module_signing=True)
    assert second.returncode != 0
    assert recap(second.stdout)["changed"] == 0, second.stdout[-3000:]
    assert "must reboot before the NVIDIA driver" in second.stdout


def test_pins_and_holds_keep_the_driver_against_a_newer_version(
    host: Host, bundle: Path, tmp_path: Path
) -> None:
    """apt sees a newer nvidia-smi in a second repository, and neither an upgrade nor the pin
    lets it in. The module's compile is left out (the dkms test covers it): the module's source
    is not installed and the role's build step is skipped by its tag."""
    nvidia = appliance_nvidia(bundle)
    nvidia["install"] = ["nvidia-smi"]
    done = play(tmp_path / "play", host, bundle, "--skip-tags", "nvidia_driver_build",
                appliance_nvidia=nvidia)  # fmt: skip
    assert "must reboot before the NVIDIA driver" in done.stdout, done.stdout[-3000:]
    pinned = nvidia["driver"]["packages"]["nvidia-smi"]
    policy = host.run("apt-cache", "policy", "nvidia-smi").stdout
    assert f"*** {pinned} 1001" in policy

    newer = "535.309.01-0+deb12u1"
    script = f"""set -e
mkdir -p /srv/newer/pkg/DEBIAN && cd /srv/newer
cat > pkg/DEBIAN/control <<EOF
Package: nvidia-smi
Version: {newer}
Architecture: amd64
Maintainer: appliance tests <dev@appliance.invalid>
Description: a newer nvidia-smi (empty), as a later apt source could offer
EOF
dpkg-deb -b pkg nvidia-smi.deb >/dev/null && rm -r pkg
{{ dpkg-deb -f nvidia-smi.deb; echo "Filename: ./nvidia-smi.deb"
  echo "Size: $(stat -c %s nvidia-smi.deb)"
  echo "SHA256: $(sha256sum < nvidia-smi.deb | cut -d' ' -f1)"
}} > Packages
echo 'deb [trusted=yes] file:/srv/newer ./' > /etc/apt/sources.list.d/newer.list
apt-get update -q=2
"""
    made = host.run("bash", "-c", script)
    assert made.returncode == 0, made.stderr
    policy = host.run("apt-cache", "policy", "nvidia-smi").stdout
    assert f"{newer} 500" in " ".join(policy.split()), policy
    assert f"Candidate: {pinned}" in policy
    held = host.run("apt-mark", "showhold").stdout.split()
    assert {"nvidia-smi", f"linux-headers-{KERNEL_ABI}"} <= set(held)
    upgrade = host.run("apt-get", "upgrade", "-y")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "0 upgraded, 0 newly installed" in upgrade.stdout
    assert host.run("dpkg-query", "-W", "-f=${Version}", "nvidia-smi").stdout == pinned
