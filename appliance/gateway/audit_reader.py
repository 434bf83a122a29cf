"""Reading the committed audit chain from a seq on, across rotations, while the gateway writes.

A record is committed once ``audit.head`` names it (or a later record): the writer rewrites
the head after each batch, so a reader that stops at the head never sees half a batch. The
reader keeps its file open between calls; at the end of a file that a rotation renamed it
finds the file that holds the next seq (by the first seq in each name) and goes on there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from appliance.gateway.audit import CURRENT, log_files


def _first_seq(path: Path) -> int | None:
    if path.name != CURRENT:
        return int(path.name[len("audit-") : -len(".jsonl")])
    try:
        with path.open("rb") as handle:
            line = handle.readline()
        return int(json.loads(line)["seq"]) if line.endswith(b"\n") else None
    except (OSError, ValueError, KeyError):
        return None


class ChainReader:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._handle: IO[bytes] | None = None
        self._last: int | None = None  # the seq of the last record read from the handle

    def _locate(self, after: int) -> None:
        """Open the file that holds the record after ``after``, positioned at it."""
        self.close()
        starts = [(_first_seq(path), path) for path in log_files(self.directory)]
        known = [(first, path) for first, path in starts if first is not None]
        if not known:
            return
        chosen = known[0][1]
        for first, path in known:
            if first <= after + 1:
                chosen = path
        try:
            handle = chosen.open("rb")
        except FileNotFoundError:  # rotated or pruned meanwhile: found again next time
            return
        while True:
            start = handle.tell()
            line = handle.readline()
            if not line.endswith(b"\n"):
                handle.seek(start)
                break
            if json.loads(line)["seq"] > after:
                handle.seek(start)
                break
        self._handle, self._last = handle, after

    def read(self, after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        """Committed records with ``after < seq <= upto``, oldest first, at most ``limit``.
        A seq the log no longer holds (an ``audit_gap`` record names it) is passed over."""
        records: list[dict[str, Any]] = []
        relocated = False
        while len(records) < limit and after < upto:
            if self._handle is None or self._last != after:
                if relocated:
                    break
                self._locate(after)
                relocated = True
                if self._handle is None:
                    break
            assert self._handle is not None
            start = self._handle.tell()
            line = self._handle.readline()
            if not line.endswith(b"\n"):  # the end of this file (rotated) or of the batch
                self._handle.seek(start)
                self.close()
                continue
            record: dict[str, Any] = json.loads(line)
            if record["seq"] > upto:
                self._handle.seek(start)
                break
            records.append(record)
            after = self._last = record["seq"]
            relocated = False  # the next file is found again after this one ends
        return records

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._last = None
