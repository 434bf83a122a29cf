"""Download one URL into a blob: hash while receiving, resume, retry with backoff.

Only the standard library: this runs on build machines we do not control.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlsplit

from appliance import __version__
from appliance.bundle.store import CHUNK, Blob, BlobStore
from appliance.errors import ChecksumMismatchError, FetchError

# Chunks received but not yet written: 8 MiB at most in flight per download.
_QUEUED_CHUNKS = 32
# Transfers running now, in every fetcher thread of this process.
_active = 0
_active_lock = threading.Lock()

Advance = Callable[[int], None]

# Status codes worth another try: the server or something in between may recover.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class GitBlob:
    """A file known by its git object id, as a hub lists files kept in git itself rather than
    in LFS: sha1 over ``blob <size>\\0`` and the content."""

    sha1: str
    size: int


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff: float = 0.5  # seconds before the 2nd attempt; doubles each time, with jitter
    timeout: float = 30.0  # per socket operation, not per download


def fetch_to_store(
    url: str,
    sha256: str | None,
    store: BlobStore,
    *,
    what: str,
    partial_dir: Path,
    advance: Advance = lambda _n: None,
    policy: RetryPolicy | None = None,
    headers: Mapping[str, str] | None = None,
    git_blob: GitBlob | None = None,
    opener: Opener | None = None,
) -> Blob:
    """Fetch ``url`` into ``store`` as the blob ``sha256``.

    Partial data is kept in ``partial_dir`` under the expected digest, so an interrupted
    build resumes where it stopped (HTTP Range) instead of starting again. Where only a git
    object id is known (``sha256`` None), that is checked instead and the blob is filed under
    the sha256 computed on the way. ``headers`` (e.g. a token) go to ``url``'s origin only.
    ``opener`` replaces plain HTTP for a source with its own protocol (s3:// through its SDK);
    ``url`` then only names the artifact in messages.
    """
    if sha256 is not None and store.has(sha256):
        return Blob(sha256, store.size(sha256))
    if opener is None and urlsplit(url).scheme == "file":
        return _copy_local(url, sha256, store, what, advance)
    if sha256 is None and git_blob is None:
        raise ValueError("fetch_to_store needs a sha256 or a git blob id to check")
    partial_dir.mkdir(parents=True, exist_ok=True)
    key = sha256 if sha256 is not None else f"git-{git_blob.sha1 if git_blob else ''}"
    partial = partial_dir / f"{key}.part"
    policy = policy or RetryPolicy()
    opener = opener or _url_opener(url, policy.timeout, headers or {})
    hasher = _resume_hash(partial, git_blob)
    advance(partial.stat().st_size if partial.exists() else 0)
    last_error = ""
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.backoff * (2 ** (attempt - 1)) * (1 + random.random() / 2))  # noqa: S311
        try:
            hasher = _transfer(opener, partial, hasher, advance)
            break
        except TransientError as exc:
            last_error = str(exc)
    else:
        raise FetchError(
            f"{what}: download failed after {policy.attempts} attempts: {last_error}",
            hint=f"check that {url} is reachable from this machine; the partial download is "
            "kept and the next build resumes it",
        )
    actual = hasher.sha256.hexdigest()
    mismatch = None
    if sha256 is not None and actual != sha256:
        mismatch = f"sha256 mismatch for {url}: expected {sha256}, got {actual}"
    elif git_blob is not None and hasher.git is not None:
        got = hasher.git.hexdigest()
        if got != git_blob.sha1:
            mismatch = f"git blob id mismatch for {url}: expected {git_blob.sha1}, got {got}"
    if mismatch is not None:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{what}: {mismatch}",
            hint="the upstream file changed or the transfer was corrupted; nothing was added "
            "to the bundle. If the change is intended, pin the new digest in the spec",
        )
    if store.has(actual):
        partial.unlink()
    else:
        partial.chmod(0o444)
        partial.replace(store.path(actual))
    return Blob(actual, store.size(actual))


class TransientError(Exception):
    """A failure worth another try (the connection dropped, the server is busy). With
    ``restart`` the partial data is no prefix of the artifact any more: start from byte 0."""

    def __init__(self, message: str, restart: bool = False) -> None:
        super().__init__(message)
        self.restart = restart


class Body(Protocol):
    def read(self, amt: int, /) -> bytes: ...

    def readinto(self, buffer: bytearray, /) -> int: ...


@dataclass
class Opened:
    """A response to read an artifact's bytes from, at the offset the opener was asked for."""

    body: Body
    close: Callable[[], None]
    resumed: bool  # the body starts at the offset asked for (else at byte 0)
    length: int | None  # bytes the body carries, when the server says
    # What reading the body raises when the connection fails (beyond OSError): retried.
    read_errors: tuple[type[BaseException], ...] = ()


# Opens the artifact at a byte offset. Raises TransientError for a failure worth retrying and
# an ApplianceError for one that is not (not found, access denied).
Opener = Callable[[int], Opened]


class _Digests:
    """The sha256 every blob is filed under, and a git object id where that is what is known."""

    def __init__(self, git_blob: GitBlob | None) -> None:
        self.git_blob = git_blob
        self.reset()

    def reset(self) -> None:
        """Forget what was hashed, in place: the retry loop keeps this one object, so a
        transfer that restarts from byte 0 and then fails still leaves it equal to the file."""
        self.sha256 = hashlib.sha256()
        self.git = None
        if self.git_blob is not None:
            # sha1 is what git names objects with; see appliance/fetchers/hf.py for what this
            # check proves and what it does not.
            self.git = hashlib.sha1(f"blob {self.git_blob.size}\0".encode())  # noqa: S324

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)


def _resume_hash(partial: Path, git_blob: GitBlob | None = None) -> _Digests:
    """Hash what an earlier, interrupted run left, so the download can continue after it."""
    hasher = _Digests(git_blob)
    if partial.exists():
        with partial.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
    return hasher


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but send credentials only to the origin they were given for: hubs
    redirect downloads to CDNs on other hosts, which get signed URLs and must not see a token.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


_OPENER = urllib.request.build_opener(_SameOriginCredentials)


def _url_opener(url: str, timeout: float, headers: Mapping[str, str]) -> Opener:
    def open_at(offset: int) -> Opened:
        # The spec admits only http(s) and file:// URLs, and file:// never reaches this point.
        agent = {"User-Agent": f"appliance/{__version__}", **headers}
        request = urllib.request.Request(url, headers=agent)  # noqa: S310
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = _OPENER.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # The partial file is not a prefix of what the server has: start again.
                raise TransientError(
                    f"HTTP 416 resuming at byte {offset}; restarting", restart=True
                ) from exc
            if exc.code in _RETRY_STATUS:
                raise TransientError(f"HTTP {exc.code} {exc.reason}") from exc
            if exc.code in (401, 403):
                raise FetchError(
                    f"HTTP {exc.code} {exc.reason} for {url}",
                    hint="the server wants credentials or refuses them: for a gated or private "
                    "Hugging Face repository set HF_TOKEN to a token that has access",
                ) from exc
            raise FetchError(
                f"HTTP {exc.code} {exc.reason} for {url}",
                hint="the URL in the spec is wrong or the artifact was removed upstream",
            ) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        length = response.headers.get("Content-Length")
        return Opened(
            body=response,
            close=response.close,
            resumed=response.status == 206,
            length=int(length) if length is not None and response.status in (200, 206) else None,
            read_errors=(http.client.HTTPException,),
        )

    return open_at


def _transfer(opener: Opener, partial: Path, hasher: _Digests, advance: Advance) -> _Digests:
    offset = partial.stat().st_size if partial.exists() else 0
    if not offset:
        hasher.reset()  # a restart may have dropped what an earlier attempt hashed
    try:
        opened = opener(offset)
    except TransientError as exc:
        if exc.restart and offset:
            partial.unlink()
            advance(-offset)
        raise
    try:
        if offset and not opened.resumed:
            # The server ignored the Range header: the body is the whole file again.
            advance(-offset)
            hasher.reset()
            mode = "wb"
        else:
            mode = "ab" if offset else "wb"
        dropped: tuple[type[BaseException], ...] = (OSError, *opened.read_errors)
        try:
            with partial.open(mode) as out, _transfer_slot() as spare_core:
                if spare_core:
                    _pump(opened.body, out, hasher, advance)
                else:
                    _copy(opened.body, out, hasher, advance)
        except dropped as exc:
            raise TransientError(f"transfer interrupted: {type(exc).__name__}: {exc}") from exc
        if opened.length is not None:
            expected_end = opened.length + (offset if opened.resumed else 0)
            if partial.stat().st_size < expected_end:
                raise TransientError(
                    f"connection closed at byte {partial.stat().st_size} of {expected_end}"
                )
    finally:
        opened.close()
    return hasher


@contextmanager
def _transfer_slot() -> Iterator[bool]:
    """Count this transfer; say whether a core is free for a second thread. A pipelined
    transfer keeps two cores busy: worth it for one big download, a loss when several
    downloads already share the cores (measured: benchmarks/bundle_build.py)."""
    global _active
    with _active_lock:
        _active += 1
        spare = 2 * _active <= (os.cpu_count() or 1)
    try:
        yield spare
    finally:
        with _active_lock:
            _active -= 1


def _copy(response: Body, out: IO[bytes], hasher: _Digests, advance: Advance) -> None:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while count := response.readinto(buffer):
        out.write(view[:count])
        hasher.update(view[:count])
        advance(count)


def _pump(response: Body, out: IO[bytes], hasher: _Digests, advance: Advance) -> None:
    """Receive on this thread; hash and write on another. Both release the GIL, so receiving
    overlaps hashing (the slowest step: ~1 s per GiB on one core) instead of taking turns.

    Every chunk received before a failure is written and hashed before this returns, so the
    partial file and the digest state stay equal and a retry resumes from exactly there.
    """
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
    failures: list[BaseException] = []

    def drain() -> None:
        while (chunk := chunks.get()) is not None:
            if failures:
                continue  # keep taking, so the receiver never blocks on a full queue
            try:
                out.write(chunk)
                hasher.update(chunk)
            except BaseException as exc:  # handed to the receiving thread below
                failures.append(exc)

    worker = threading.Thread(target=drain, name="fetch-write", daemon=True)
    worker.start()
    try:
        while not failures and (chunk := response.read(CHUNK)):
            chunks.put(chunk)
            advance(len(chunk))
    finally:
        chunks.put(None)
        worker.join()
    if failures:
        raise failures[0]


def _copy_local(
    url: str, sha256: str | None, store: BlobStore, what: str, advance: Advance
) -> Blob:
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


__all__ = [
    "GitBlob",
    "Opened",
    "Opener",
    "RetryPolicy",
    "TransientError",
    "content_length",
    "fetch_to_store",
]
