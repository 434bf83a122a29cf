"""One-file bundles: pack a bundle directory into a tar stream, and unpack one safely.

Packing streams file by file (no temporary copy). The trust files go first, so a reader checks
the signature before it reads a single payload byte. Unpacking is ``verify.open_bundle`` on the
archive: every header is checked against the signed manifest and every member hashed while it
streams into a staging directory, which becomes the destination only when everything verified.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from appliance.bundle import layout
from appliance.bundle.manifest import parse_manifest
from appliance.bundle.verify import VerifyReport, open_bundle
from appliance.errors import BundleLayoutError

_EPOCH = 315532800


def pack(bundle: Path, out: BinaryIO, advance: Callable[[int], None] | None = None) -> int:
    """Write ``bundle`` as an uncompressed tar to ``out``; returns the number of members.

    Only the trust files and the files the manifest lists are packed, in a fixed order with
    fixed owners and times, so the same bundle always packs to the same bytes.
    """
    layout.scan_layout(bundle)
    data = (bundle / layout.MANIFEST).read_bytes()
    manifest = parse_manifest(data, f"{bundle}/{layout.MANIFEST}")
    names = [name for name in layout.PACK_FIRST if (bundle / name).is_file()]
    names += sorted(manifest.shipped())
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            path = bundle / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = layout.file_mode(name)
            info.mtime = _EPOCH
            with path.open("rb") as handle:
                tar.addfile(info, _Counting(handle, advance))
    return len(names)


class _Counting:
    def __init__(self, handle: BinaryIO, advance: Callable[[int], None] | None) -> None:
        self._handle = handle
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self._advance is not None:
            self._advance(len(data))
        return data


def unpack(archive: Path, destination: Path, pubkey: Path) -> VerifyReport:
    """Verify and extract ``archive`` into ``destination`` (which must not exist), atomically:
    each member is hashed as it is written, and the destination appears only if all matched."""
    if destination.exists():
        raise BundleLayoutError(f"{destination} already exists", hint="unpack into a new directory")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open_bundle(archive, pubkey) as bundle:
        return bundle.extract(destination)
