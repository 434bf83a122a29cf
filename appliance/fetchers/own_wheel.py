"""appliance's own wheel, written from the installed distribution: no source tree, no build
backend.

The bundle's installer must carry the appliance that built it. Whether appliance runs from a
checkout (an editable install) or from a wheel (pip, pipx), what it is made of is at hand: its
metadata (``importlib.metadata``) and its package directory. The wheel is written directly
with zipfile: files sorted, fixed timestamps, fixed modes (executable bits kept), so equal
content gives identical bytes, and a RECORD with every file's sha256 as pip checks it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import BuildError

DIST = "appliance"
# 1980-01-01, the earliest time a zip can hold: the wheel depends on content only.
_EPOCH = (1980, 1, 1, 0, 0, 0)
# Bump when the writer's output changes for the same input: it is part of the cache key.
WRITER_VERSION = "1"
# Copied from the installed dist-info; WHEEL and RECORD are written for the wheel itself.
_METADATA_FILES = ("METADATA", "entry_points.txt")
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class WheelFile:
    name: str  # path inside the wheel
    data: bytes
    executable: bool


@dataclass(frozen=True)
class OwnDistribution:
    """What appliance's wheel is made of, read from the running installation."""

    name: str
    version: str
    metadata: dict[str, bytes]  # dist-info file name -> bytes
    package: Path

    @property
    def filename(self) -> str:
        return f"{_normalize(self.name)}-{self.version}-py3-none-any.whl"

    @property
    def dist_info(self) -> str:
        return f"{_normalize(self.name)}-{self.version}.dist-info"


def own_distribution() -> OwnDistribution:
    """appliance's installed metadata and package directory; raises BuildError when appliance
    runs without being installed (e.g. from a source tree on PYTHONPATH)."""
    import appliance

    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BuildError(
            "appliance is not installed as a Python distribution, so its own wheel for the "
            "bundle's installer cannot be written",
            hint="install it: pip install appliance (or pip install -e . in a checkout)",
        ) from exc
    metadata = {}
    for name in _METADATA_FILES:
        # An egg-info (setuptools' develop mode, or a checkout on sys.path) calls it PKG-INFO.
        text = dist.read_text(name) or (dist.read_text("PKG-INFO") if name == "METADATA" else None)
        if text is not None:
            metadata[name] = text.encode()
    if "METADATA" not in metadata:
        raise BuildError(
            f"the installed appliance {dist.version} has no METADATA",
            hint="reinstall appliance: pip install --force-reinstall appliance",
        )
    headers = metadata_headers(metadata["METADATA"].decode())
    return OwnDistribution(
        name=(headers.get("Name") or [DIST])[0],
        version=(headers.get("Version") or [dist.version])[0],
        metadata=metadata,
        package=Path(appliance.__file__).resolve().parent,
    )


def metadata_headers(metadata: str) -> dict[str, list[str]]:
    """The header fields of a METADATA file (all one-line fields in the core metadata); read
    directly, as the email parser behind ``Distribution.metadata`` costs a millisecond each."""
    fields: dict[str, list[str]] = {}
    for line in metadata.split("\n\n", 1)[0].splitlines():
        name, colon, value = line.partition(":")
        if colon and not line[:1].isspace():
            fields.setdefault(name.strip(), []).append(value.strip())
    return fields


def package_files(package: Path) -> list[WheelFile]:
    """Every file of the package directory, as it goes into the wheel: byte-code caches are
    left out (pip compiles on install); sorted, so the order never depends on the disk."""
    files = []
    for directory, dirs, names in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            path = Path(directory, name)
            if path.suffix in _SKIP_SUFFIXES or not path.is_file():
                continue
            arcname = f"{package.name}/{path.relative_to(package).as_posix()}"
            files.append(WheelFile(arcname, path.read_bytes(), bool(path.stat().st_mode & 0o111)))
    return sorted(files, key=lambda item: item.name)


def cache_key(dist: OwnDistribution, files: list[WheelFile]) -> str:
    """A digest of everything the wheel is made from, and of the writer."""
    digest = hashlib.sha256(f"own-wheel {WRITER_VERSION} {dist.filename}\n".encode())
    for name, data in sorted(dist.metadata.items()):
        digest.update(f"{name} {hashlib.sha256(data).hexdigest()}\n".encode())
    for item in files:
        line = f"{item.name} {int(item.executable)} {hashlib.sha256(item.data).hexdigest()}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def write_wheel(dist: OwnDistribution, files: list[WheelFile]) -> bytes:
    """The wheel's bytes: the package files, then the dist-info (METADATA, entry points,
    WHEEL, RECORD last, as the wheel spec recommends)."""
    wheel_meta = (
        "Wheel-Version: 1.0\n"
        f"Generator: appliance {dist.version}\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    ).encode()
    members = [
        *files,
        *(WheelFile(f"{dist.dist_info}/{n}", d, False) for n, d in sorted(dist.metadata.items())),
        WheelFile(f"{dist.dist_info}/WHEEL", wheel_meta, False),
    ]
    record = io.StringIO()
    rows = csv.writer(record, lineterminator="\n")
    for member in members:
        rows.writerow((member.name, _record_hash(member.data), len(member.data)))
    rows.writerow((f"{dist.dist_info}/RECORD", "", ""))
    members.append(WheelFile(f"{dist.dist_info}/RECORD", record.getvalue().encode(), False))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for member in members:
            info = zipfile.ZipInfo(member.name, date_time=_EPOCH)
            info.create_system = 3  # Unix: the mode below is meaningful
            info.external_attr = (0o100755 if member.executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, member.data, compresslevel=6)
    return buffer.getvalue()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def _normalize(name: str) -> str:
    """A project name as wheel file names spell it (PEP 427/503: runs of -_. become _)."""
    return re.sub(r"[-_.]+", "_", name).lower()
