"""An S3 client in the standard library only: path-style requests, signature version 4, TLS
against a CA file. It speaks the subset of the API the appliance's store uses (buckets, objects
named by sha256, multipart uploads, listing, presigned GETs) and nothing MinIO-specific, so any
S3 server (MinIO, SeaweedFS, Garage, Ceph RGW) can be the store. ``appliance_store`` (beside this
file) holds the store's layout and the publish and audit logic; read its docstring first.

Uploads sign the payload with its sha256 (x-amz-content-sha256), which for a model file is the
digest the bundle's manifest already names: the server refuses bytes that do not hash to it.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import os
import re
import ssl
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

CHUNK = 1 << 20
PART_SIZE = 512 << 20  # S3 allows at most 5 GiB in one PUT and 10,000 parts
BLOB_PREFIX = "sha256/"
META_SHA256 = "sha256"
HEX = re.compile(r"^[0-9a-f]{64}$")
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_UNSIGNED = "UNSIGNED-PAYLOAD"


class StoreError(Exception):
    """A store request failed, or an object does not match its digest."""


class ObjectInfo(NamedTuple):
    key: str
    size: int
    sha256: str | None  # from the object's metadata (None: it carries none)


def blob_key(sha256: str) -> str:
    if not HEX.match(sha256):
        raise StoreError(f"not a sha256 digest: {sha256!r}")
    return BLOB_PREFIX + sha256


def _copy_hashing(reader: Any, writer: IO[bytes] | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: reader.read(CHUNK), b""):
        digest.update(block)
        if writer is not None:
            writer.write(block)
        size += len(block)
    return digest.hexdigest(), size


def write_checked(reader: Any, dest: str, sha256: str, source: str) -> None:
    """Write ``dest`` from ``reader`` through a partial file that replaces it only if the
    bytes match ``sha256``: a bad transfer never becomes visible."""
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    partial = f"{dest}.partial"
    try:
        with open(partial, "wb") as writer:
            got, _ = _copy_hashing(reader, writer)
        if got != sha256:
            raise StoreError(f"{source}: sha256 {got}, expected {sha256}")
        os.replace(partial, dest)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise StoreError(f"bad object name {key!r}")
    return key


class _Part:
    """A bounded reader over a window of a file, for one part of an upload."""

    def __init__(self, handle: IO[bytes], length: int) -> None:
        self._handle, self._left = handle, length

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(size)
        self._left -= len(data)
        return data


class S3Store:
    """Path-style S3 with signature version 4: the subset of the API the store uses."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = "us-east-1",
        ca_file: str | None = None,
        buckets: dict[str, str] | None = None,
        part_size: int = PART_SIZE,
        timeout: float = 300,
    ) -> None:
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise StoreError(f"endpoint must be http(s)://HOST[:PORT], not {endpoint!r}")
        self.endpoint = f"{url.scheme}://{url.netloc}"
        self._tls = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._netloc = url.netloc
        self._access, self._secret, self._region = access_key, secret_key, region
        self._context = ssl.create_default_context(cafile=ca_file) if self._tls else None
        self.buckets = dict(buckets or {"models": "appliance-models"})
        self.part_size, self.timeout = part_size, timeout

    # -- the store interface -----------------------------------------------------------------

    def bucket(self, purpose: str) -> str:
        try:
            return self.buckets[purpose]
        except KeyError:
            raise StoreError(f"no bucket for purpose {purpose!r}") from None

    def ensure_bucket(self, purpose: str) -> bool:
        """Create the purpose's bucket if missing; True when this call created it."""
        bucket = self.bucket(purpose)
        if self._request("HEAD", f"/{bucket}", ok=(200, 404))[0] == 200:
            return False
        self._request("PUT", f"/{bucket}", ok=(200,))
        return True

    def stat(self, purpose: str, sha256: str) -> ObjectInfo | None:
        return self.stat_key(purpose, blob_key(sha256))

    def stat_key(self, purpose: str, key: str) -> ObjectInfo | None:
        status, headers, _ = self._request("HEAD", self._path(purpose, key), ok=(200, 404))
        if status == 404:
            return None
        meta = headers.get(f"x-amz-meta-{META_SHA256}")
        return ObjectInfo(key, int(headers.get("content-length", "0")), meta)

    def put(
        self, purpose: str, sha256: str, path: str, metadata: dict[str, str] | None = None
    ) -> None:
        """Upload ``path`` as the object of ``sha256``; the server checks the bytes against it
        (a single PUT) or each part's own sha256 (parts)."""
        size = os.path.getsize(path)
        key = blob_key(sha256)
        meta = {f"x-amz-meta-{k.lower()}": v for k, v in (metadata or {}).items()}
        meta[f"x-amz-meta-{META_SHA256}"] = sha256
        with open(path, "rb") as handle:
            if size <= self.part_size:
                headers = {**meta, "content-length": str(size)}
                self._request("PUT", self._path(purpose, key), headers, handle, sha256, (200,))
            else:
                self._put_parts(purpose, key, handle, size, meta)

    def put_bytes(self, purpose: str, key: str, data: bytes, content_type: str = "") -> None:
        headers = {"content-length": str(len(data))}
        if content_type:
            headers["content-type"] = content_type
        digest = hashlib.sha256(data).hexdigest()
        self._request("PUT", self._path(purpose, check_key(key)), headers, data, digest, (200,))

    def get_bytes(self, purpose: str, key: str) -> bytes | None:
        status, _, body = self._request("GET", self._path(purpose, check_key(key)), ok=(200, 404))
        return body if status == 200 else None

    def read_digest(self, purpose: str, sha256: str) -> str:
        """The sha256 of the object's bytes as the server sends them (a full read)."""
        conn, response = self._open("GET", self._path(purpose, blob_key(sha256)), ok=(200,))
        try:
            digest = hashlib.sha256()
            for block in iter(lambda: response.read(CHUNK), b""):
                digest.update(block)
            return digest.hexdigest()
        finally:
            conn.close()

    def fetch(self, purpose: str, sha256: str, dest: str) -> None:
        conn, response = self._open("GET", self._path(purpose, blob_key(sha256)), ok=(200,))
        try:
            write_checked(response, dest, sha256, f"{self.bucket(purpose)}/{blob_key(sha256)}")
        finally:
            conn.close()

    def remove(self, purpose: str, key: str) -> None:
        self._request("DELETE", self._path(purpose, check_key(key)), ok=(204, 200))

    def list(self, purpose: str, prefix: str = BLOB_PREFIX) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (size from the listing; no metadata: ``stat`` reads it)."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            body = self._request("GET", f"/{self.bucket(purpose)}", query=query, ok=(200,))[2]
            root = ET.fromstring(body)  # noqa: S314 - our own store's answer, on the site CA
            for item in root.iter(f"{_S3_NS}Contents"):
                yield ObjectInfo(
                    item.findtext(f"{_S3_NS}Key") or "",
                    int(item.findtext(f"{_S3_NS}Size") or 0),
                    None,
                )
            token = root.findtext(f"{_S3_NS}NextContinuationToken") or ""
            if root.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
                return

    def url(self, purpose: str, sha256: str, expires: int = 3600) -> str:
        """A presigned GET of the object, for a host that holds no credentials."""
        path = self._path(purpose, blob_key(sha256))
        now = datetime.datetime.now(datetime.UTC)
        stamp, scope = self._scope(now)
        query = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{self._access}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(expires),
            "X-Amz-SignedHeaders": "host",
        }
        canonical_query = _canonical_query(query)
        request = "\n".join(
            [
                "GET",
                _quote(path, "/~"),
                canonical_query,
                f"host:{self._netloc}\n",
                "host",
                _UNSIGNED,
            ]
        )
        signature = self._signature(now, stamp, scope, request)
        return f"{self.endpoint}{_quote(path, '/~')}?{canonical_query}&X-Amz-Signature={signature}"

    # -- signature version 4 -----------------------------------------------------------------

    def _path(self, purpose: str, key: str) -> str:
        return f"/{self.bucket(purpose)}/{key}"

    def _scope(self, now: datetime.datetime) -> tuple[str, str]:
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        return stamp, f"{stamp[:8]}/{self._region}/s3/aws4_request"

    def _signature(self, now: datetime.datetime, stamp: str, scope: str, request: str) -> str:
        key = ("AWS4" + self._secret).encode()
        for part in (now.strftime("%Y%m%d"), self._region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        text = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(request.encode()).hexdigest()]
        )
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def _signed_headers(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], payload: str
    ) -> dict[str, str]:
        now = datetime.datetime.now(datetime.UTC)
        stamp, scope = self._scope(now)
        signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        signed.update({"host": self._netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload})
        names = sorted(signed)
        request = "\n".join(
            [
                method,
                _quote(path, "/~"),
                _canonical_query(query),
                "".join(f"{n}:{signed[n]}\n" for n in names),
                ";".join(names),
                payload,
            ]
        )
        signature = self._signature(now, stamp, scope, request)
        signed["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._access}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return signed

    def _connection(self) -> http.client.HTTPConnection:
        if self._tls:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._context, blocksize=CHUNK
            )
        return http.client.HTTPConnection(
            self._host, self._port, timeout=self.timeout, blocksize=CHUNK
        )

    def _open(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
        payload: str | None = None,
        ok: tuple[int, ...] = (200,),
        query: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        query = query or {}
        if payload is None:
            payload = hashlib.sha256(body if isinstance(body, bytes) else b"").hexdigest()
        signed = self._signed_headers(method, path, query, headers or {}, payload)
        target = _quote(path, "/~") + (f"?{_canonical_query(query)}" if query else "")
        conn = self._connection()
        try:
            conn.request(method, target, body=body, headers=signed)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise StoreError(f"{method} {self.endpoint}{path}: {exc}") from exc
        if response.status not in ok:
            detail = response.read(4096) if method != "HEAD" else b""
            conn.close()
            code = _xml_text(detail, "Code") or response.reason
            message = _xml_text(detail, "Message")
            raise StoreError(
                f"{method} {self.endpoint}{path}: HTTP {response.status} {code}"
                + (f": {message}" if message else "")
            )
        return conn, response

    def _request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
        payload: str | None = None,
        ok: tuple[int, ...] = (200,),
        query: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn, response = self._open(method, path, headers, body, payload, ok, query)
        try:
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def _put_parts(
        self, purpose: str, key: str, handle: IO[bytes], size: int, meta: dict[str, str]
    ) -> None:
        path = self._path(purpose, key)
        body = self._request("POST", path, meta, b"", query={"uploads": ""})[2]
        upload = _xml_text(body, "UploadId")
        if not upload:
            raise StoreError(f"POST {path}?uploads: no UploadId in the answer")
        try:
            etags = []
            for number, offset in enumerate(range(0, size, self.part_size), start=1):
                length = min(self.part_size, size - offset)
                handle.seek(offset)
                digest, _ = _copy_hashing(_Part(handle, length), None)
                handle.seek(offset)
                query = {"partNumber": str(number), "uploadId": upload}
                headers = {"content-length": str(length)}
                _, answer, _ = self._request(
                    "PUT", path, headers, _Part(handle, length), digest, (200,), query
                )
                etags.append(answer.get("etag", ""))
            done = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
                for n, e in enumerate(etags, start=1)
            )
            xml = f"<CompleteMultipartUpload>{done}</CompleteMultipartUpload>".encode()
            self._request("POST", path, {}, xml, query={"uploadId": upload})
        except BaseException:
            self._request("DELETE", path, ok=(204, 200, 404), query={"uploadId": upload})
            raise


def _quote(value: str, safe: str = "~") -> str:
    return urllib.parse.quote(value, safe=safe)


def _canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))


def _xml_text(body: bytes, tag: str) -> str:
    match = re.search(rb"<%s>([^<]*)</%s>" % (tag.encode(), tag.encode()), body or b"")
    return match.group(1).decode() if match else ""
