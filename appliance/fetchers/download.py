"""The downloader every source kind that fetches by URL shares (files, packages, hub models):
artifacts pinned by sha256 (or a git blob id), fetched in parallel through a cache, each hashed
while it arrives."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from appliance.bundle.store import BlobStore
from appliance.fetchers.http import GitBlob, Opener, RetryPolicy, content_length, fetch_to_store
from appliance.progress import Progress


@dataclass(frozen=True)
class Wanted:
    """One artifact to put in the bundle: where it comes from and what it must hash to."""

    label: str
    url: str
    sha256: str | None  # None only with a git_blob: then that is checked instead
    size: int | None = None
    git_blob: GitBlob | None = None
    # Sent with the request, e.g. a token: never in repr, so never in a log or a traceback.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # For a source with its own protocol (s3:// through its SDK): opens the bytes at an offset
    # instead of an HTTP GET of ``url``, which then only names the artifact.
    opener: Opener | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Fetched:
    wanted: Wanted
    size: int
    from_cache: bool
    sha256: str = ""  # the blob's digest (what wanted.sha256 says, when it says)


class Fetcher:
    """Fetches into ``cache`` (or straight into ``store`` without one) and links into
    ``store``: a rebuild of an unchanged spec downloads nothing."""

    def __init__(
        self,
        store: BlobStore,
        cache: BlobStore | None,
        progress: Progress,
        jobs: int = 4,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.progress = progress
        self.jobs = max(1, jobs)
        self.policy = policy
        # What came over the network and what from the cache, for the build's report.
        self.fetched = Tally()
        self.cached = Tally()

    def fetch_all(self, wanted: Iterable[Wanted]) -> list[Fetched]:
        items = list(wanted)
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="fetch") as pool:
            return list(pool.map(self.fetch_one, items))

    def fetch_one(self, wanted: Wanted) -> Fetched:
        landing = self.cache or self.store
        known = wanted.sha256 or _git_blob_seen(landing, wanted.git_blob)
        if known is not None and landing.has(known):
            self._take(known)
            size = landing.size(known)
            self.cached.add(size)
            return Fetched(wanted, size, from_cache=True, sha256=known)
        total = wanted.size
        if total is None and wanted.opener is None:
            total = content_length(wanted.url)
        task = self.progress.task(wanted.label, total)
        try:
            blob = fetch_to_store(
                wanted.url,
                wanted.sha256,
                landing,
                what=wanted.label,
                partial_dir=landing.root / "partial",
                advance=task.advance,
                policy=self.policy,
                headers=dict(wanted.headers),
                git_blob=wanted.git_blob,
                opener=wanted.opener,
            )
        finally:
            self.progress.finish(task)
        if self.cache is not None and wanted.sha256 is None and wanted.git_blob is not None:
            # Only in a cache: a bundle holds nothing its manifest does not list.
            _remember_git_blob(self.cache, wanted.git_blob, blob.sha256)
        self._take(blob.sha256)
        self.fetched.add(blob.size)
        return Fetched(wanted, blob.size, from_cache=False, sha256=blob.sha256)

    def _take(self, sha256: str) -> None:
        if self.cache is not None:
            self.store.link_from(self.cache, sha256)


class Tally:
    """A count of artifacts and their bytes, added to from the fetcher's threads."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            self.count += 1
            self.bytes += size


# Which sha256 a verified git blob turned out to have, so a rebuild finds it in the cache
# without downloading it again. Written only after the git object id matched.
_GIT_BLOBS = "git-blobs"


def _git_blob_seen(landing: BlobStore, git_blob: GitBlob | None) -> str | None:
    if git_blob is None:
        return None
    try:
        return (landing.root / _GIT_BLOBS / git_blob.sha1).read_text().strip() or None
    except OSError:
        return None


def _remember_git_blob(landing: BlobStore, git_blob: GitBlob, sha256: str) -> None:
    where = landing.root / _GIT_BLOBS
    where.mkdir(exist_ok=True)
    temp = where / f".{git_blob.sha1}.tmp"
    temp.write_text(sha256)
    temp.replace(where / git_blob.sha1)


def url_basename(url: str) -> str:
    return Path(unquote(urlsplit(url).path)).name or "download"
