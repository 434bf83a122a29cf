"""Delta bundle size vs full bundle size when one model file of several changes.

Builds a base bundle with N local model files (default 4 x 256 MiB), changes one, and builds
both a full bundle and a delta of the new release. Prints sizes, times and ratios.

    .venv/bin/python benchmarks/delta.py [--files 4] [--mib 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.build import BuildOptions, build_bundle  # noqa: E402
from appliance.bundle.signing import keygen  # noqa: E402
from benchmarks.common import write_random  # noqa: E402


def spec(root: Path, release: str, files: int) -> Path:
    models = "".join(
        f"  - {{name: m{i}, source: models/m{i}.safetensors, format: safetensors}}\n"
        for i in range(files)
    )
    path = root / f"spec-{release}.yaml"
    path.write_text(
        f"version: 1\nname: delta-bench\nrelease: '{release}'\n"
        "targets: [{os: debian-12, arch: amd64}]\n"
        "stack: {orchestrator: systemd, registry: none}\n"
        f"models:\n{models}"
    )
    return path


def size(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-delta-", dir=ROOT) as tmp:
        root = Path(tmp)
        keygen(root / "key", "benchmark")
        for index in range(args.files):
            write_random(root / "models" / f"m{index}.safetensors", args.mib << 20)
        cache = Path.home() / ".cache" / "appliance"
        build_bundle(
            BuildOptions(spec(root, "1", args.files), root / "base", root / "key", cache=cache)
        )
        write_random(root / "models" / "m0.safetensors", args.mib << 20)  # one file changes
        started = time.perf_counter()
        build_bundle(
            BuildOptions(spec(root, "2", args.files), root / "full", root / "key", cache=cache)
        )
        full_s = time.perf_counter() - started
        started = time.perf_counter()
        build_bundle(
            BuildOptions(
                spec(root, "2", args.files),
                root / "delta",
                root / "key",
                cache=cache,
                base=root / "base" / "manifest.json",
            )
        )
        delta_s = time.perf_counter() - started
        full, delta = size(root / "full"), size(root / "delta")
        print(f"{args.files} model files x {args.mib} MiB, one changed:")
        print(f"  full bundle  {full / 1e6:9.1f} MB  built in {full_s:5.1f} s")
        print(f"  delta bundle {delta / 1e6:9.1f} MB  built in {delta_s:5.1f} s")
        print(
            f"  delta / full = {delta / full:.3f} (ideal: {1 / args.files:.3f} plus the "
            "installer wheels the base already holds, which a delta omits too)"
        )


if __name__ == "__main__":
    main()
