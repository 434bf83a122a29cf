"""Seeding a registry from a bundle's OCI layout (the registry role's own code: HEAD by digest,
skopeo copy --all --preserve-digests, then the read-back of every manifest and blob) against a
plain `skopeo copy` of the same layout to the same kind of registry, and a re-seed.

The registry is Debian's docker-registry speaking TLS with basic authentication on loopback
(tests/fixtures/registry.py, a CA made here). The layout is what build-bundle writes: --images
images, each a shared base layer of --base-mib MiB and a layer of its own of --own-mib MiB
(random, so incompressible), copied by digest from a plain registry. Each round seeds into an
empty registry and copies with plain skopeo into another empty one, in alternating order; then
the seeded registry is seeded again, which must push nothing (its skopeo is false(1): a push
attempt would fail the run). Prints seconds per round, the ratio (goal: at most 1.1x plain
skopeo) and the re-seed's time (goal: seconds). Asserts nothing; not part of the test suite.

    .venv/bin/python benchmarks/seed.py [--images 4] [--base-mib 64] [--own-mib 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.registry import Client, auth_file, repository, seed_image  # noqa: E402
from tests.fixtures.registry import layer, push_image, registry, tls_registry  # noqa: E402

PUSH = ("appliance-push", "benchmark-password")


def bundle_layout(root: Path, images: int, base_mib: int, own_mib: int) -> dict[str, str]:
    """A bundle-like OCI layout: ref -> digest."""
    base = layer({"base.bin": os.urandom(base_mib << 20)})
    refs: dict[str, str] = {}
    with registry(root / "upstream") as address:
        for index in range(images):
            own = layer({f"own-{index}.bin": os.urandom(own_mib << 20)})
            digest = push_image(root / f"src-{index}", f"{address}/bench/app{index}:1", [base, own])
            ref = f"{address}/bench/app{index}:1@{digest}"
            subprocess.run(
                ["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
                 "--src-tls-verify=false", f"docker://{address}/bench/app{index}@{digest}",
                 f"oci:{root / 'bundle'}:{ref}"],
                check=True, capture_output=True,
            )  # fmt: skip
            refs[ref] = digest
    return refs


def seed_all(
    address: str, ca: Path, layout: Path, refs: dict[str, str], auth: Path, certs: Path,
    skopeo: str = "skopeo",
) -> list[dict[str, object]]:  # fmt: skip
    client = Client(address, str(ca), *PUSH)
    return [
        seed_image(client, str(layout), ref, digest, {}, str(auth), str(certs), skopeo=skopeo)
        for ref, digest in refs.items()
    ]


def plain_all(address: str, layout: Path, refs: dict[str, str], auth: Path, certs: Path) -> None:
    for ref, digest in refs.items():
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--dest-cert-dir",
             str(certs), "--dest-authfile", str(auth), f"oci:{layout}:{ref}",
             f"docker://{address}/{repository(ref)}@{digest}"],
            check=True, capture_output=True,
        )  # fmt: skip


def one_round(work: Path, layout: Path, refs: dict[str, str], seed_first: bool) -> dict[str, float]:
    seconds: dict[str, float] = {}
    with (
        tls_registry(work / "seeded", dict([PUSH])) as (seeded, seeded_ca),
        tls_registry(work / "plain", dict([PUSH])) as (plain, plain_ca),
    ):
        files = {}
        for name, address, ca in (("seeded", seeded, seeded_ca), ("plain", plain, plain_ca)):
            auth, certs = work / f"{name}-auth.json", work / f"{name}-certs"
            auth.write_text(auth_file(address, *PUSH))
            certs.mkdir()
            (certs / "ca.crt").write_bytes(ca.read_bytes())
            files[name] = (auth, certs)

        def seed() -> None:
            start = time.perf_counter()
            seed_all(seeded, seeded_ca, layout, refs, *files["seeded"])
            seconds["seed"] = time.perf_counter() - start

        def plain_copy() -> None:
            start = time.perf_counter()
            plain_all(plain, layout, refs, *files["plain"])
            seconds["plain"] = time.perf_counter() - start

        for step in (seed, plain_copy) if seed_first else (plain_copy, seed):
            step()
        start = time.perf_counter()
        again = seed_all(seeded, seeded_ca, layout, refs, *files["seeded"], skopeo="false")
        seconds["reseed"] = time.perf_counter() - start
        seconds["reseed_pushed"] = float(sum(1 for s in again if s["pushed"]))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--base-mib", type=int, default=64)
    parser.add_argument("--own-mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seed-bench-") as temporary:
        root = Path(temporary)
        refs = bundle_layout(root, args.images, args.base_mib, args.own_mib)
        size = args.base_mib + args.images * args.own_mib
        print(f"{args.images} images, {size} MiB of distinct layers, TLS registry on loopback")
        rounds = []
        for index in range(args.rounds):
            work = root / f"round-{index}"
            work.mkdir()
            result = one_round(work, root / "bundle", refs, seed_first=index % 2 == 0)
            rounds.append(result)
            print(
                f"round {index + 1}: seed {result['seed']:.2f} s, plain skopeo "
                f"{result['plain']:.2f} s ({result['seed'] / result['plain']:.2f}x), "
                f"re-seed {result['reseed']:.2f} s, images pushed by the re-seed: "
                f"{int(result['reseed_pushed'])}"
            )
        seed = statistics.median(r["seed"] for r in rounds)
        plain = statistics.median(r["plain"] for r in rounds)
        reseed = statistics.median(r["reseed"] for r in rounds)
        print(
            f"median: seed {seed:.2f} s, plain skopeo {plain:.2f} s, ratio {seed / plain:.2f}x "
            f"(goal <= 1.10x); re-seed {reseed:.2f} s (goal: seconds, nothing pushed)"
        )


if __name__ == "__main__":
    main()
