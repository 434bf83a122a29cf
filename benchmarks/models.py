"""A bundle with a multi-GB hf:// model, served by the loopback hub stand-in
(tests/fixtures/hub.py) in a separate process, the weights redirected to its "CDN" port.

  1. build throughput: the hf fetch alone, and a whole build-bundle, vs `curl -L -o` of the
     same bytes;
  2. verify throughput: verify-bundle vs `openssl dgst -sha256` over the same files (warm page
     cache) and vs a sequential `dd` read (cold: drop_caches, root only);
  3. peak RSS of the hf fetch and of build-bundle, for a 256 MiB and a --size model (must stay
     flat);
  4. extra disk: peak bytes used on the filesystem during the build / the bundle's size.
Prints figures and ratios; asserts nothing. Not part of the test suite. The installer's wheels
come from ~/.cache/appliance (hard-linked into a private cache), or from PyPI.

    .venv/bin/python benchmarks/models.py [--size 2G]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.bundle import layout  # noqa: E402
from appliance.bundle.parts import parse_size  # noqa: E402
from appliance.bundle.verify import verify_dir  # noqa: E402
from benchmarks.common import drop_caches, rate, run, timed, write_random  # noqa: E402

APPLIANCE = [sys.executable, "-m", "appliance", "-q"]
REPO = "bench/synthetic"
SMALL = 256 << 20

# The hf fetch path alone, in a process of its own so its peak RSS is its own.
FETCH_ONLY = """
import sys
from pathlib import Path
from appliance.bundle.store import BlobStore
from appliance.fetchers.download import Fetcher
from appliance.fetchers.hf import fetch_hf_model
from appliance.progress import NullProgress
from appliance.spec.models import HuggingFaceModel
model = HuggingFaceModel(name="m", source="hf://%s", revision=sys.argv[1], include=[sys.argv[2]])
fetch_hf_model(model, Fetcher(BlobStore(Path(sys.argv[3])), None, NullProgress()))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_hub(root: Path, files: list[Path]) -> tuple[subprocess.Popen[str], str, str]:
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.fixtures.hub", "--port", str(port), "--repo", REPO),
            *("--root", str(root / "hub-store"), *map(str, files)),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert server.stdout is not None
    commit = server.stdout.readline().strip()  # printed once the digests are known
    return server, f"http://127.0.0.1:{port}", commit


def measured(command: list[str], env: dict[str, str], watch: Path) -> tuple[float, int, int]:
    """(seconds, peak RSS KiB of the process and its children, peak bytes used on watch's
    filesystem while it ran)."""
    start_free = shutil.disk_usage(watch).free
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], start_free - shutil.disk_usage(watch).free)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]} failed with {process.returncode}")
    return seconds, usage.ru_maxrss, peak[0]


def private_cache(target: Path) -> None:
    """The installer's wheels without PyPI: hard links to the user's cache (read-only blobs)."""
    home = Path.home() / ".cache" / "appliance"
    target.mkdir()
    if (home / "blobs").is_dir():
        subprocess.run(["cp", "-al", str(home / "blobs"), str(target / "blobs")], check=True)
    for name in ("wheel-resolutions", "own-wheel"):
        if (home / name).is_dir():
            shutil.copytree(home / name, target / name)


def build(
    root: Path, name: str, commit: str, pick: str, env: dict[str, str]
) -> tuple[float, int, int, int]:
    """(seconds, peak RSS KiB, peak extra disk, bundle bytes) of build-bundle."""
    spec = root / f"{name}.yaml"
    spec.write_text(
        f"version: 1\nname: bench-models\nrelease: '{name}'\n"
        "targets: [{os: debian-12, arch: amd64}]\n"
        "stack: {orchestrator: systemd, registry: none}\n"
        f"models: [{{name: synthetic, source: 'hf://{REPO}', revision: '{commit}', "
        f"include: ['{pick}']}}]\n"
    )
    command = [*APPLIANCE, "build-bundle", str(spec), "-o", str(root / name)]
    command += ["--sign-key", str(root / "key"), "--cache", str(root / "cache")]
    seconds, rss, disk = measured(command, env, root)
    size = sum(p.stat().st_size for p in (root / name).rglob("*") if p.is_file())
    return seconds, rss, disk, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="2G", help="size of the big model file (e.g. 2G)")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="bench-models-", dir=ROOT) as tmp:
        root = Path(tmp)
        big, small = root / "upstream" / "big.safetensors", root / "upstream" / "small.safetensors"
        write_random(big, size)
        write_random(small, SMALL)
        server, endpoint, commit = start_hub(root, [big, small])
        env = {**os.environ, "HF_ENDPOINT": endpoint, "PYTHONPATH": str(ROOT)}
        env.pop("HF_TOKEN", None)
        url = f"{endpoint}/{REPO}/resolve/{commit}/big.safetensors"
        print(f"model: {size / 1e9:.2f} GB file, hub stand-in on loopback (separate process)")
        try:
            # 1. build throughput
            curl = timed(
                lambda: subprocess.run(
                    ["curl", "-sSL", "-o", str(root / "curl.out"), url], check=True
                )
            )
            (root / "curl.out").unlink()
            fetch_rss = {}
            for pick, label in (("small.safetensors", SMALL), ("big.safetensors", size)):
                store = root / f"fetch-{pick}"
                seconds, rss, _ = measured(
                    [sys.executable, "-c", FETCH_ONLY % REPO, commit, pick, str(store)], env, root
                )
                fetch_rss[label] = rss
                if label == size:
                    fetch_seconds = seconds
                shutil.rmtree(store)
            subprocess.run([*APPLIANCE, "keygen", "-o", str(root / "key")], check=True, cwd=ROOT)
            private_cache(root / "cache")
            b_small = build(root, "small", commit, "small.safetensors", env)
            b_big = build(root, "big", commit, "big.safetensors", env)
        finally:
            server.terminate()
            server.wait()
        print("build:")
        print(f"  curl -L -o              {curl:6.2f} s  {rate(size, curl)}")
        print(
            f"  hf fetch alone          {fetch_seconds:6.2f} s  {rate(size, fetch_seconds)}  "
            f"{fetch_seconds / curl:.2f}x curl's time"
        )
        print(
            f"  build-bundle (whole)    {b_big[0]:6.2f} s  {rate(size, b_big[0])}  "
            f"{b_big[0] / curl:.2f}x curl's time (wheels, Ansible content, signing included; "
            f"the same build with a {SMALL >> 20} MiB model took {b_small[0]:.2f} s)"
        )
        print("peak RSS:")
        print(
            f"  hf fetch alone          {fetch_rss[SMALL] / 1024:6.0f} MiB for {SMALL >> 20} MiB, "
            f"{fetch_rss[size] / 1024:.0f} MiB for {size >> 20} MiB "
            f"({fetch_rss[size] / fetch_rss[SMALL]:.2f}x for {size / SMALL:.0f}x the data)"
        )
        print(
            f"  build-bundle            {b_small[1] / 1024:6.0f} MiB for {SMALL >> 20} MiB, "
            f"{b_big[1] / 1024:.0f} MiB for {size >> 20} MiB "
            f"({b_big[1] / b_small[1]:.2f}x; includes pip, run by the wheel resolver)"
        )
        print("disk:")
        print(
            f"  peak extra during build {b_big[2] / 1e9:6.2f} GB for a {b_big[3] / 1e9:.2f} GB "
            f"bundle = {b_big[2] / b_big[3]:.2f}x (the bundle's wheels are hard links from the "
            "cache; the model is written once, into the cache, and linked)"
        )

        # 2. verify throughput, over the big bundle's shipped files
        bundle, pubkey = root / "big", root / "key.pub"
        manifest = json.loads((bundle / layout.MANIFEST).read_bytes())
        names = sorted({str(bundle / f["path"]) for f in manifest["files"]})
        total = sum(Path(n).stat().st_size for n in names)
        run("cat", *names)  # warm the page cache
        openssl = min(run("openssl", "dgst", "-sha256", *names) for _ in range(2))
        warm = min(timed(lambda: verify_dir(bundle, pubkey)) for _ in range(2))
        print(f"verify ({len(names)} files, {total / 1e9:.2f} GB):")
        print(f"  warm: openssl dgst -sha256 {openssl:6.2f} s  {rate(total, openssl)}")
        print(
            f"  warm: verify-bundle        {warm:6.2f} s  {rate(total, warm)}  "
            f"{openssl / warm:.2f}x openssl's speed"
        )
        if not drop_caches():
            print("  cold: not measured (cannot write /proc/sys/vm/drop_caches)")
            return
        dd = timed(lambda: [run("dd", f"if={n}", "of=/dev/null", "bs=4M") for n in names])
        drop_caches()
        cold = timed(lambda: verify_dir(bundle, pubkey))
        print(f"  cold: dd sequential read   {dd:6.2f} s  {rate(total, dd)}")
        print(
            f"  cold: verify-bundle        {cold:6.2f} s  {rate(total, cold)}  "
            f"{dd / cold:.2f}x dd's speed"
        )


if __name__ == "__main__":
    main()
