"""The running gateway follows its keys file, and records every key change in the audit chain.

``KeyWatcher`` looks at the keys file's identity (inode, size, mtime) every ``POLL_S`` seconds
and on SIGHUP; a changed file is loaded whole, its changes are recorded, and it replaces the
keys in use, so a revocation takes effect within ``POLL_S`` plus a load and an audit write
(measured: under 250 ms after the command wrote the file, tests/integration/
test_gateway_keys.py). A file that does not load (edited by hand into something that is not a
keys file) is reported in the journal and on ``/health`` (``keys_file``), and the last good
keys stay in use until the file is fixed.

The audit log has one writer, the gateway, so the CLI writes each change with who made it into
the key's record and the gateway turns it into an event record when it picks the file up:
``key_created``, ``key_revoked``, ``key_rotated``, ``key_limits_changed``, ``key_changed``
(models or expiry edited), ``key_removed`` (gone from the file) and ``key_expired`` (when its
expiry passes, noticed within ``POLL_S``). Each names the key id, when the change was made
(``at``) and by whom (``by``, as the CLI wrote it; null for a hand edit); never a secret or
its hash. What was already recorded is kept in ``keys.state.json`` in the audit directory, so
changes made while the gateway was stopped are recorded at its next start, and nothing twice.

With several worker processes (supervisor.py) the owner of the audit chain runs the one
recording watcher; each worker follows the file with a watcher of its own (``follow``) that,
on a change, first has the owner record it, then uses the new keys. The owner, once it recorded
a change, has every other worker ``adopt`` the file before it answers the one that asked (or,
when its own watcher saw it first, tells them all): every worker revokes within ``POLL_S`` plus a
round trip, and each event is in the chain once, before the calls it concerns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.gateway.keys import KeyRecord, KeyStore, load_keys, parse_time, replace_file
from appliance.gateway.record import now_iso

LOG = logging.getLogger("appliance.gateway.keys")

POLL_S = 0.25
STATE_FILE = "keys.state.json"
Write = Callable[[dict[str, Any]], Awaitable[Any]]
Follow = Callable[[], Awaitable[None]]
Snapshot = dict[str, Any]


def snapshot(record: KeyRecord, expired: bool = False) -> Snapshot:
    """What of a key the audit chain has been told (nothing secret)."""
    return {
        "name": record.name,
        "models": record.models,
        "expires": record.expires,
        "limits": record.limits.model_dump(),
        "revoked": record.revoked,
        "rotated": record.rotated,
        "expired": expired,
    }


def _event(kind: str, record: KeyRecord, at: str | None, by: str | None, **more: Any) -> Snapshot:
    return {"event": kind, "time": now_iso(), "key_id": record.id, "name": record.name,
            "at": at, "by": by, **more}  # fmt: skip


def changes(
    seen: dict[str, Snapshot], records: list[KeyRecord], now: datetime
) -> tuple[list[Snapshot], dict[str, Snapshot]]:
    """The events that bring the audit chain from ``seen`` to ``records``, and the new seen."""
    events: list[Snapshot] = []
    after: dict[str, Snapshot] = {}
    for record in records:
        old = seen.get(record.id)
        if old is None:
            events.append(
                _event("key_created", record, record.created, record.created_by,
                       models=record.models, expires=record.expires,
                       limits=record.limits.model_dump())
            )  # fmt: skip
            old = snapshot(record) | {"revoked": None, "rotated": None}
        elif old["limits"] != record.limits.model_dump():
            events.append(
                _event("key_limits_changed", record, record.changed, record.changed_by,
                       limits=record.limits.model_dump(), previous=old["limits"])
            )  # fmt: skip
        if old["models"] != record.models or old["expires"] != record.expires:
            events.append(
                _event("key_changed", record, record.changed, record.changed_by,
                       models=record.models, expires=record.expires)
            )  # fmt: skip
        if record.rotated is not None and old["rotated"] != record.rotated:
            grace = [s.valid_until for s in record.old_secrets]
            events.append(
                _event("key_rotated", record, record.rotated, record.rotated_by,
                       grace_until=max(grace) if grace else None)
            )  # fmt: skip
        if record.revoked is not None and old["revoked"] != record.revoked:
            events.append(_event("key_revoked", record, record.revoked, record.revoked_by))
        expired = bool(old.get("expired")) and old["expires"] == record.expires
        if (
            not expired
            and record.revoked is None
            and record.expires is not None
            and parse_time(record.expires) <= now
        ):
            events.append(_event("key_expired", record, record.expires, None))
            expired = True
        after[record.id] = snapshot(record, expired)
    for key_id, old in seen.items():
        if key_id not in after:
            events.append({"event": "key_removed", "time": now_iso(), "key_id": key_id,
                           "name": old["name"], "at": None, "by": None})  # fmt: skip
    return events, after


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class KeyWatcher:
    """Keeps ``store`` equal to the keys file and the audit chain told of every change."""

    def __init__(
        self,
        path: Path,
        audit_dir: Path,
        store: KeyStore,
        write: Write,
        follow: Follow | None = None,
    ) -> None:
        self.path = path
        self.follow = follow  # a worker's: the owner records, this watcher only follows
        self.state_path = audit_dir / STATE_FILE
        self.store = store
        self.write = write
        self.error: str | None = None  # why the file on disk is not the keys in use
        self.loaded_at = now_iso()
        # A follower's keys come from the owner, maybe older than the file (a change the owner
        # is recording): it reads the file at its first tick, not taking it as seen.
        self._identity = None if follow is not None else _identity(path)
        self._seen = self._read_state()
        self._pending = True  # compare with what the chain was told, at the first tick
        self._generation = 0  # loads of the file so far
        self._lock = asyncio.Lock()

    def _read_state(self) -> dict[str, Snapshot]:
        try:
            document = json.loads(self.state_path.read_bytes())
            return dict(document["keys"])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Recording a key's events again is better than recording them never.
            LOG.error("%s unreadable (%s): key events are recorded afresh", self.state_path, error)
            return {}

    def _load(self) -> KeyStore | None:
        """The keys file as it is now, or None (and the last good keys kept) when it is bad."""
        self._identity = _identity(self.path)
        self._generation += 1
        try:
            return KeyStore(load_keys(self.path))
        except ApplianceError as error:
            detail = "; ".join([error.message, *(p.render() for p in error.problems)])
            if self.error != detail:
                LOG.error("keys not reloaded, keeping the %d in use: %s", len(self.store), detail)
            self.error = detail
            return None

    def due(self) -> bool:
        return self._pending or any(
            r.expires is not None
            and not self._seen.get(r.id, {}).get("expired")
            and parse_time(r.expires) <= datetime.now(UTC)
            for r in self.store.records()
        )

    async def tick(self, force: bool = False) -> None:
        """Load the file when it changed (or ``force``), record what changed, then use it. The
        events go first, so a key's creation precedes its first call in the chain and its
        revocation its first refusal; a failed write delays neither (tried again next tick)."""
        async with self._lock:
            if force or _identity(self.path) != self._identity:
                loaded = self._load()
                if loaded is not None:
                    if self.follow is not None:
                        generation = self._generation
                        await self._followed()
                        if generation != self._generation:
                            return  # adopt() took a newer file meanwhile
                    else:
                        self._pending = True
                        await self._record(loaded)
                    self.store, self.error, self.loaded_at = loaded, None, now_iso()
                    LOG.info("reloaded %d keys from %s", len(loaded), self.path)
                    return
            if self.follow is None and self.due():
                await self._record(self.store)

    def adopt(self) -> None:
        """A follower told by the owner that the keys file changed (and is recorded): use it
        now. No lock and no await: a tick waiting for the owner must not hold this up."""
        loaded = self._load()
        if loaded is not None:
            self.store, self.error, self.loaded_at = loaded, None, now_iso()
            LOG.info("reloaded %d keys from %s", len(loaded), self.path)

    async def _followed(self) -> None:
        """Have the owner record the file's changes; a revocation is used even when not."""
        assert self.follow is not None
        try:
            await self.follow()
        except Exception as error:  # the owner's own watcher records it within POLL_S
            LOG.error("key changes not recorded by the audit owner yet: %s", error)

    async def _record(self, store: KeyStore) -> None:
        events, after = changes(self._seen, store.records(), datetime.now(UTC))
        try:
            for event in events:
                await self.write(event)
            if after != self._seen:
                data = (json.dumps({"version": 1, "keys": after}, indent=1) + "\n").encode()
                await asyncio.to_thread(replace_file, self.state_path, data, 0o640)
        except Exception as error:  # the audit log or its directory: tried again next tick
            LOG.error("key changes not recorded yet, trying again: %s", error)
            return
        self._seen, self._pending = after, False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.tick()
            except Exception:  # the watcher must live on: revocations depend on it
                LOG.exception("key watcher: unexpected failure")
