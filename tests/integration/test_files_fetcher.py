"""The files fetcher against a real loopback HTTP server: resume, retry, mismatch, 404, cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.bundle.store import BlobStore
from appliance.errors import ChecksumMismatchError, FetchError
from appliance.fetchers import http
from appliance.fetchers.download import Fetcher, Wanted
from appliance.fetchers.http import RetryPolicy
from appliance.progress import NullProgress
from tests.fixtures.http_server import Route, serve

FAST = RetryPolicy(attempts=4, backoff=0.01, timeout=5)
BODY = os.urandom(3 << 20)  # 3 MiB: several reads, so a cut lands mid-transfer
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(autouse=True, params=["one thread", "pipelined"])
def transfer_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test runs both ways a transfer can go: receive, hash and write on one thread (cores
    busy), or receive on one and hash and write on another (a core spare)."""
    cores = 1 if request.param == "one thread" else 64
    monkeypatch.setattr(http.os, "cpu_count", lambda: cores)
    chosen: list[bool] = []
    slot = http._transfer_slot

    @contextmanager
    def watched() -> Iterator[bool]:
        with slot() as spare:
            chosen.append(spare)
            yield spare

    monkeypatch.setattr(http, "_transfer_slot", watched)
    yield request.param
    # The mode under test was the one used (when anything was downloaded at all).
    assert set(chosen) <= {request.param == "pipelined"}


def fetcher(tmp_path: Path, cache: bool = True, jobs: int = 4) -> Fetcher:
    store = BlobStore(tmp_path / "bundle")
    return Fetcher(
        store, BlobStore(tmp_path / "cache") if cache else None, NullProgress(), jobs, FAST
    )


def blobs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "blobs/sha256").iterdir())


def test_download_lands_once_under_its_digest(tmp_path: Path) -> None:
    with serve({"/a": Route(BODY)}) as server:
        (result,) = fetcher(tmp_path).fetch_all([Wanted("a", server.url("/a"), SHA)])
    assert (result.size, result.from_cache) == (len(BODY), False)
    assert blobs(tmp_path / "bundle") == [SHA]
    assert (tmp_path / "bundle/blobs/sha256" / SHA).read_bytes() == BODY
    # Shared with the cache by a hard link: no second copy on disk.
    assert (tmp_path / "bundle/blobs/sha256" / SHA).stat().st_ino == (
        tmp_path / "cache/blobs/sha256" / SHA
    ).stat().st_ino


def test_interrupted_transfer_resumes_with_range(tmp_path: Path) -> None:
    cut = 1_000_000
    with serve({"/a": Route(BODY, cut_after=cut)}) as server:
        (result,) = fetcher(tmp_path).fetch_all([Wanted("a", server.url("/a"), SHA, len(BODY))])
        ranges = [r for m, p, r in server.requests if m == "GET"]
    assert result.size == len(BODY)
    assert ranges == [None, f"bytes={cut}-"]
    assert (tmp_path / "bundle/blobs/sha256" / SHA).read_bytes() == BODY


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path: Path) -> None:
    partial = tmp_path / "cache/partial" / f"{SHA}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(BODY[:12345])
    with serve({"/a": Route(BODY)}) as server:
        fetcher(tmp_path).fetch_all([Wanted("a", server.url("/a"), SHA, len(BODY))])
        assert [r for m, _, r in server.requests if m == "GET"] == ["bytes=12345-"]
    assert not partial.exists()


def test_a_partial_file_that_is_no_prefix_is_dropped_and_the_digest_with_it(
    tmp_path: Path,
) -> None:
    # Longer than the file: the server answers 416, the download starts again from byte 0, and
    # what was hashed of the old partial file must not count (it once made a false mismatch).
    partial = tmp_path / "cache/partial" / f"{SHA}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(BODY + b"left over")
    with serve({"/a": Route(BODY)}) as server:
        fetcher(tmp_path).fetch_all([Wanted("a", server.url("/a"), SHA, len(BODY))])
        ranges = [r for m, _, r in server.requests if m == "GET"]
    assert ranges == [f"bytes={len(BODY) + 9}-", None]
    assert (tmp_path / "bundle/blobs/sha256" / SHA).read_bytes() == BODY


def test_server_that_ignores_range_restarts_cleanly(tmp_path: Path) -> None:
    partial = tmp_path / "cache/partial" / f"{SHA}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(BODY[:500])
    with serve({"/a": Route(BODY, ignore_range=True)}) as server:
        fetcher(tmp_path).fetch_all([Wanted("a", server.url("/a"), SHA, len(BODY))])
    assert (tmp_path / "bundle/blobs/sha256" / SHA).read_bytes() == BODY


def test_server_errors_are_retried(tmp_path: Path) -> None:
    with serve({"/a": Route(BODY, fail_first=2)}) as server:
        fetcher(tmp_path).fetch_all([Wanted("a", server.url("/a"), SHA, len(BODY))])
        assert server.count("/a") == 3
    assert blobs(tmp_path / "bundle") == [SHA]


def test_persistent_server_errors_give_up_and_say_so(tmp_path: Path) -> None:
    with serve({"/a": Route(BODY, fail_first=99)}) as server:
        with pytest.raises(FetchError) as caught:
            fetcher(tmp_path).fetch_all([Wanted("file a", server.url("/a"), SHA, len(BODY))])
        assert server.count("/a") == FAST.attempts
    assert (
        caught.value.message
        == "file a: download failed after 4 attempts: HTTP 503 Service Unavailable"
    )
    assert blobs(tmp_path / "bundle") == []


def test_not_found_is_reported_without_retrying(tmp_path: Path) -> None:
    with serve({}) as server:
        with pytest.raises(FetchError) as caught:
            fetcher(tmp_path).fetch_all([Wanted("file a", server.url("/gone"), SHA, 10)])
        assert server.count("/gone") == 1
    assert caught.value.message == f"HTTP 404 Not Found for {server.url('/gone')}"
    assert caught.value.exit_code == 21


def test_mismatch_names_artifact_and_both_digests_and_keeps_nothing(tmp_path: Path) -> None:
    wrong = b"not what was pinned"
    with serve({"/a": Route(wrong)}) as server, pytest.raises(ChecksumMismatchError) as caught:
        fetcher(tmp_path).fetch_all([Wanted("file k3s", server.url("/a"), SHA)])
    actual = hashlib.sha256(wrong).hexdigest()
    assert caught.value.message == (
        f"file k3s: sha256 mismatch for {server.url('/a')}: expected {SHA}, got {actual}"
    )
    assert blobs(tmp_path / "bundle") == []
    assert blobs(tmp_path / "cache") == []
    assert list((tmp_path / "cache/partial").iterdir()) == []


def test_rebuild_from_cache_downloads_nothing(tmp_path: Path) -> None:
    with serve({"/a": Route(BODY)}) as server:
        fetcher(tmp_path).fetch_all([Wanted("a", server.url("/a"), SHA, len(BODY))])
        first = len(server.requests)
        second = Fetcher(
            BlobStore(tmp_path / "bundle2"), BlobStore(tmp_path / "cache"), NullProgress(), 1, FAST
        ).fetch_all([Wanted("a", server.url("/a"), SHA)])
        assert len(server.requests) == first
    assert second[0].from_cache
    assert (tmp_path / "bundle2/blobs/sha256" / SHA).read_bytes() == BODY


def test_parallel_fetches_each_land(tmp_path: Path) -> None:
    bodies = {f"/f{i}": os.urandom(200_000 + i) for i in range(8)}
    with serve({path: Route(body) for path, body in bodies.items()}) as server:
        wanted = [
            Wanted(path, server.url(path), hashlib.sha256(body).hexdigest())
            for path, body in bodies.items()
        ]
        results = fetcher(tmp_path, cache=False, jobs=4).fetch_all(wanted)
    assert [r.wanted for r in results] == wanted
    assert blobs(tmp_path / "bundle") == sorted(w.sha256 for w in wanted)


def test_file_urls_are_hashed_while_copied(tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(BODY)
    (result,) = fetcher(tmp_path).fetch_all([Wanted("m", source.as_uri(), SHA)])
    assert result.size == len(BODY)
    with pytest.raises(ChecksumMismatchError):
        fetcher(tmp_path / "x").fetch_all([Wanted("m", source.as_uri(), "0" * 64)])
