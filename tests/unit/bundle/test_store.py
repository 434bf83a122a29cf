"""The blob store: hashed while written, filed under the digest, a mismatch leaves nothing."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from appliance.bundle.store import BlobStore
from appliance.errors import ChecksumMismatchError


def leftovers(store: BlobStore) -> list[str]:
    return sorted(p.name for p in store.blobs.iterdir() if p.name.startswith("."))


def test_add_files_a_blob_under_its_digest_read_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = b"payload" * 100_000
    blob = store.add_bytes(data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest() and blob.size == len(data)
    assert store.path(blob.sha256).read_bytes() == data
    assert stat.S_IMODE(store.path(blob.sha256).stat().st_mode) == 0o444
    assert store.has(blob.sha256) and store.size(blob.sha256) == len(data)
    assert store.add_bytes(data) == blob  # the same bytes twice: one blob
    assert [p.name for p in store.blobs.iterdir()] == [blob.sha256]


def test_add_file_with_the_expected_digest(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x" * 700_000)  # spans several copy chunks
    store = BlobStore(tmp_path / "store")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert store.add_file(source, expected=digest).sha256 == digest


def test_a_digest_mismatch_names_both_digests_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"changed upstream")
    store = BlobStore(tmp_path / "store")
    with pytest.raises(ChecksumMismatchError) as caught:
        store.add_file(source, expected="0" * 64, what="files[0] (tool)")
    actual = hashlib.sha256(b"changed upstream").hexdigest()
    assert caught.value.message == (
        f"files[0] (tool): sha256 mismatch: expected {'0' * 64}, got {actual}"
    )
    assert list(store.blobs.iterdir()) == []


def test_a_writer_that_is_not_committed_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    with pytest.raises(RuntimeError), store.writer() as writer:
        writer.write(b"half a download")
        raise RuntimeError("connection lost")
    assert list(store.blobs.iterdir()) == []


def test_link_from_shares_the_inode_and_keeps_what_is_there(tmp_path: Path) -> None:
    cache, bundle = BlobStore(tmp_path / "cache"), BlobStore(tmp_path / "bundle")
    blob = cache.add_bytes(b"model weights")
    bundle.link_from(cache, blob.sha256)
    assert bundle.path(blob.sha256).samefile(cache.path(blob.sha256))
    bundle.link_from(cache, blob.sha256)  # already there: nothing to do
    assert leftovers(bundle) == []
