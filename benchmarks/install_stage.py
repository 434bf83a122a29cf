"""What install does with a bundle before any host changes: open, verify, stage the release.

Builds a synthetic bundle (default 4 models x 128 MiB and 500 small files), then times, warm page
cache: verify-bundle alone; staging the directory as a release (what install.sh now does: the
signature once, every byte read once while copied); staging the packed .tar straight from the
stream; installing the same bundle again (the release is reused, nothing read). Prints figures,
bytes the release adds on disk, and ratios; asserts nothing.

    .venv/bin/python benchmarks/install_stage.py [--models 4] [--mib 128]

Measured on the 2-core dev machine (shared, load 3-5: ranges of three runs), 0.54 GB; before =
the code before issue 10, where install.sh ran verify-bundle, then install verified again and
hard-linked the release to the bundle's own files:
  before: directory 1.06-2.17 s, the release owns 0% of its bytes (it shares the bundle's
          inodes); .tar 0.93-2.30 s (unpacked to a temporary directory, then verified);
          the same bundle again 1.79-2.88 s (bundle and release verified anew)
  after:  directory 0.67-0.96 s, every byte read once and copied, the release owns 100%;
          .tar 1.03-1.64 s straight from the stream; the same bundle again 0.01-0.02 s
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.bundle import layout
from appliance.bundle.manifest import Component, FileEntry
from appliance.bundle.pack import pack
from appliance.bundle.signing import keygen
from appliance.bundle.store import BlobStore
from appliance.bundle.verify import open_bundle, verify_dir
from appliance.install.stage import stage
from benchmarks.common import rate, timed, write_random
from tests.fixtures.bundles import new_manifest, sign_bundle


def make_bundle(root: Path, models: int, size: int, small: int) -> Path:
    bundle = root / "bundle"
    store = BlobStore(bundle)
    entries = []
    for index in range(models):
        staging = root / f"model{index}"
        write_random(staging, size)
        digest = hashlib.file_digest(staging.open("rb"), "sha256").hexdigest()
        staging.rename(store.path(digest))
        entries.append((digest, size, "model"))
    for index in range(small):
        blob = store.add_bytes(index.to_bytes(4, "big") * 1024)
        entries.append((blob.sha256, blob.size, "deb"))
    files = [
        FileEntry(path=layout.blob_path(d), sha256=d, size=s, kind=k, component=k)  # type: ignore[arg-type]
        for d, s, k in entries
    ]
    components = [Component(name="model", kind="model"), Component(name="deb", kind="deb")]
    sign_bundle(bundle, new_manifest(files, components), root / "key")
    return bundle


def install_stage(bundle: Path, pubkey: Path, root: Path) -> Path:
    with open_bundle(bundle, pubkey) as opened:
        return stage(opened, root)


def written(release: Path, bundle: Path) -> int:
    """Bytes of the release that are its own (not inodes it shares with the bundle)."""
    shared = {p.stat().st_ino for p in bundle.rglob("*") if p.is_file()}
    return sum(
        p.stat().st_size
        for p in release.rglob("*")
        if p.is_file() and p.stat().st_ino not in shared
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--small", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stage-", dir=Path.cwd()) as tmp:
        root = Path(tmp)
        keygen(root / "key", "benchmark")
        pubkey = root / "key.pub"
        bundle = make_bundle(root, args.models, args.mib << 20, args.small)
        total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        with (root / "bundle.tar").open("wb") as out:
            pack(bundle, out)
        print(f"bundle: {args.models} x {args.mib} MiB + {args.small} small = {total / 1e9:.2f} GB")
        timed(lambda: verify_dir(bundle, pubkey))  # warm the page cache

        alone = timed(lambda: verify_dir(bundle, pubkey))
        from_dir = timed(lambda: install_stage(bundle, pubkey, root / "a"))
        again = timed(lambda: install_stage(bundle, pubkey, root / "a"))
        from_tar = timed(lambda: install_stage(root / "bundle.tar", pubkey, root / "b"))
        release = root / "a" / "releases" / "1"
        print(f"  verify-bundle alone            {alone:6.2f} s  {rate(total, alone)}")
        print(
            f"  install: stage the directory   {from_dir:6.2f} s  {rate(total, from_dir)}  "
            f"{from_dir / alone:.2f}x verify alone; the release owns "
            f"{written(release, bundle) / total:.0%} of its bytes"
        )
        print(f"  install: stage the .tar        {from_tar:6.2f} s  {rate(total, from_tar)}")
        print(f"  install again (reuse)          {again:6.3f} s  {again / from_dir:.1%} of staging")


if __name__ == "__main__":
    main()
