"""The bundle's own content: the Ansible tree as one reproducible tar, and the SBOM."""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from appliance import __version__
from appliance.bundle.manifest import Component, FileEntry, NvidiaInfo
from appliance.errors import BuildError

ANSIBLE_TREES = ("ansible.cfg", "playbooks", "roles", "inventories")
_EPOCH = 315532800  # 1980-01-01: a fixed mtime makes the tar depend on content only


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = _EPOCH
    tar.addfile(info, io.BytesIO(data))


def ansible_content_tar(source_root: Path) -> bytes:
    """playbooks, roles, inventories and ansible.cfg from ``source_root`` (the package's
    ``ansible/`` directory): sorted, fixed owner and mtime, so equal content gives equal bytes.

    The roles use ``ansible.builtin`` only, so no collection travels with them.
    """
    files: list[tuple[str, Path]] = []
    for top in ANSIBLE_TREES:
        path = source_root / top
        if path.is_file():
            files.append((top, path))
        elif path.is_dir():
            files.extend(
                (p.relative_to(source_root).as_posix(), p)
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            )
    if not files:
        raise BuildError(
            f"no Ansible content under {source_root}",
            hint="reinstall appliance: its package data (appliance/ansible) is incomplete",
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(files):
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            _add(tar, name, path.read_bytes(), mode)
    return buffer.getvalue()


def sbom(
    name: str,
    release: str,
    spec_sha256: str,
    components: Iterable[Component],
    files: Iterable[FileEntry],
    nvidia: NvidiaInfo | None = None,
) -> dict[str, Any]:
    """A CycloneDX 1.5 document: one component per artifact, with its sha256, and the NVIDIA
    driver the repository carries as a device-driver component."""
    by_component: dict[str, list[FileEntry]] = {}
    for entry in files:
        by_component.setdefault(entry.component, []).append(entry)
    items = []
    for component in components:
        entries = by_component.get(component.name, [])
        item: dict[str, Any] = {
            "type": _cdx_type(component.kind),
            "bom-ref": component.name,
            "name": component.name,
        }
        if component.version:
            item["version"] = component.version
        purl = _purl(component)
        if purl:
            item["purl"] = purl
        if len(entries) == 1:
            item["hashes"] = [{"alg": "SHA-256", "content": entries[0].sha256}]
        if component.source:
            item["externalReferences"] = [{"type": "distribution", "url": component.source}]
        items.append(item)
    if nvidia is not None:
        items.append(_driver_component(nvidia))
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'appliance:{spec_sha256}')}",
        "version": 1,
        "metadata": {
            "tools": {
                "components": [{"type": "application", "name": "appliance", "version": __version__}]
            },
            "component": {"type": "application", "name": name, "version": release},
        },
        "components": items,
    }


def _driver_component(nvidia: NvidiaInfo) -> dict[str, Any]:
    """The driver as one component: its version, where it comes from, its kernel modules and
    the kernel ABIs the bundle carries headers for (one property each), and the packages that
    make it up (their own components carry the hashes)."""
    driver = nvidia.driver
    properties = [
        {"name": "appliance:nvidia:source", "value": driver.source},
        {"name": "appliance:nvidia:modules", "value": driver.modules},
        {"name": "appliance:nvidia:dkms-package", "value": driver.dkms_package},
        *({"name": "appliance:nvidia:kernel-abi", "value": k.abi} for k in nvidia.kernel_abis),
    ]
    return {
        "type": "device-driver",
        "bom-ref": "nvidia-driver",
        "name": "nvidia-driver",
        "version": driver.version,
        "supplier": {"name": "Debian" if driver.source == "debian" else "NVIDIA"},
        "properties": properties,
        "components": [
            {"type": "library", "name": name, "version": version, "bom-ref": f"nvidia:{name}"}
            for name, version in sorted(driver.packages.items())
        ],
    }


def _cdx_type(kind: str) -> str:
    return {"deb": "library", "wheel": "library", "model": "machine-learning-model"}.get(
        kind, "file"
    )


def _purl(component: Component) -> str | None:
    if component.kind == "deb" and component.version:
        package, _, arch = component.name.partition(":")
        return f"pkg:deb/debian/{package}@{component.version}?arch={arch}"
    if component.kind == "wheel" and component.version:
        return f"pkg:pypi/{component.name.partition(':')[0].lower()}@{component.version}"
    return None


def public_source(kind: str, source: str | None) -> str | None:
    """What a bundle may record of where an artifact came from: nothing of the build machine.

    A download URL keeps its scheme, host and path, never user information, a query or a
    fragment (a presigned URL's token lives in its query). A local path or file:// URL names
    the build machine's file system and is not recorded at all: the sha256 names the bytes.
    Identifiers stay as written: ``hf://``, ``ollama://``, ``s3://BUCKET/PREFIX`` (a bucket
    name and key prefix; the endpoint and credentials come from the build machine's AWS settings
    and are never part of it), an image reference, ``pypi``.
    """
    if source is None:
        return None
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if parts.scheme in ("hf", "ollama", "s3"):
        return source
    if "://" not in source and (kind == "image" or source == "pypi"):
        return source
    return None
