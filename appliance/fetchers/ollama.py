"""ollama: a model from a registry that speaks the OCI distribution API, as Ollama's does.

The manifest is fetched by tag and must hash to the digest the spec pins; then its config and
layers (weights, template, parameters, license) are fetched by digest, each checked while it
streams, through the same downloader, cache and blob store as every other artifact.

The install side lays out ``OLLAMA_MODELS`` by placing each file at its manifest name:
``manifests/<registry>/<namespace>/<model>/<tag>`` (the manifest's exact bytes) and
``blobs/sha256-<hex>`` (config and layers), which is Ollama's own layout.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from appliance.bundle.layout import unsafe_reason
from appliance.errors import ChecksumMismatchError, FetchError
from appliance.fetchers.download import Fetched, Fetcher, Wanted
from appliance.fetchers.local_models import ModelFile, ModelsFetched, models_part
from appliance.fetchers.source import Job, Part, Request
from appliance.spec.models import OllamaModel

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
# Ollama's registry serves Docker's schema 2 manifest; the OCI one is the same shape.
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True)
class OllamaRef:
    registry: str  # host[:port]
    namespace: str
    model: str
    tag: str

    @property
    def scheme(self) -> str:
        # Plain http only for a registry on 127.0.0.0/8 (tests, a local mirror on this
        # machine); anything that crosses a network is https.
        host = self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry
        try:
            return "http" if ipaddress.ip_address(host) in _LOOPBACK else "https"
        except ValueError:
            return "https"

    @property
    def repository_url(self) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.namespace}/{self.model}"

    @property
    def manifest_name(self) -> str:
        return f"manifests/{self.registry}/{self.namespace}/{self.model}/{self.tag}"


def parse_ref(model: OllamaModel) -> OllamaRef:
    """ollama://[REGISTRY/]NAMESPACE/MODEL:TAG, as Ollama reads it (``llama3:8b`` is
    registry.ollama.ai/library/llama3:8b)."""
    ref = model.source.removeprefix("ollama://")
    name, _, tag = ref.rpartition(":")
    parts = name.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_REGISTRY, *parts]
    parsed = (
        OllamaRef(registry=parts[0], namespace=parts[1], model=parts[2], tag=tag)
        if len(parts) == 3 and all(parts) and tag
        else None
    )
    reason = unsafe_reason(parsed.manifest_name) if parsed else "not REGISTRY/NAMESPACE/MODEL:TAG"
    if parsed is None or reason is not None or "@" in ref:
        raise FetchError(
            f"model {model.name}: cannot read '{model.source}' ({reason})",
            hint="write ollama://[REGISTRY/]NAMESPACE/MODEL:TAG and pin the manifest in digest",
        )
    return parsed


def fetch_ollama_model(
    model: OllamaModel, fetcher: Fetcher
) -> tuple[list[ModelFile], list[Fetched]]:
    """Fetch the pinned manifest, then every blob it names, into the fetcher's store."""
    ref = parse_ref(model)
    pinned = model.digest.removeprefix("sha256:")
    accept = (("Accept", ", ".join(MANIFEST_TYPES)),)
    label = f"model {model.name} manifest"
    try:
        (manifest,) = fetcher.fetch_all(
            [Wanted(label, f"{ref.repository_url}/manifests/{ref.tag}", pinned, headers=accept)]
        )
    except ChecksumMismatchError as exc:
        raise ChecksumMismatchError(
            f"model {model.name}: the manifest of {model.source} is not the pinned one "
            f"({exc.message.rpartition(': ')[2]})",
            hint="the tag now names another manifest; if that is intended, pin its digest in "
            "models[].digest. Nothing was added to the bundle",
        ) from exc
    landing = fetcher.cache or fetcher.store
    document = _parse(model, landing.path(pinned).read_bytes())
    blobs: dict[str, int] = {}
    for descriptor in [document["config"], *document["layers"]]:
        hexdigest, size = _descriptor(model, descriptor)
        blobs[hexdigest] = size
    fetched = fetcher.fetch_all(
        Wanted(
            f"model {model.name} sha256:{hexdigest[:12]}",
            f"{ref.repository_url}/blobs/sha256:{hexdigest}",
            hexdigest,
            size,
        )
        for hexdigest, size in blobs.items()
    )
    files = [ModelFile(ref.manifest_name, pinned, manifest.size)]
    files += [ModelFile(f"blobs/sha256-{item.sha256}", item.sha256, item.size) for item in fetched]
    return files, [manifest, *fetched]


def _parse(model: OllamaModel, data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise FetchError(
            f"model {model.name}: the manifest of {model.source} is not JSON",
            hint="is the registry an OCI distribution registry?",
        ) from exc
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    if (
        not isinstance(document, dict)
        or document.get("schemaVersion") != 2
        or (media_type is not None and media_type not in MANIFEST_TYPES)
        or not isinstance(document.get("config"), dict)
        or not isinstance(document.get("layers"), list)
    ):
        raise FetchError(
            f"model {model.name}: the manifest of {model.source} is not an image manifest "
            f"(mediaType {media_type})",
            hint="pin the digest of a single model's manifest, not of an index",
        )
    return document


def _descriptor(model: OllamaModel, descriptor: Any) -> tuple[str, int]:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    size = descriptor.get("size") if isinstance(descriptor, dict) else None
    found = _DIGEST.match(digest) if isinstance(digest, str) else None
    if found is None or not isinstance(size, int) or size < 0:
        raise FetchError(
            f"model {model.name}: the manifest of {model.source} names a blob without a "
            f"sha256 digest and size ({digest!r})",
            hint="only sha256 blobs can be checked and laid out as OLLAMA_MODELS/blobs",
        )
    return found.group(1), size


class OllamaModelsSource:
    """ollama:// models: the pinned manifest, then every blob it names."""

    def check(self, request: Request) -> list[OllamaModel] | None:
        models = [m for m in request.spec.models if isinstance(m, OllamaModel)]
        for model in models:
            parse_ref(model)
        return models or None

    def fetch(self, job: Job, plan: list[OllamaModel]) -> ModelsFetched:
        fetched: ModelsFetched = []
        for model in plan:
            files, _ = fetch_ollama_model(model, job.fetcher)
            fetched.append((model, model.digest, files))
        return fetched

    def describe(self, job: Job, fetched: ModelsFetched) -> Part:
        return models_part(fetched)
