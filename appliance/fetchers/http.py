"""Download one URL into a blob: hash while receiving, resume, retry with backoff.

Only the standard library: this runs on build machines we do not control.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from appliance import __version__
from appliance.bundle.store import CHUNK, Blob, BlobStore
from appliance.errors import ChecksumMismatchError, FetchError

Advance = Callable[[int], None]

# Status codes worth another try: the server or something in between may recover.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff: float = 0.5  # seconds before the 2nd attempt; doubles each time, with jitter
    timeout: float = 30.0  # per socket operation, not per download


def fetch_to_store(
    url: str,
    sha256: str,
    store: BlobStore,
    *,
    what: str,
    partial_dir: Path,
    advance: Advance = lambda _n: None,
    policy: RetryPolicy | None = None,
) -> Blob:
    """Fetch ``url`` into ``store`` as the blob ``sha256``.

    Partial data is kept in ``partial_dir`` under the expected digest, so an interrupted
    build resumes where it stopped (HTTP Range) instead of starting again.
    """
    if store.has(sha256):
        return Blob(sha256, store.size(sha256))
    if urlsplit(url).scheme == "file":
        return _copy_local(url, sha256, store, what, advance)
    partial_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_dir / f"{sha256}.part"
    policy = policy or RetryPolicy()
    hasher = _resume_hash(partial)
    advance(partial.stat().st_size if partial.exists() else 0)
    last_error = ""
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.backoff * (2 ** (attempt - 1)) * (1 + random.random() / 2))  # noqa: S311
        try:
            hasher = _transfer(url, partial, hasher, policy.timeout, advance)
            break
        except _Retryable as exc:
            last_error = str(exc)
    else:
        raise FetchError(
            f"{what}: download failed after {policy.attempts} attempts: {last_error}",
            hint=f"check that {url} is reachable from this machine; the partial download is "
            "kept and the next build resumes it",
        )
    actual = hasher.hexdigest()
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{what}: sha256 mismatch for {url}: expected {sha256}, got {actual}",
            hint="the upstream file changed or the transfer was corrupted; nothing was added "
            "to the bundle. If the change is intended, pin the new digest in the spec",
        )
    partial.chmod(0o444)
    partial.replace(store.path(sha256))
    return Blob(sha256, store.size(sha256))


class _Retryable(Exception):
    pass


def _resume_hash(partial: Path) -> hashlib._Hash:
    """Hash what an earlier, interrupted run left, so the download can continue after it."""
    hasher = hashlib.sha256()
    if partial.exists():
        with partial.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
    return hasher


def _transfer(
    url: str, partial: Path, hasher: hashlib._Hash, timeout: float, advance: Advance
) -> hashlib._Hash:
    offset = partial.stat().st_size if partial.exists() else 0
    # The spec admits only http(s) and file:// URLs, and file:// never reaches this point.
    agent = {"User-Agent": f"appliance/{__version__}"}
    request = urllib.request.Request(url, headers=agent)  # noqa: S310
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The partial file is not a prefix of what the server has: start again.
            partial.unlink()
            advance(-offset)
            raise _Retryable(f"HTTP 416 resuming at byte {offset}; restarting") from exc
        if exc.code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise FetchError(
            f"HTTP {exc.code} {exc.reason} for {url}",
            hint="the URL in the spec is wrong or the artifact was removed upstream",
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc

    with response:
        if offset and response.status != 206:
            # The server ignored the Range header: the body is the whole file again.
            advance(-offset)
            hasher = hashlib.sha256()
            mode = "wb"
        else:
            mode = "ab" if offset else "wb"
        try:
            with partial.open(mode) as out:
                buffer = bytearray(CHUNK)
                view = memoryview(buffer)
                while count := response.readinto(buffer):
                    out.write(view[:count])
                    hasher.update(view[:count])
                    advance(count)
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"transfer interrupted: {type(exc).__name__}: {exc}") from exc
        length = response.headers.get("Content-Length")
        if length is not None and response.status in (200, 206):
            expected_end = int(length) + (offset if response.status == 206 else 0)
            if partial.stat().st_size < expected_end:
                raise _Retryable(
                    f"connection closed at byte {partial.stat().st_size} of {expected_end}"
                )
    return hasher


def _copy_local(url: str, sha256: str, store: BlobStore, what: str, advance: Advance) -> Blob:
    path = Path(unquote(urlsplit(url).path))
    if not path.is_file():
        raise FetchError(f"{what}: {path} does not exist", hint="fix the file:// URL in the spec")
    with path.open("rb") as handle, store.writer() as writer:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            writer.write(view[:count])
            advance(count)
        return writer.commit(sha256, what)


def content_length(url: str, timeout: float = 30.0) -> int | None:
    """Size of ``url`` if the server says (HEAD); None when unknown. For progress only."""
    if urlsplit(url).scheme == "file":
        path = Path(unquote(urlsplit(url).path))
        return path.stat().st_size if path.is_file() else None
    agent = {"User-Agent": f"appliance/{__version__}"}
    request = urllib.request.Request(url, method="HEAD", headers=agent)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            length = response.headers.get("Content-Length")
            return int(length) if length is not None else None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
        return None


__all__ = ["RetryPolicy", "content_length", "fetch_to_store"]
