"""Split a packed bundle into parts for removable media, and join them back safely.

Parts are written while the archive streams (no full-size temporary file), each hashed as it
is written. The index (``NAME.parts.json``) lists every part with its size and sha256. Joining
checks every part against the index first, naming each missing or corrupt one, and only then
streams them, in order, into the archive reader (which checks the signature and every file).
"""

from __future__ import annotations

import hashlib
import json
import re
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


def read_index(index: Path) -> list[Part]:
    try:
        document = json.loads(index.read_text())
        parts = [Part(**item) for item in document["parts"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleCorruptError(
            f"{index}: not a readable parts index ({exc})",
            hint=f"pass the {INDEX_SUFFIX} file that `appliance pack --max-part-size` wrote",
        ) from exc
    for part in parts:
        if "/" in part.name or part.name.startswith("."):
            raise BundleLayoutError(f"{index}: part name '{part.name}' is not a plain file name")
    return parts


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
