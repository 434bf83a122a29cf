"""API keys: made once, shown once, stored only as a hash; revoked, expired or rotated in place.

A key reads ``apl_<id>_<secret>``: the 8-hex id names its record without a lookup table (and
lands in the audit log), the secret is 32 random bytes. The keys file keeps
``sha256(whole key)`` per record; a presented key is checked by recomputing that hash and
comparing in constant time.

A record also carries its lifecycle (see key_admin for the commands that change it): an expiry
time, a revocation, a rotation (a new secret for the same id; the old secret's hash is kept in
``old_secrets`` until its grace period ends) and its limits (see limits.py). Each change names
who made it and when, for the audit event the gateway records when it picks the change up
(key_events.py): the CLI never writes the audit chain itself.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from appliance.errors import GatewayConfigError
from appliance.gateway.config import load_document

KEY_PREFIX = "apl_"
KEYS_FILE_MODE = 0o640
ALL_MODELS = "*"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")
_SHA256 = r"^[0-9a-f]{64}$"


def parse_time(value: str) -> datetime:
    """A keys-file time (``2026-12-01T14:00:00Z``) as an aware datetime."""
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def _checked_time(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_time(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a time like 2026-12-01T14:00:00Z") from None
    return value


class Limits(BaseModel):
    """Per-key limits; None is no limit. Enforced per gateway process (limits.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: Annotated[int, Field(ge=1)] | None = None  # requests per minute
    tpm: Annotated[int, Field(ge=1)] | None = None  # tokens (prompt + completion) per minute
    concurrent: Annotated[int, Field(ge=1)] | None = None  # calls in flight at once

    def describe(self) -> str:
        parts = [f"{n}={v}" for n, v in self.model_dump().items() if v is not None]
        return ",".join(parts) or "none"


class OldSecret(BaseModel):
    """A secret replaced by a rotation, still accepted until ``valid_until``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=_SHA256)]
    valid_until: str

    _valid_until = field_validator("valid_until")(_checked_time)


class KeyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^k-[0-9a-f]{8}$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    sha256: Annotated[str, Field(pattern=_SHA256)]
    models: Annotated[list[str], Field(min_length=1)]
    created: str
    created_by: str | None = None
    expires: str | None = None
    limits: Limits = Limits()
    revoked: str | None = None
    revoked_by: str | None = None
    rotated: str | None = None
    rotated_by: str | None = None
    old_secrets: list[OldSecret] = []
    # The last change of limits, models or expiry (who and when), for its audit event.
    changed: str | None = None
    changed_by: str | None = None

    _times = field_validator("created", "expires", "revoked", "rotated", "changed")(_checked_time)

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models

    def refusal(self, now: datetime) -> str | None:
        """Why this key may not call now (revoked, expired), or None."""
        if self.revoked is not None:
            return f"this API key was revoked at {self.revoked}"
        if self.expires is not None and parse_time(self.expires) <= now:
            return f"this API key expired at {self.expires}"
        return None

    def status(self, now: datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        return "expired" if self.refusal(now) else "active"


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    keys: list[KeyRecord] = []


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret(short_id: str) -> str:
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{KEY_PREFIX}{short_id}_{secret}"


def new_key(name: str, models: list[str]) -> tuple[str, KeyRecord]:
    """A fresh key and its record; the plaintext exists only in the return value."""
    short_id = secrets.token_hex(4)
    plaintext = new_secret(short_id)
    record = KeyRecord(
        id=f"k-{short_id}",
        name=name,
        sha256=hash_key(plaintext),
        models=models,
        created=format_time(datetime.now(UTC)),
    )
    return plaintext, record


def claimed_id(key: str) -> str | None:
    """The record id a presented key names (``k-<8 hex>``), or None when it is not a key."""
    if not key.startswith(KEY_PREFIX):
        return None
    parts = key.split("_", 2)  # the urlsafe secret may itself hold "_"
    # ASCII hex only: int(..., 16) would also take other scripts' digits and spaces.
    if len(parts) != 3 or not _KEY_ID.fullmatch(parts[1]) or not parts[2]:
        return None
    return f"k-{parts[1].lower()}"


def load_keys(path: Path) -> KeysFile:
    keys = load_document(
        path,
        KeysFile,
        "keys file",
        "make the first key with: appliance gateway new-key --name operator --model '*'",
    )
    ids = [k.id for k in keys.keys]
    if len(set(ids)) != len(ids):
        raise GatewayConfigError(f"{path}: a key id appears twice")
    return keys


def save_keys(path: Path, keys: KeysFile) -> None:
    """Replace the keys file atomically with mode 0640, keeping the old file's group (the
    gateway's service group reads it). Unset lifecycle fields are left out, so a file with
    no lifecycle change reads as before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"version": keys.version, "keys": []}
    document.update(keys.model_dump(mode="json", exclude_defaults=True))
    data = (json.dumps(document, indent=2) + "\n").encode()
    replace_file(path, data, KEYS_FILE_MODE, keep_owner=True)


def replace_file(path: Path, data: bytes, mode: int, keep_owner: bool = False) -> None:
    """Write ``data`` beside ``path`` with ``mode``, fsync, then rename it over ``path``: the
    file is always either the old one or the whole new one."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temp = Path(temp_name)
    try:
        os.fchmod(handle, mode)
        if keep_owner:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                old = path.stat()
                os.fchown(handle, old.st_uid, old.st_gid)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def editing(path: Path) -> Iterator[None]:
    """Hold the keys file's edit lock from load to save: two key commands at once would each
    save a change over the file the other read, and undo it (a revocation, say)."""
    # The directory's own descriptor carries the lock: no lock file beside the keys.
    try:
        handle = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        yield  # no directory yet: the save makes it, or says why it cannot
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def add_key(
    path: Path,
    name: str,
    models: list[str],
    key_out: Path | None = None,
    *,
    expires: str | None = None,
    limits: Limits | None = None,
    actor: str | None = None,
) -> tuple[str, KeyRecord]:
    """Make a key, add its record to the keys file (created when missing), return both.

    With ``key_out`` the plaintext is written there first (mode 0600, atomically), so a key
    whose record exists always has its plaintext somewhere: a run cut between the two steps
    leaves at most a plaintext with no record, and the next run makes a fresh key.
    """
    with editing(path):
        return _add_key(path, name, models, key_out, expires, limits, actor)


def _add_key(
    path: Path,
    name: str,
    models: list[str],
    key_out: Path | None,
    expires: str | None,
    limits: Limits | None,
    actor: str | None,
) -> tuple[str, KeyRecord]:
    keys = load_keys(path) if path.exists() else KeysFile()
    if any(k.name == name for k in keys.keys):
        raise GatewayConfigError(
            f"{path} already holds a key named {name!r}",
            hint="pick another --name (names are unique so scripts can test for a key by name)",
        )
    plaintext, record = new_key(name, models)
    record = record.model_copy(
        update={"expires": expires, "limits": limits or Limits(), "created_by": actor}
    )
    if key_out is not None:
        write_secret(key_out, plaintext)
    keys.keys.append(record)
    save_keys(path, keys)
    return plaintext, record


def write_secret(path: Path, plaintext: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(path, f"{plaintext}\n".encode(), 0o600)


class KeyStore:
    """The loaded keys, by id, for the gateway's per-request check."""

    def __init__(self, keys: KeysFile) -> None:
        self._by_id = {k.id: k for k in keys.keys}

    def __len__(self) -> int:
        return len(self._by_id)

    def records(self) -> list[KeyRecord]:
        return list(self._by_id.values())

    def authenticate(self, key: str) -> KeyRecord | None:
        """The usable record ``key`` is the secret of, or None."""
        record, refused = self.check(key, datetime.now(UTC))
        return record if refused is None else None

    def check(self, key: str, now: datetime) -> tuple[KeyRecord | None, str | None]:
        """(record, None) for a usable key; (record, why) for a genuine key that may not call
        now (revoked, expired, a rotated-out secret past its grace); (None, None) otherwise."""
        if not key.isascii():  # keys are ASCII; a header's odd bytes arrive as surrogates
            return None, None
        key_id = claimed_id(key)
        record = self._by_id.get(key_id) if key_id else None
        if record is None:
            return None, None
        digest = hash_key(key)
        if not hmac.compare_digest(record.sha256, digest):
            old = [s for s in record.old_secrets if hmac.compare_digest(s.sha256, digest)]
            if not old:
                return None, None
            if parse_time(old[0].valid_until) <= now:
                return record, f"this secret was replaced at {record.rotated} (grace ended)"
        return record, record.refusal(now)
