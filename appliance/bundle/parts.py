"""Split a packed bundle into parts for removable media, and join them back safely.

Parts are written while the archive streams (no full-size temporary file), each hashed as it
is written. The index (``NAME.parts.json``) lists every part with its size and sha256. Joining
checks every part against the index first, naming each missing or corrupt one, and only then
streams them, in order, into the archive reader (which checks the signature and every file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.bundle.store import CHUNK
from appliance.errors import BundleCorruptError, BundleLayoutError, Problem

INDEX_SUFFIX = ".parts.json"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'4G', '700M', '1.5G', '4GiB' -> bytes (binary units, as media are labelled)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"'{text}' is not a size: use e.g. 700M, 4G or 25G")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 1 << 20:
        raise ValueError(f"'{text}' is below 1M; parts that small only add overhead")
    return size


@dataclass(frozen=True)
class Part:
    name: str
    size: int
    sha256: str


class PartWriter:
    """A write-only file that spreads what it receives over ``archive``.001, .002, ..."""

    def __init__(self, archive: Path, max_part_size: int) -> None:
        self.archive = archive
        self.max_part_size = max_part_size
        archive.parent.mkdir(parents=True, exist_ok=True)
        self.parts: list[Part] = []
        self._handle: Any = None
        self._hash = hashlib.sha256()
        self._size = 0

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.archive.name}.{len(self.parts) + 1:03d}"
        self._handle = (self.archive.parent / name).open("wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._name = name

    def _close_current(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self.parts.append(Part(self._name, self._size, self._hash.hexdigest()))
            self._handle = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._handle is None or self._size == self.max_part_size:
                self._open_next()
            room = self.max_part_size - self._size
            piece = view[:room]
            self._handle.write(piece)
            self._hash.update(piece)
            self._size += len(piece)
            view = view[len(piece) :]
        return len(data)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> Path:
        """Finish the last part and write the index; returns the index's path."""
        self._close_current()
        index = self.archive.with_name(self.archive.name + INDEX_SUFFIX)
        document = {
            "schema_version": 1,
            "archive": self.archive.name,
            "max_part_size": self.max_part_size,
            "total_size": sum(part.size for part in self.parts),
            "parts": [asdict(part) for part in self.parts],
        }
        index.write_text(json.dumps(document, indent=2) + "\n")
        return index


# An index lists a part in about 150 bytes: 1 MiB is room for thousands of parts, and a bound
# on what is read before anything is checked.
INDEX_LIMIT = 1 << 20
MAX_PARTS = 4096
_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HINT_INDEX = f"pass the {INDEX_SUFFIX} file that `appliance pack --max-part-size` wrote"


def read_index(index: Path) -> list[Part]:
    """The parts an index lists, each checked for form. The index is not signed and needs no
    signature: it only names the parts to join and lets a bad one be named before joining;
    what the joined archive holds is trusted by the signed manifest inside it, and nothing
    else."""
    data = _read_bounded(index)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BundleCorruptError(
            f"{index}: not a readable parts index ({str(exc)[:200]})", hint=_HINT_INDEX
        ) from None
    items = document.get("parts") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items or len(items) > MAX_PARTS:
        raise BundleCorruptError(
            f"{index}: not a readable parts index (no list of 1 to {MAX_PARTS} parts)",
            hint=_HINT_INDEX,
        )
    parts = [_part(item, position, index) for position, item in enumerate(items)]
    names = [part.name for part in parts]
    if len(set(names)) != len(names):
        raise BundleLayoutError(f"{index}: a part is listed twice", hint=_HINT_INDEX)
    return parts


def _part(item: object, position: int, index: Path) -> Part:
    if not isinstance(item, dict) or set(item) != {"name", "size", "sha256"}:
        raise BundleCorruptError(
            f"{index}: parts[{position}] is not {{name, size, sha256}}", hint=_HINT_INDEX
        )
    name, size, sha256 = item["name"], item["size"], item["sha256"]
    if not isinstance(name, str) or not _PART_NAME.fullmatch(name):
        raise BundleLayoutError(
            f"{index}: part name {str(name)[:80]!r} is not a plain file name", hint=_HINT_INDEX
        )
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 1 << 62:
        raise BundleCorruptError(f"{index}: parts[{position}].size is not a size", hint=_HINT_INDEX)
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise BundleCorruptError(
            f"{index}: parts[{position}].sha256 is not a sha256 digest", hint=_HINT_INDEX
        )
    return Part(name, size, sha256)


def _read_bounded(index: Path) -> bytes:
    """At most ``INDEX_LIMIT`` bytes of a regular file (never a FIFO or a device that would
    block or never end)."""
    try:
        fd = os.open(index, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise BundleCorruptError(
            f"{index}: cannot read the parts index: {exc.strerror}", hint=_HINT_INDEX
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleCorruptError(f"{index}: not a regular file", hint=_HINT_INDEX)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(INDEX_LIMIT + 1)
    if len(data) > INDEX_LIMIT:
        raise BundleCorruptError(
            f"{index}: a parts index larger than {INDEX_LIMIT} bytes", hint=_HINT_INDEX
        )
    return data


def check_parts(index: Path) -> list[Path]:
    """Every part present, of its size and digest; names each one that is not."""
    parts = read_index(index)
    problems = []
    for part in parts:
        path = index.parent / part.name
        if not path.is_file():
            problems.append(Problem(part.name, "missing"))
            continue
        if path.stat().st_size != part.size:
            problems.append(
                Problem(part.name, f"size {path.stat().st_size}, index says {part.size}")
            )
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK * 16):
                digest.update(chunk)
        if digest.hexdigest() != part.sha256:
            problems.append(
                Problem(part.name, f"sha256 {digest.hexdigest()}, index says {part.sha256}")
            )
    if problems:
        raise BundleCorruptError(
            f"{index}: {len(problems)} of {len(parts)} parts missing or corrupt",
            hint="copy the named parts again from the source media; nothing was joined",
            problems=problems,
        )
    return [index.parent / part.name for part in parts]


class JoinedReader:
    """Reads checked parts one after another, as one stream (never joined on disk)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._handle: Any = None

    def read(self, size: int = -1) -> bytes:
        chunks = []
        wanted = size
        while wanted != 0:
            if self._handle is None:
                if not self._paths:
                    break
                self._handle = self._paths.pop(0).open("rb")
            data = self._handle.read(wanted if wanted > 0 else -1)
            if not data:
                self._handle.close()
                self._handle = None
                continue
            chunks.append(data)
            if wanted > 0:
                wanted -= len(data)
        return b"".join(chunks)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
