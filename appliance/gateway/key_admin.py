"""Changing keys in the keys file: revoke, rotate, limits, and the expiry and duration syntax.

Each change is written into the key's record with who made it (``actor``) and when; the
running gateway picks the file up within a second and records the change in its audit chain
(key_events.py). The audit log has one writer, the gateway (it holds the chain's head in
memory), so these functions never touch it.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import GatewayConfigError
from appliance.gateway.keys import (
    KeyRecord,
    KeysFile,
    Limits,
    OldSecret,
    editing,
    format_time,
    hash_key,
    load_keys,
    new_secret,
    parse_time,
    save_keys,
    write_secret,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:[0-9]{1,6}[smhdw])+")
_PART = re.compile(r"([0-9]+)([smhdw])")
_DURATION_HINT = "a duration like 90m, 12h, 30d, 1d12h (s m h d w), or 0 for none"
_EXPIRES_HINT = (
    "give a duration from now (30d, 12h, 1w) or a UTC time: 2027-01-31, 2027-01-31T18:00:00Z"
)


T = TypeVar("T")


def actor() -> str:
    """Who runs this command, as the audit record names them: the OS user, and the user sudo
    was run by when there was one."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{user} (sudo from {sudo})" if sudo and sudo != user else user


def parse_duration(text: str, what: str, allow_zero: bool = False) -> timedelta:
    value = text.strip().lower()
    if allow_zero and value in ("0", "0s"):
        return timedelta(0)
    if not _DURATION.fullmatch(value):
        raise GatewayConfigError(f"{what} {text!r} is not a duration", hint=_DURATION_HINT)
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds == 0 and not allow_zero:
        raise GatewayConfigError(f"{what} {text!r} is zero", hint=_DURATION_HINT)
    if seconds > 100 * 366 * 86400:
        raise GatewayConfigError(f"{what} {text!r} is over a hundred years", hint=_DURATION_HINT)
    return timedelta(seconds=seconds)


def parse_expires(text: str, now: datetime) -> str:
    """``--expires``: a duration from ``now`` or an absolute UTC time, as the keys file writes
    it. A time without a zone, or one already past, is refused."""
    value = text.strip()
    if value and value[0].isdigit() and value[-1].lower() in _UNITS and "-" not in value:
        return format_time(now + parse_duration(value, "--expires"))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise GatewayConfigError(
            f"--expires {text!r} is neither a duration nor a time", hint=_EXPIRES_HINT
        ) from None
    if len(value) == 10:  # a date alone: midnight UTC
        moment = moment.replace(tzinfo=UTC)
    if moment.tzinfo is None:
        raise GatewayConfigError(
            f"--expires {text!r} has no time zone", hint="end it with Z (UTC) or an offset"
        )
    if moment <= now:
        raise GatewayConfigError(
            f"--expires {text!r} is already past (now {format_time(now)})", hint=_EXPIRES_HINT
        )
    return format_time(moment)


def find_key(keys: KeysFile, path: Path, which: str) -> int:
    """The index of the key ``which`` names (its id ``k-xxxxxxxx`` or its name)."""
    for index, record in enumerate(keys.keys):
        if which in (record.id, record.name):
            return index
    known = ", ".join(f"{k.id} ({k.name})" for k in keys.keys) or "none"
    raise GatewayConfigError(
        f"{path} holds no key {which!r}",
        hint=f"name a key by its id or name; keys: {known} (appliance gateway list-keys)",
    )


def get_key(path: Path, which: str) -> KeyRecord:
    keys = load_keys(path)
    return keys.keys[find_key(keys, path, which)]


def _change(path: Path, which: str, update: Mapping[str, object]) -> KeyRecord:
    keys = load_keys(path)
    index = find_key(keys, path, which)
    record = KeyRecord.model_validate({**keys.keys[index].model_dump(), **update})
    keys.keys[index] = record
    save_keys(path, keys)
    return record


def _locked(change: Callable[..., T]) -> Callable[..., T]:
    """Run a key change under the keys file's edit lock (keys.editing), from load to save."""

    @functools.wraps(change)
    def locked(path: Path, *args: Any, **kwargs: Any) -> T:
        with editing(path):
            return change(path, *args, **kwargs)

    return locked


@_locked
def revoke_key(path: Path, which: str, now: datetime | None = None) -> KeyRecord:
    keys = load_keys(path)
    record = keys.keys[find_key(keys, path, which)]
    if record.revoked is not None:
        raise GatewayConfigError(
            f"key {record.id} ({record.name}) was already revoked at {record.revoked}",
            hint="a revoked key stays revoked; make a new one with appliance gateway new-key",
        )
    stamp = format_time(now or datetime.now(UTC))
    return _change(path, record.id, {"revoked": stamp, "revoked_by": actor()})


@_locked
def rotate_key(
    path: Path,
    which: str,
    grace: timedelta,
    key_out: Path | None = None,
    now: datetime | None = None,
) -> tuple[str, KeyRecord]:
    """A new secret for the same key id; the old one is still accepted for ``grace``. With
    ``key_out`` the new plaintext is written there before the keys file changes."""
    moment = now or datetime.now(UTC)
    keys = load_keys(path)
    record = keys.keys[find_key(keys, path, which)]
    if record.revoked is not None:
        raise GatewayConfigError(
            f"key {record.id} ({record.name}) is revoked and cannot be rotated",
            hint="make a new key with appliance gateway new-key",
        )
    plaintext = new_secret(record.id[2:])
    kept = [s for s in record.old_secrets if parse_time(s.valid_until) > moment]
    if grace:
        kept.append(OldSecret(sha256=record.sha256, valid_until=format_time(moment + grace)))
    if key_out is not None:
        write_secret(key_out, plaintext)
    update = {
        "sha256": hash_key(plaintext),
        "old_secrets": [s.model_dump() for s in kept],
        "rotated": format_time(moment),
        "rotated_by": actor(),
    }
    return plaintext, _change(path, record.id, update)


@_locked
def set_limits(path: Path, which: str, changes: dict[str, int | None]) -> KeyRecord:
    """Set (an int) or clear (None) the named limits of a key; the others stay."""
    keys = load_keys(path)
    record = keys.keys[find_key(keys, path, which)]
    limits = Limits.model_validate({**record.limits.model_dump(), **changes})
    stamp = format_time(datetime.now(UTC))
    update = {"limits": limits.model_dump(), "changed": stamp, "changed_by": actor()}
    return _change(path, record.id, update)
