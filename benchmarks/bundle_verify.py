"""verify-bundle throughput against the hashing limit and the disk.

Builds a synthetic bundle (default 8 blobs x 256 MiB), then times, over the same files:
  warm page cache: openssl dgst -sha256 (one process), coreutils sha256sum, and
                   appliance's verify with 1 and 2 workers;
  cold page cache: a sequential dd read, and verify with 1 and 2 workers.
Prints figures and ratios; asserts nothing.

    .venv/bin/python benchmarks/bundle_verify.py [--files 8] [--mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.bundle import layout
from appliance.bundle.manifest import FileEntry, Manifest, Target
from appliance.bundle.signing import keygen, write_trust_files
from appliance.bundle.verify import verify_dir
from benchmarks.common import drop_caches, rate, run, timed, write_random


def make_bundle(root: Path, files: int, size: int) -> tuple[Path, list[Path], Path]:
    keygen(root / "key", "benchmark")
    bundle = root / "bundle"
    entries, paths = [], []
    for index in range(files):
        staging = root / f"blob{index}"
        write_random(staging, size)
        digest = hashlib.file_digest(staging.open("rb"), "sha256").hexdigest()
        final = bundle / layout.blob_path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)
        paths.append(final)
        entries.append(
            FileEntry(
                path=layout.blob_path(digest),
                sha256=digest,
                size=size,
                kind="model",
                component="synthetic",
            )
        )
    manifest = Manifest(
        name="bench",
        release="1",
        created="2026-01-01T00:00:00Z",
        appliance_version="bench",
        spec_sha256="0" * 64,
        target=Target(os="debian-12", arch="amd64"),
        stack={},
        components=[],
        files=sorted(entries, key=lambda e: e.path),
    )
    write_trust_files(bundle, manifest, root / "key")
    return bundle, paths, root / "key.pub"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    total = args.files * args.mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir=Path.cwd()) as tmp:
        bundle, paths, pubkey = make_bundle(Path(tmp), args.files, args.mib << 20)
        names = [str(p) for p in paths]
        print(f"bundle: {args.files} files x {args.mib} MiB = {total / 1e9:.2f} GB")

        run("cat", *names)  # warm the page cache
        openssl = min(run("openssl", "dgst", "-sha256", *names) for _ in range(2))
        sha256sum = run("sha256sum", *names)
        one = min(timed(lambda: verify_dir(bundle, pubkey, jobs=1)) for _ in range(2))
        two = min(timed(lambda: verify_dir(bundle, pubkey, jobs=2)) for _ in range(2))
        print("warm page cache:")
        print(f"  openssl dgst -sha256   {openssl:6.2f} s  {rate(total, openssl)}")
        print(f"  sha256sum              {sha256sum:6.2f} s  {rate(total, sha256sum)}")
        print(
            f"  verify-bundle -j1      {one:6.2f} s  {rate(total, one)}  "
            f"{openssl / one:.2f}x openssl (goal >= 0.9x)"
        )
        print(
            f"  verify-bundle -j2      {two:6.2f} s  {rate(total, two)}  "
            f"{openssl / two:.2f}x openssl (goal >= 1.8x)"
        )

        if not drop_caches():
            print("cold page cache: not measured (cannot write /proc/sys/vm/drop_caches)")
            return
        dd = timed(lambda: [run("dd", f"if={n}", "of=/dev/null", "bs=4M") for n in names])
        drop_caches()
        cold_one = timed(lambda: verify_dir(bundle, pubkey, jobs=1))
        drop_caches()
        cold_two = timed(lambda: verify_dir(bundle, pubkey, jobs=2))
        print("cold page cache:")
        print(f"  dd sequential read     {dd:6.2f} s  {rate(total, dd)}")
        print(
            f"  verify-bundle -j1      {cold_one:6.2f} s  {rate(total, cold_one)}  "
            f"{dd / cold_one:.2f}x dd (goal >= 0.9x)"
        )
        print(
            f"  verify-bundle -j2      {cold_two:6.2f} s  {rate(total, cold_two)}  "
            f"{dd / cold_two:.2f}x dd"
        )


if __name__ == "__main__":
    main()
