"""The rules behind the spec's fields, as plain functions that raise messages for people.

Pydantic calls them; each raises ``PydanticCustomError`` whose text says what is wrong and how
to fix it, because these strings are what users read.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic_core import PydanticCustomError

from appliance.mirrors import unmirrorable_host
from appliance.names import NAME_RE

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
GIT_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
DEB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
DEB_VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~:-]*$")
PEP503_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._,-]+\])?$")
# OCI distribution spec: repository components and tags.
REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


# A value quoted in a message: enough to recognise it, never the whole of a hostile one.
_QUOTED = 80


def err(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    shown = {
        key: f"{value[: _QUOTED - 3]}..."
        if isinstance(value, str) and len(value) > _QUOTED
        else value
        for key, value in ctx.items()
    }
    return PydanticCustomError(kind, message, shown or None)


def check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise err(
            "bad_name",
            "invalid name '{value}': use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            value=value,
        )
    return value


def check_sha256(value: str) -> str:
    if value.startswith("sha256:"):
        raise err("sha256_prefix", "write the bare hex digest, without the 'sha256:' prefix")
    if not SHA256_RE.match(value):
        raise err(
            "bad_sha256",
            "not a sha256 digest: expected 64 lowercase hex characters, got {length} characters",
            length=len(value),
        )
    return value


def check_url(value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise err(
            "bad_url_scheme",
            "unsupported URL '{value}': use one of {schemes}",
            value=value,
            schemes=", ".join(f"{s}://" for s in schemes),
        )
    if parts.username or parts.password:
        raise err(
            "url_credentials",
            "credentials in a URL end up in logs and the bundle manifest; remove them and "
            "use a netrc file on the build machine",
        )
    if parts.scheme != "file" and not parts.hostname:
        raise err("url_no_host", "URL '{value}' has no host", value=value)
    return value


def check_unique(items: list[Any], key: str, what: str) -> None:
    seen: dict[Any, int] = {}
    for index, item in enumerate(items):
        value = getattr(item, key)
        if value in seen:
            raise err(
                "duplicate",
                "duplicate {what} '{value}': entries [{first}] and [{second}] must differ",
                what=what,
                field=key,
                value=value,
                first=seen[value],
                second=index,
            )
        seen[value] = index


def check_package(item: str) -> str:
    name, eq, version = item.partition("=")
    if not DEB_NAME_RE.match(name):
        raise err(
            "bad_package",
            "'{item}' is not a Debian package name (lowercase letters, digits, '+', '-', '.'; "
            "optionally =VERSION)",
            item=item,
        )
    if eq and not DEB_VERSION_RE.match(version):
        raise err(
            "bad_package_version",
            "'{item}': the version after '=' must start with a digit",
            item=item,
        )
    return item


def check_requirement(item: str) -> str:
    project, sep, version = item.partition("==")
    if not sep or not PEP503_RE.match(project.strip()) or not version.strip():
        raise err(
            "unpinned_requirement",
            "'{item}' is not pinned: write NAME==VERSION (ranges resolve differently tomorrow)",
            item=item,
        )
    return item


def check_digest(value: str) -> str:
    """An OCI content digest, sha256 only: ``sha256:<64 hex>``."""
    algo, _, hexdigest = value.partition(":")
    if algo != "sha256" or not SHA256_RE.match(hexdigest):
        raise err(
            "bad_digest",
            "bad digest '{value}': expected sha256: followed by 64 lowercase hex characters",
            value=value,
        )
    return value


def check_image_ref(value: str) -> str:
    name, at, digest = value.partition("@")
    if not at:
        raise err(
            "digest_missing",
            "digest missing: pin images by @sha256:<64 hex> (find it with "
            "`skopeo inspect --format '{{.Digest}}' docker://{ref}`)",
            ref=value,
        )
    check_digest(digest)
    repo, tag = name, None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = name.rpartition(":")
    if tag is not None and not TAG_RE.match(tag):
        raise err("bad_tag", "invalid tag '{tag}'", tag=tag)
    components = repo.split("/")
    # The first component is a registry host when it has a '.' or ':' or is localhost.
    if len(components) > 1 and (
        "." in components[0] or ":" in components[0] or components[0] == "localhost"
    ):
        components = components[1:]
    bad = [c for c in components if not REPO_COMPONENT_RE.match(c)]
    if not repo or bad:
        raise err(
            "bad_repository",
            "invalid repository '{repo}': use lowercase letters, digits and separators",
            repo=repo,
        )
    host = unmirrorable_host(value)
    if host is not None:
        raise err(
            "no_mirror_rule",
            "image '{ref}' comes from registry '{host}', which no mirror rule can name: the "
            "local registry, containerd's hosts.toml and k3s's registries.yaml name an upstream "
            "by a lowercase hostname or IPv4 address with an optional port",
            ref=name,
            host=host,
        )
    return value
