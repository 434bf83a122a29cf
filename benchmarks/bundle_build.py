"""build-bundle speed, disk and memory, against a loopback HTTP upstream.

  1. files fetcher alone vs `curl -o` of the same files (hashing while downloading must cost
     almost nothing; goal <= 1.1x curl's wall time);
  2. full build-bundle, cold (empty cache) vs a rebuild of the unchanged spec (goal <= 5%;
     the median of five rebuilds, as one run on a shared machine can land on a busy moment);
  3. peak extra disk during the cold build vs the bundle's size (goal <= 1.05x), sampled as
     the blocks allocated under the benchmark's directory (cache, output, staging and the
     build's TMPDIR; each inode once), so other work on a shared machine does not count;
  4. peak RSS of build-bundle for two bundle sizes (must stay flat as the bundle grows).
Prints figures and ratios; asserts nothing. Needs PyPI for the installer wheels.

    .venv/bin/python benchmarks/bundle_build.py [--files 8] [--mib 128]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.bundle.store import BlobStore  # noqa: E402
from appliance.fetchers.download import Fetcher, Wanted  # noqa: E402
from appliance.progress import NullProgress  # noqa: E402
from benchmarks.common import rate, timed, write_random  # noqa: E402

APPLIANCE = [sys.executable, "-m", "appliance", "-q"]


def serve(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A separate process, like a real upstream: it must not share this process's GIL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "-d",
            str(directory),
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                return server, port
        time.sleep(0.05)
    raise RuntimeError("upstream server did not start")


def make_upstream(root: Path, files: int, size: int) -> list[tuple[str, str]]:
    out = []
    for index in range(files):
        path = root / f"artifact-{size}-{index}.bin"
        write_random(path, size)
        with path.open("rb") as handle:
            out.append((path.name, hashlib.file_digest(handle, "sha256").hexdigest()))
    return out


def spec_text(port: int, artifacts: list[tuple[str, str]]) -> str:
    lines = [
        "version: 1",
        "name: bench",
        "release: '1'",
        "targets: [{os: debian-12, arch: amd64}]",
        "stack: {orchestrator: systemd, registry: none}",
        "files:",
    ]
    lines += [
        f"  - {{name: a{i}, url: 'http://127.0.0.1:{port}/{name}', sha256: '{digest}'}}"
        for i, (name, digest) in enumerate(artifacts)
    ]
    return "\n".join(lines) + "\n"


def allocated(root: Path, skip: Path) -> int:
    """Bytes allocated to the files under ``root`` (not ``skip``), each inode counted once."""
    seen: set[int] = set()
    total = 0
    pending = [root]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue  # removed while we looked
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path != str(skip):
                        pending.append(Path(entry.path))
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_ino not in seen:
                seen.add(info.st_ino)
                total += info.st_blocks * 512
    return total


def build(
    spec: Path, out: Path, key: Path, cache: Path, disk: bool = True
) -> tuple[float, int, int]:
    """(seconds, peak RSS KiB, peak bytes allocated under the benchmark's directory during the
    build beyond what was there before, sampled only with ``disk``: the sampler's walks would
    share the cores with a short build)."""
    root = out.parent
    start = allocated(root, root / "upstream")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while disk and not done.is_set():
            peak[0] = max(peak[0], allocated(root, root / "upstream") - start)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(
        [
            *APPLIANCE,
            "build-bundle",
            str(spec),
            "-o",
            str(out),
            "--sign-key",
            str(key),
            "--cache",
            str(cache),
            "--force",
        ],
        check=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(root / "tmp")},
    )
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(rss, before), peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=128)
    args = parser.parse_args()
    size = args.mib << 20
    total = args.files * size
    with tempfile.TemporaryDirectory(prefix="bench-build-", dir=ROOT) as tmp:
        root = Path(tmp)
        upstream = root / "upstream"
        artifacts = make_upstream(upstream, args.files, size)
        server, port = serve(upstream)
        urls = [f"http://127.0.0.1:{port}/{name}" for name, _ in artifacts]
        print(f"upstream: {args.files} files x {args.mib} MiB = {total / 1e9:.2f} GB on loopback")

        # 1. fetcher vs curl, same files, one at a time and in parallel
        curl_dir = root / "curl"
        curl_dir.mkdir()
        curl = timed(
            lambda: [
                subprocess.run(["curl", "-sS", "-o", str(curl_dir / name), url], check=True)
                for (name, _), url in zip(artifacts, urls, strict=True)
            ]
        )
        shutil.rmtree(curl_dir)
        for jobs in (1, 4):
            store = BlobStore(root / f"fetch{jobs}")
            wanted = [Wanted(n, u, d, size) for (n, d), u in zip(artifacts, urls, strict=True)]
            fetcher = Fetcher(store, None, NullProgress(), jobs)
            seconds = timed(partial(fetcher.fetch_all, wanted))
            print(
                f"  fetcher -j{jobs}: {seconds:5.2f} s {rate(total, seconds)}; curl -o one "
                f"by one: {curl:5.2f} s {rate(total, curl)}; ratio {seconds / curl:.2f}x "
                f"(goal <= 1.1x)"
            )
            shutil.rmtree(root / f"fetch{jobs}")

        # 2-4. full builds
        subprocess.run([*APPLIANCE, "keygen", "-o", str(root / "key")], check=True, cwd=ROOT)
        spec = root / "spec.yaml"
        spec.write_text(spec_text(port, artifacts))
        (root / "tmp").mkdir()
        cold, rss_big, disk_peak = build(spec, root / "out", root / "key", root / "cache")
        bundle_bytes = sum(p.stat().st_size for p in (root / "out").rglob("*") if p.is_file())
        # Downloads are not fsynced: flush the cold build's gigabyte now, or the rebuilds would
        # wait for its writeback (counted in neither figure).
        os.sync()
        rebuilds = sorted(
            build(spec, root / "out", root / "key", root / "cache", disk=False)[0] for _ in range(5)
        )
        warm = rebuilds[2]
        print(
            f"  build-bundle cold: {cold:5.2f} s; rebuild of the unchanged spec: {warm:5.2f} s "
            f"= {warm / cold:.1%} of cold (goal <= 5%; fastest {rebuilds[0]:.2f} s, slowest "
            f"{rebuilds[-1]:.2f} s)"
        )
        print(
            f"  peak extra disk during the cold build: {disk_peak / 1e9:.2f} GB for a "
            f"{bundle_bytes / 1e9:.2f} GB bundle = {disk_peak / bundle_bytes:.2f}x "
            "(cache and bundle share blobs by hard link; goal <= 1.05x)"
        )

        small = make_upstream(upstream, 1, 16 << 20)
        spec.write_text(spec_text(port, small))
        shutil.rmtree(root / "cache")
        _, rss_small, _ = build(spec, root / "small", root / "key", root / "cache-small")
        print(
            f"  peak RSS: {rss_small / 1024:.0f} MiB building 16 MiB of files, "
            f"{rss_big / 1024:.0f} MiB building {total >> 20} MiB "
            f"({rss_big / rss_small:.2f}x for {total / (16 << 20):.0f}x the data)"
        )
        server.terminate()


if __name__ == "__main__":
    main()
