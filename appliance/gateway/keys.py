"""API keys: made once, shown once, stored only as a hash.

A key reads ``apl_<id>_<secret>``: the 8-hex id names its record without a lookup table (and
lands in the audit log), the secret is 32 random bytes. The keys file keeps
``sha256(whole key)`` per record; a presented key is checked by recomputing that hash and
comparing in constant time.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.errors import GatewayConfigError
from appliance.gateway.config import load_document

KEY_PREFIX = "apl_"
KEYS_FILE_MODE = 0o640
ALL_MODELS = "*"
_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")


class KeyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^k-[0-9a-f]{8}$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    models: Annotated[list[str], Field(min_length=1)]
    created: str

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    keys: list[KeyRecord] = []


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, models: list[str]) -> tuple[str, KeyRecord]:
    """A fresh key and its record; the plaintext exists only in the return value."""
    short_id = secrets.token_hex(4)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    plaintext = f"{KEY_PREFIX}{short_id}_{secret}"
    record = KeyRecord(
        id=f"k-{short_id}",
        name=name,
        sha256=_hash(plaintext),
        models=models,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
    gateway's service group reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(keys.model_dump(mode="json"), indent=2) + "\n").encode()
    _replace_file(path, data, KEYS_FILE_MODE, keep_owner=True)


def _replace_file(path: Path, data: bytes, mode: int, keep_owner: bool = False) -> None:
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


def add_key(
    path: Path, name: str, models: list[str], key_out: Path | None = None
) -> tuple[str, KeyRecord]:
    """Make a key, add its record to the keys file (created when missing), return both.

    With ``key_out`` the plaintext is written there first (mode 0600, atomically), so a key
    whose record exists always has its plaintext somewhere: a run cut between the two steps
    leaves at most a plaintext with no record, and the next run makes a fresh key.
    """
    keys = load_keys(path) if path.exists() else KeysFile()
    if any(k.name == name for k in keys.keys):
        raise GatewayConfigError(
            f"{path} already holds a key named {name!r}",
            hint="pick another --name (names are unique so scripts can test for a key by name)",
        )
    plaintext, record = new_key(name, models)
    if key_out is not None:
        _write_secret(key_out, plaintext)
    keys.keys.append(record)
    save_keys(path, keys)
    return plaintext, record


def _write_secret(path: Path, plaintext: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _replace_file(path, f"{plaintext}\n".encode(), 0o600)


class KeyStore:
    """The loaded keys, by id, for the gateway's per-request check."""

    def __init__(self, keys: KeysFile) -> None:
        self._by_id = {k.id: k for k in keys.keys}

    def __len__(self) -> int:
        return len(self._by_id)

    def authenticate(self, key: str) -> KeyRecord | None:
        if not key.isascii():  # keys are ASCII; a header's odd bytes arrive as surrogates
            return None
        key_id = claimed_id(key)
        record = self._by_id.get(key_id) if key_id else None
        if record is None or not hmac.compare_digest(record.sha256, _hash(key)):
            return None
        return record
