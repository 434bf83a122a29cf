"""The s3:// fetch of a multi-GiB model from an S3 server on loopback, against curl reading the
same objects from the same server over plain HTTP (presigned URLs).

The server is moto's (tests/fixtures/s3.py says why: the stand-in for the site's bucket), in a
process of its own. The model is --shards objects of --gib GiB in all, uploaded with their
SHA-256 checksums. Each side runs twice, with a cold target directory:
  - one stream: appliance with -j 1, curl fetching the objects one after the other;
  - parallel: appliance with -j --shards, curl --parallel with as many transfers.
appliance lists, HEADs each object for its checksum, downloads, hashes every byte and files it
in the blob store; curl only writes the bytes, so curl piped into sha256sum is measured too (the
same work). Prints seconds, MB/s and the ratios (goal: at most 1.1x curl's time). Asserts
nothing; not part of the test suite.

    .venv/bin/python benchmarks/s3_fetch.py [--gib 2] [--shards 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


BUCKET = "bench"
PREFIX = "models/synthetic"
ACCESS_KEY = "AKIABENCHMARK0000000"
SECRET_KEY = secrets.token_urlsafe(30)  # moto accepts any key; random, so none is written down

# The s3:// fetch alone, in a process of its own (as build-bundle runs it).
FETCH_ONLY = """
import sys
from pathlib import Path
from appliance.bundle.store import BlobStore
from appliance.fetchers.download import Fetcher
from appliance.fetchers.s3 import fetch_s3_model
from appliance.progress import NullProgress
from appliance.spec.s3_model import S3Model
model = S3Model(name="m", source=sys.argv[1])
fetcher = Fetcher(BlobStore(Path(sys.argv[2])), None, NullProgress(), jobs=int(sys.argv[3]))
files = fetch_s3_model(model, fetcher)
"""


Run = tuple[float, float]  # wall seconds, CPU seconds (user + system) of the command


def measured(command: list[str], **options: object) -> Run:
    """Wall time, and the CPU time of the command and everything it started."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, **options)  # type: ignore[call-overload]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()  # noqa: S310
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("moto's S3 server did not start")


def client(endpoint: str) -> object:
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


def upload(s3: object, size: int, shards: int) -> list[str]:
    """``shards`` objects of random bytes, ``size`` in all; their keys."""
    keys = []
    each = size // shards
    for index in range(shards):
        key = f"{PREFIX}/model-{index + 1:05d}-of-{shards:05d}.safetensors"
        data = os.urandom(1 << 20) * (each >> 20)  # random MiB, repeated: cheap to make
        data = index.to_bytes(8, "big") + data[8:]
        s3.put_object(Bucket=BUCKET, Key=key, Body=data, ChecksumAlgorithm="SHA256")  # type: ignore[attr-defined]
        keys.append(key)
        del data
    return keys


def appliance_fetch(endpoint: str, target: Path, jobs: int) -> Run:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(ROOT),
    }
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    command = [sys.executable, "-c", FETCH_ONLY, f"s3://{BUCKET}/{PREFIX}", str(target), str(jobs)]
    run = measured(command, env=env, cwd=ROOT)
    shutil.rmtree(target)
    return run


def curl_fetch(urls: list[str], target: Path, parallel: bool) -> Run:
    target.mkdir()
    command = ["curl", "-sS", "--no-progress-meter", "--fail"]
    if parallel:
        command += ["--parallel", "--parallel-max", str(len(urls))]
    for index, url in enumerate(urls):
        command += ["-o", str(target / f"{index}"), url]
    run = measured(command)
    shutil.rmtree(target)
    return run


def curl_hashed(urls: list[str], target: Path, parallel: bool) -> Run:
    """curl piped through tee into sha256sum: the same bytes written and hashed, which is the
    work appliance does (and what an operator would run to check them)."""
    target.mkdir()
    pipes = [
        f"curl -sS --fail '{url}' | tee '{target / str(index)}' | sha256sum >/dev/null"
        for index, url in enumerate(urls)
    ]
    script = " & ".join(pipes) + " & wait" if parallel else " && ".join(pipes)
    run = measured(["bash", "-o", "pipefail", "-c", script])
    shutil.rmtree(target)
    return run


def hash_alone(size: int) -> float:
    """One core's sha256 over ``size`` bytes in memory: the floor of appliance's extra work."""
    block = os.urandom(8 << 20)
    digest = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(size // len(block)):
        digest.update(block)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=2.0, help="model size in GiB (default 2)")
    parser.add_argument("--shards", type=int, default=4, help="objects the model is split in")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each; the fastest counts (shared machines)"
    )
    args = parser.parse_args()
    size = int(args.gib * (1 << 30)) // args.shards // (1 << 20) * (1 << 20) * args.shards
    server, endpoint = start_server()
    try:
        s3 = client(endpoint)
        s3.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        keys = upload(s3, size, args.shards)
        urls = [
            s3.generate_presigned_url(  # type: ignore[attr-defined]
                "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600
            )
            for key in keys
        ]
        # On the checkout's disk (not a tmpfs), in a directory git ignores.
        (ROOT / ".cache").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bench-s3-", dir=ROOT / ".cache") as tmp:
            root = Path(tmp)
            rows = []
            for label, jobs, parallel in (
                ("one stream", 1, False),
                ("parallel", args.shards, True),
            ):
                runs = [
                    (
                        curl_fetch(urls, root / "curl", parallel),
                        curl_hashed(urls, root / "curl", parallel),
                        appliance_fetch(endpoint, root / "store", jobs),
                    )
                    for _ in range(args.repeat)
                ]
                curl, hashed, ours = (min(column) for column in zip(*runs, strict=True))
                rows.append((label, jobs, curl, hashed, ours))
    finally:
        server.terminate()
        server.wait()
    mb = size / 1e6
    print(
        f"model: {size / (1 << 30):.2f} GiB in {args.shards} objects, moto's S3 server on "
        f"loopback (own process); {os.cpu_count()} cores; fastest of {args.repeat} runs each"
    )
    for label, jobs, curl, hashed, ours in rows:
        print(f"{label} (-j {jobs}):                 wall     rate        CPU (user+sys)")
        for name, (wall, cpu) in (
            ("curl, presigned URLs", curl),
            ("curl | tee | sha256sum", hashed),
            ("appliance s3:// fetch", ours),
        ):
            print(f"  {name:24s} {wall:6.2f} s  {mb / wall:7.1f} MB/s  {cpu:6.2f} s")
        print(
            f"  ratio: {ours[0] / curl[0]:.2f}x curl's time (goal <= 1.10x), "
            f"{ours[0] / hashed[0]:.2f}x curl | sha256sum's"
        )
    sha = min(hash_alone(size) for _ in range(args.repeat))
    print(f"sha256 of the same bytes in memory, one core: {sha:.2f} s ({mb / sha:.0f} MB/s)")


if __name__ == "__main__":
    main()
