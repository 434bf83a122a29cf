"""The registry's layout and its client: seeding, read-back and audit, standard library only.

The registry role's modules run this on the depot with python3 alone; the installer imports the
same file (``appliance.install.registry``), so the layout is written once.

Layout. An image keeps its upstream name under the registry, so that one rewrite rule per
upstream registry maps every image (containerd's ``hosts.toml`` with ``override_path``, k3s's
``registries.yaml`` ``rewrite``):

    ghcr.io/org/app:1@sha256:<d>   ->  <registry>/ghcr.io/org/app@sha256:<d>
    nginx@sha256:<d>               ->  <registry>/docker.io/library/nginx@sha256:<d>
    127.0.0.1:5000/x/y@sha256:<d>  ->  <registry>/127.0.0.1_5000/x/y@sha256:<d>

The first path component (the *namespace*) is the upstream host, lowercased, with ``_`` for the
``:`` before a port (``:`` cannot appear in a repository name). Docker Hub's short names are
normalised as docker and containerd do. Images are pushed by digest only: no tags.

Access. The registry speaks HTTPS (the site CA) with basic authentication. Two identities: the
push identity seeds (only the installer holds it); the pull identity may only GET and HEAD.
Their credentials live in root-only files in the containers-auth.json format
(``{"auths": {"HOST:PORT": {"auth": base64("user:password")}}}``), which skopeo, podman and
docker read as they are.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import subprocess
from dataclasses import dataclass, field
from typing import Any

DOCKER_HUB = "docker.io"
# The distribution spec's path component.
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)

__all__ = [
    "DOCKER_HUB",
    "Client",
    "RegistryError",
    "audit",
    "auth_file",
    "namespace",
    "read_auth_file",
    "repository",
    "seed_image",
    "split_reference",
    "upstream_host",
]


class RegistryError(Exception):
    """A registry problem, in words an operator can act on (never a credential)."""


def split_reference(ref: str) -> tuple[str, str, str]:
    """``[host/]path[:tag]@sha256:...`` -> (upstream host, path, digest), normalised as docker
    does: no host means Docker Hub, and a one-component path there is under ``library/``."""
    name, at, digest = ref.partition("@")
    if not at or not _DIGEST_RE.match(digest):
        raise RegistryError(f"image {ref}: not pinned by @sha256:<64 hex>")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name.rpartition(":")[0]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return host, path, digest


def upstream_host(ref: str) -> str:
    return split_reference(ref)[0]


def namespace(host: str) -> str:
    """The registry path component that holds ``host``'s images; raises ``RegistryError`` for a
    host no repository name can carry (an IPv6 literal, say): such an image gets no mirror rule."""
    mapped = host.lower().replace(":", "_")
    if not _COMPONENT_RE.match(mapped):
        raise RegistryError(
            f"upstream registry {host!r} cannot be a repository path component in the local "
            "registry, so no mirror rule can map its images"
        )
    return mapped


def repository(ref: str) -> str:
    """The repository ``ref`` lives in inside the local registry."""
    host, path, _digest = split_reference(ref)
    return f"{namespace(host)}/{path}"


def auth_file(address: str, username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {address: {"auth": token}}}, indent=2) + "\n"


def read_auth_file(path: str, address: str) -> tuple[str, str]:
    """(username, password) for ``address`` from a containers-auth.json file."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = json.load(handle)["auths"][address]["auth"]
        username, _, password = base64.b64decode(token).decode().partition(":")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RegistryError(
            f"{path}: no credentials for {address} ({type(error).__name__})"
        ) from None
    return username, password


@dataclass
class Client:
    """HTTPS to one registry, checked against ``ca_file``, with basic authentication."""

    address: str  # HOST:PORT
    ca_file: str
    username: str
    password: str = field(repr=False)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        try:
            self._context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as error:
            raise RegistryError(f"cannot read the CA certificate {self.ca_file}: {error}") from None
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._connection: http.client.HTTPSConnection | None = None
        self._reused = False

    def request(
        self, method: str, path: str, accept: tuple[str, ...] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a kept-alive connection (a seed makes several per image: a TLS
        handshake each would cost more than the requests), opened again once if it dropped."""
        headers = {"Authorization": self._auth}
        if accept:
            headers["Accept"] = ", ".join(accept)
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(method, path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                return response.status, dict(response.getheaders()), body
            except ssl.SSLCertVerificationError as error:
                self._close()
                raise RegistryError(
                    f"the registry at {self.address} presents a certificate that the CA in "
                    f"{self.ca_file} did not sign ({error.verify_message}); nothing was pushed"
                ) from None
            except (http.client.HTTPException, OSError) as error:
                self._close()
                if attempt == 2 or not self._reused:
                    raise RegistryError(
                        f"cannot reach the registry at {self.address}: {error}"
                    ) from None
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            host, _, port = self.address.rpartition(":")
            self._connection = http.client.HTTPSConnection(
                host, int(port), timeout=self.timeout, context=self._context
            )
            self._reused = False
        else:
            self._reused = True
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def has_manifest(self, repo: str, digest: str) -> bool:
        status, headers, _ = self.request("HEAD", f"/v2/{repo}/manifests/{digest}", MANIFEST_TYPES)
        if status == 404:
            return False
        _expect(status, 200, f"HEAD {repo}@{digest}")
        served = _header(headers, "Docker-Content-Digest")
        return served in (None, digest)

    def manifest(self, repo: str, digest: str) -> dict[str, Any]:
        """The manifest ``digest`` names, checked: its bytes must hash to the digest."""
        status, _, body = self.request("GET", f"/v2/{repo}/manifests/{digest}", MANIFEST_TYPES)
        _expect(status, 200, f"GET {repo}@{digest}")
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            raise RegistryError(f"{repo}@{digest}: the registry served a manifest of {actual}")
        return dict(json.loads(body))

    def blob_size(self, repo: str, digest: str) -> int | None:
        status, headers, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status != 200:
            return None
        length = _header(headers, "Content-Length")
        return int(length) if length is not None else None

    def try_push(self, repo: str) -> int:
        """Start a blob upload and cancel it: the status says whether this identity may push."""
        status, headers, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        location = _header(headers, "Location")
        if status == 202 and location:
            path = location.split(self.address, 1)[-1] if "://" in location else location
            self.request("DELETE", path)
        return status


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered.get(name.lower())


def _expect(status: int, wanted: int, what: str) -> None:
    if status in (401, 403):
        raise RegistryError(f"{what}: the registry refused these credentials (HTTP {status})")
    if status != wanted:
        raise RegistryError(f"{what}: HTTP {status}")


def read_back(client: Client, repo: str, digest: str, blobs: dict[str, int]) -> int:
    """Check the image ``digest`` in ``repo`` against the signed manifest: the manifest's bytes
    hash to the digest, and every blob it names (children of an index too) is there with its
    size, as is every blob the bundle lists for the image (``blobs``: sha256 hex -> size).
    Returns how many blobs were checked."""
    manifests: set[str] = set()
    named: dict[str, int] = {}
    pending = [digest]
    while pending:
        current = pending.pop()
        if current in manifests:
            continue
        document = client.manifest(repo, current)
        manifests.add(current)
        children = document.get("manifests")
        if isinstance(children, list):
            pending += [child["digest"] for child in children]
            continue
        for descriptor in [document.get("config", {}), *document.get("layers", [])]:
            named[descriptor["digest"].split(":", 1)[1]] = int(descriptor.get("size", -1))
    signed = {h: s for h, s in blobs.items() if f"sha256:{h}" not in manifests}
    wanted = {**named, **signed}
    for hexdigest, size in sorted(wanted.items()):
        found = client.blob_size(repo, f"sha256:{hexdigest}")
        if found is None:
            raise RegistryError(f"{repo}@{digest}: blob sha256:{hexdigest} is missing")
        if found != size:
            raise RegistryError(
                f"{repo}@{digest}: blob sha256:{hexdigest} has {found} bytes, expected {size}"
            )
    return len(manifests) + len(wanted)


def seed_image(
    client: Client,
    layout: str,
    ref: str,
    digest: str,
    blobs: dict[str, int],
    authfile: str,
    cert_dir: str,
    skopeo: str = "skopeo",
    check_only: bool = False,
) -> dict[str, Any]:
    """Copy the image ``ref`` (``digest``) from the OCI layout into its repository unless the
    registry already has that manifest, then read it back. Returns what was done."""
    repo = repository(ref)
    target = f"{client.address}/{repo}@{digest}"
    if client.has_manifest(repo, digest):
        checked = read_back(client, repo, digest, blobs)
        return {"ref": ref, "target": target, "pushed": False, "checked": checked}
    if check_only:
        return {"ref": ref, "target": target, "pushed": True, "checked": 0}
    command = [
        skopeo,
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--dest-cert-dir",
        cert_dir,
        "--dest-authfile",
        authfile,
        f"oci:{layout}:{ref}",
        f"docker://{target}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RegistryError(f"skopeo copy of {ref} to {target} failed: {result.stderr[-600:]}")
    checked = read_back(client, repo, digest, blobs)
    return {"ref": ref, "target": target, "pushed": True, "checked": checked}


def audit(client: Client, images: list[dict[str, str]]) -> dict[str, Any]:
    """What ``client`` (the pull identity) sees: each image's manifest by digest, and whether
    it may push (it must not)."""
    found = []
    for image in images:
        repo, digest = image["repository"], image["digest"]
        try:
            present = client.has_manifest(repo, digest)
            problem = None if present else "manifest not found"
            if present:
                client.manifest(repo, digest)
        except RegistryError as error:
            present, problem = False, str(error)
        found.append(
            {"ref": image["ref"], "digest": digest, "present": present, "problem": problem}
        )
    probe = images[0]["repository"] if images else "appliance/push-probe"
    return {"images": found, "push_status": client.try_push(probe)}
