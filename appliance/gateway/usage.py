"""Usage from the audit log itself: calls, errors, tokens and latency, by key or by model.

The log is the source of truth: every file of the chain still in the directory (rotated files
oldest first, then ``audit.jsonl``) is read, one record at a time, in constant memory per group
besides its latencies (8 bytes a call). A call record is one with a ``path`` and a ``status``;
the gateway's own event records (``event``: repairs, outages, gaps, key changes) are not calls.
``--since``/``--until`` select by the record's ``time`` (when the call arrived), ``since``
inclusive and ``until`` exclusive. Nothing is verified here: ``appliance audit verify`` does
that; the summary says which seqs it read so the two can be matched.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from appliance.errors import AuditError
from appliance.gateway.audit import log_files

GroupBy = Literal["key", "model"]
NONE = "(none)"  # calls refused before a key or a model was known
_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or time (UTC when no zone is given), or ``30m``/``24h``/``7d`` ago."""
    match = _RELATIVE.match(value)
    if match:
        ago = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.now(UTC)) - ago
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: write 2026-11-30, 2026-11-30T14:00Z or 24h (ago)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def percentile(values: array[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1): a latency some call really had."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Group:
    calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def add(self, record: dict[str, Any]) -> None:
        self.calls += 1
        status = record.get("status")
        self.errors += int(not isinstance(status, int) or status >= 400)
        for name in ("prompt_tokens", "completion_tokens"):
            count = record.get(name)
            if type(count) is int and count > 0:
                setattr(self, name, getattr(self, name) + count)
        latency = record.get("latency_ms")
        if isinstance(latency, int | float) and not isinstance(latency, bool):
            self.latencies.append(float(latency))

    def as_dict(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "calls": self.calls,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms_p50": percentile(self.latencies, 0.50),
            "latency_ms_p95": percentile(self.latencies, 0.95),
        }


def _records(directory: Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in log_files(directory):
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise AuditError(
                        f"{path}:{number} is not a JSON record",
                        hint="run `appliance audit verify` to see what happened to the log",
                    ) from None
                if isinstance(record, dict):
                    yield path, number, record


def summarise(
    directory: Path,
    by: GroupBy,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The usage document (what ``appliance audit usage --json`` prints)."""
    if not directory.is_dir():
        raise AuditError(
            f"{directory} is not an audit directory",
            hint="pass --dir with the gateway's audit.dir (or a shipped copy of it)",
        )
    files = log_files(directory)
    if not files:
        raise AuditError(f"{directory} holds no audit log files (audit.jsonl, audit-*.jsonl)")
    groups: dict[str, Group] = {}
    total = Group()
    first_seq = last_seq = None
    for _path, _number, record in _records(directory):
        seq = record.get("seq")
        if isinstance(seq, int):
            first_seq = seq if first_seq is None else first_seq
            last_seq = seq
        if "event" in record or "status" not in record or "path" not in record:
            continue
        if since is not None or until is not None:
            try:
                moment = datetime.fromisoformat(str(record.get("time")))
            except ValueError:
                continue
            if (since is not None and moment < since) or (until is not None and moment >= until):
                continue
        name = record.get("key_id" if by == "key" else "model")
        group = groups.setdefault(name if isinstance(name, str) and name else NONE, Group())
        group.add(record)
        total.add(record)
    return {
        "ok": True,
        "dir": str(directory),
        "by": by,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "files": len(files),
        "first_seq": first_seq,
        "last_seq": last_seq,
        "groups": [groups[name].as_dict(name) for name in sorted(groups)],
        "total": total.as_dict("total"),
    }
