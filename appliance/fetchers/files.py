"""files: http(s) and file:// artifacts pinned by sha256, fetched in parallel through a cache."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from appliance.bundle.store import BlobStore
from appliance.fetchers.http import RetryPolicy, content_length, fetch_to_store
from appliance.progress import Progress


@dataclass(frozen=True)
class Wanted:
    """One artifact to put in the bundle: where it comes from and what it must hash to."""

    label: str
    url: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class Fetched:
    wanted: Wanted
    size: int
    from_cache: bool


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

    def fetch_all(self, wanted: Iterable[Wanted]) -> list[Fetched]:
        items = list(wanted)
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="fetch") as pool:
            return list(pool.map(self.fetch_one, items))

    def fetch_one(self, wanted: Wanted) -> Fetched:
        landing = self.cache or self.store
        if landing.has(wanted.sha256):
            self._take(wanted.sha256)
            return Fetched(wanted, landing.size(wanted.sha256), from_cache=True)
        total = wanted.size if wanted.size is not None else content_length(wanted.url)
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
            )
        finally:
            self.progress.finish(task)
        self._take(blob.sha256)
        return Fetched(wanted, blob.size, from_cache=False)

    def _take(self, sha256: str) -> None:
        if self.cache is not None:
            self.store.link_from(self.cache, sha256)


def url_basename(url: str) -> str:
    return Path(unquote(urlsplit(url).path)).name or "download"
