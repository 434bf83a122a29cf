"""The appliance's model store: its layout, and one client for it, in the standard library only.

This file is the store's interface for every part of appliance. It runs on the hosts as Ansible
module_utils (the object_store role's modules import it; hosts have python3 and nothing else),
and the installer imports the very same file through ``appliance.store``. One implementation,
tested once against an S3 server (tests/fixtures/minio_standin.py).

Layout (the same on every backend)
  A store has one bucket per purpose; today one purpose, ``models``. Config names the buckets
  (``buckets: {models: appliance-models}``). In a purpose's bucket:

    sha256/<64 hex>      a file's bytes, named by their sha256: a GGUF, a safetensors shard,
                         a config.json. Metadata ``sha256`` (S3: ``x-amz-meta-sha256``) repeats the
                         digest, so an object copied or renamed by hand still says what it must be.
                         An object is written once and never changed: publishing skips a digest
                         that is there, and ``audit`` re-reads every object against its name.
    <other prefixes>     records that describe objects (e.g. a signed site manifest under
                         ``site/``): owned by the feature that writes them, written with
                         ``put_bytes``; ``audit`` checks only ``sha256/``.

  A model is not an object: it is a list of (relative path, sha256) pairs, kept by whoever owns
  the model (the bundle's signed manifest, or the site's), and its files are objects above.

Backends
  ``S3Store``         any S3 server (MinIO, SeaweedFS, Garage, Ceph RGW): path-style requests,
                      signature version 4, TLS against the site CA. Uploads sign the payload with
                      its sha256 (x-amz-content-sha256), so the server itself refuses bytes that do
                      not match the digest; files over ``part_size`` go up in parts.
  ``DirectoryStore``  the same layout under a directory (``object_store: filesystem``).

Config (``/etc/appliance/object-store/store.json`` on the store host; ``load_config``):
  {"kind": "s3", "endpoint": "https://198.18.10.2:9000", "region": "us-east-1",
   "credentials_file": "/etc/appliance/object-store/credentials.env",   # root 0600
   "access_key_var": "MINIO_ROOT_USER", "secret_key_var": "MINIO_ROOT_PASSWORD",
   "ca_file": "/etc/appliance/pki/ca.crt", "buckets": {"models": "appliance-models"}}
  ("access_key"/"secret_key" may stand in the file itself instead, e.g. in tests.)
  {"kind": "directory", "root": "/var/lib/appliance/store", "buckets": {"models": "models"}}

Use
  store = open_store(load_config(path))
  store.ensure_bucket("models")
  report = publish(store, "models", [(sha256, "/path/to/file", size)])   # uploads what is missing
  problems = audit(store, "models")                                       # [] when all match
  store.fetch("models", sha256, "/var/cache/x")                           # checked while written
  url = store.url("models", sha256, expires=3600)  # S3: a presigned GET for a host without keys
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

# Ansible ships this file to a host with the module that imports it, as ansible.module_utils;
# the installer (appliance.store) loads it beside appliance_s3 under its own name.
try:
    from appliance_s3 import (
        BLOB_PREFIX,
        CHUNK,
        HEX,
        ObjectInfo,
        S3Store,
        StoreError,
        blob_key,
        check_key,
        write_checked,
    )
except ImportError:
    from ansible.module_utils.appliance_s3 import (  # type: ignore[no-redef]
        BLOB_PREFIX,
        CHUNK,
        HEX,
        ObjectInfo,
        S3Store,
        StoreError,
        blob_key,
        check_key,
        write_checked,
    )

__all__ = [
    "BLOB_PREFIX",
    "DirectoryStore",
    "ObjectInfo",
    "PublishReport",
    "S3Store",
    "StoreError",
    "audit",
    "blob_key",
    "file_sha256",
    "load_config",
    "open_store",
    "publish",
]


class PublishReport(NamedTuple):
    uploaded: list[str]  # digests written by this run
    present: list[str]  # digests that were already there, left alone
    verified: list[str]  # digests read back and matched after upload


def load_config(path: str) -> dict[str, Any]:
    """The store's client configuration; S3 credentials may come from a root-only environment
    file (``credentials_file``, with the names of its two variables), so this file holds none."""
    with open(path, encoding="utf-8") as handle:
        config: dict[str, Any] = json.load(handle)
    if config.get("kind") not in ("s3", "directory"):
        raise StoreError(f"{path}: kind must be s3 or directory, not {config.get('kind')!r}")
    if config["kind"] == "s3" and config.get("credentials_file"):
        values = _env_file(config["credentials_file"])
        for field, default in (("access_key", "ACCESS_KEY"), ("secret_key", "SECRET_KEY")):
            name = config.get(f"{field}_var", default)
            if name not in values:
                raise StoreError(f"{config['credentials_file']}: no {name}=")
            config[field] = values[name]
    return config


def _env_file(path: str) -> dict[str, str]:
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            name, sep, value = line.strip().partition("=")
            if sep and not name.startswith("#"):
                values[name.strip()] = value.strip()
    return values


def open_store(config: dict[str, Any]) -> S3Store | DirectoryStore:
    if config["kind"] == "directory":
        return DirectoryStore(config["root"], config.get("buckets"))
    return S3Store(
        config["endpoint"],
        config["access_key"],
        config["secret_key"],
        region=config.get("region") or "us-east-1",
        ca_file=config.get("ca_file"),
        buckets=config.get("buckets"),
    )


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class DirectoryStore:
    """The store's layout in a directory: ``<root>/<bucket>/sha256/<hex>`` (metadata: the name)."""

    def __init__(self, root: str, buckets: dict[str, str] | None = None) -> None:
        self.root = root
        self.buckets = dict(buckets or {"models": "models"})

    def bucket(self, purpose: str) -> str:
        try:
            return self.buckets[purpose]
        except KeyError:
            raise StoreError(f"no bucket for purpose {purpose!r}") from None

    def _file(self, purpose: str, key: str) -> str:
        return os.path.join(self.root, self.bucket(purpose), check_key(key))

    def ensure_bucket(self, purpose: str) -> bool:
        path = os.path.join(self.root, self.bucket(purpose))
        if os.path.isdir(path):
            return False
        os.makedirs(path, mode=0o755)
        return True

    def stat(self, purpose: str, sha256: str) -> ObjectInfo | None:
        return self.stat_key(purpose, blob_key(sha256))

    def stat_key(self, purpose: str, key: str) -> ObjectInfo | None:
        path = self._file(purpose, key)
        if not os.path.isfile(path):
            return None
        name = key[len(BLOB_PREFIX) :] if key.startswith(BLOB_PREFIX) else None
        return ObjectInfo(key, os.path.getsize(path), name)

    def put(
        self, purpose: str, sha256: str, path: str, metadata: dict[str, str] | None = None
    ) -> None:
        with open(path, "rb") as reader:
            write_checked(reader, self._file(purpose, blob_key(sha256)), sha256, path)

    def put_bytes(self, purpose: str, key: str, data: bytes, content_type: str = "") -> None:
        dest = self._file(purpose, key)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(f"{dest}.partial", "wb") as handle:
            handle.write(data)
        os.replace(f"{dest}.partial", dest)

    def get_bytes(self, purpose: str, key: str) -> bytes | None:
        try:
            with open(self._file(purpose, key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def read_digest(self, purpose: str, sha256: str) -> str:
        return file_sha256(self._file(purpose, blob_key(sha256)))

    def fetch(self, purpose: str, sha256: str, dest: str) -> None:
        source = self._file(purpose, blob_key(sha256))
        with open(source, "rb") as reader:
            write_checked(reader, dest, sha256, source)

    def remove(self, purpose: str, key: str) -> None:
        os.unlink(self._file(purpose, key))

    def list(self, purpose: str, prefix: str = BLOB_PREFIX) -> Iterator[ObjectInfo]:
        base = os.path.join(self.root, self.bucket(purpose))
        for directory, _, names in sorted(os.walk(base)):
            for name in sorted(names):
                key = os.path.relpath(os.path.join(directory, name), base).replace(os.sep, "/")
                if key.startswith(prefix) and not key.endswith(".partial"):
                    yield ObjectInfo(key, os.path.getsize(os.path.join(directory, name)), None)

    def url(self, purpose: str, sha256: str, expires: int = 3600) -> str:
        return "file://" + self._file(purpose, blob_key(sha256))


def publish(
    store: S3Store | DirectoryStore,
    purpose: str,
    files: Iterable[tuple[str, str, int]],
    *,
    read_back: bool = True,
    check_mode: bool = False,
) -> PublishReport:
    """Put each ``(sha256, path, size)`` into the store unless an object of that digest and size
    is there; read each upload back and compare (``read_back``). Raises StoreError naming the
    first file that does not match."""
    report = PublishReport([], [], [])
    for sha256, path, size in files:
        info = store.stat(purpose, sha256)
        # Only an object that says it is this digest counts: one without the metadata was not
        # written by publish, and is replaced.
        if info is not None and info.size == size and info.sha256 == sha256:
            report.present.append(sha256)
            continue
        report.uploaded.append(sha256)
        if check_mode:
            continue
        store.put(purpose, sha256, path)
        after = store.stat(purpose, sha256)
        if after is None or after.size != size:
            raise StoreError(f"{path}: after upload the store holds {after} for sha256 {sha256}")
        if read_back:
            got = store.read_digest(purpose, sha256)
            if got != sha256:
                raise StoreError(f"{path}: the store sends back sha256 {got}, expected {sha256}")
            report.verified.append(sha256)
    return report


def audit(
    store: S3Store | DirectoryStore,
    purpose: str,
    expected: Iterable[str] = (),
    *,
    read: bool = True,
) -> list[dict[str, str]]:
    """Every object under ``sha256/`` matches its name (its bytes with ``read``, else its
    metadata), and every ``expected`` digest is there. One problem per object, none if all good."""
    problems: list[dict[str, str]] = []
    seen: set[str] = set()
    for info in store.list(purpose):
        name = info.key[len(BLOB_PREFIX) :]
        seen.add(name)
        if not HEX.match(name):
            problems.append({"key": info.key, "problem": "not named by a sha256"})
            continue
        meta = store.stat(purpose, name)
        if meta is not None and meta.sha256 not in (None, name):
            problems.append({"key": info.key, "problem": f"metadata says sha256 {meta.sha256}"})
        if read:
            got = store.read_digest(purpose, name)
            if got != name:
                problems.append({"key": info.key, "problem": f"bytes have sha256 {got}"})
    for sha256 in sorted(set(expected) - seen):
        problems.append({"key": BLOB_PREFIX + sha256, "problem": "missing"})
    return problems
