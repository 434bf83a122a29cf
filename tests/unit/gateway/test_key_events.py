"""The gateway following its keys file: the audit events each change makes (once), and a bad
file that leaves the last good keys in use."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.key_admin import actor, revoke_key, rotate_key, set_limits
from appliance.gateway.key_events import STATE_FILE, KeyWatcher, changes
from appliance.gateway.keys import KeyStore, add_key, load_keys

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
EVENT_FIELDS = {"event", "time", "key_id", "name", "at", "by"}


def test_each_change_is_one_event_naming_who_and_when(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    plaintext, record = add_key(path, "batch", ["m"], expires="2026-12-01T13:00:00Z", actor="ops")
    events, seen = changes({}, load_keys(path).keys, NOW)
    assert [e["event"] for e in events] == ["key_created"]
    (created,) = events
    assert created["key_id"] == record.id and created["by"] == "ops"
    assert (created["models"], created["expires"]) == (["m"], "2026-12-01T13:00:00Z")
    assert plaintext not in json.dumps(events) and record.sha256 not in json.dumps(events)
    assert changes(seen, load_keys(path).keys, NOW)[0] == []  # nothing new: nothing recorded

    rotate_key(path, "batch", timedelta(minutes=5), now=NOW)
    set_limits(path, "batch", {"rpm": 10})
    revoke_key(path, "batch", now=NOW)
    events, seen = changes(seen, load_keys(path).keys, NOW)
    assert [e["event"] for e in events] == ["key_limits_changed", "key_rotated", "key_revoked"]
    limits, rotated, revoked = events
    assert limits["limits"]["rpm"] == 10 and limits["previous"]["rpm"] is None
    assert rotated["grace_until"] == "2026-12-01T12:05:00Z"
    assert (revoked["at"], revoked["by"]) == ("2026-12-01T12:00:00Z", actor())
    assert all(set(e) >= EVENT_FIELDS for e in events)
    # A revoked key is not reported as expired when its time passes.
    assert changes(seen, load_keys(path).keys, NOW + timedelta(hours=2))[0] == []


def test_expiry_is_recorded_once_when_it_passes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "trial", ["*"], expires="2026-12-01T12:00:10Z")
    keys = load_keys(path).keys
    _, seen = changes({}, keys, NOW)
    assert changes(seen, keys, NOW + timedelta(seconds=9))[0] == []
    events, seen = changes(seen, keys, NOW + timedelta(seconds=10))
    assert [(e["event"], e["at"]) for e in events] == [("key_expired", "2026-12-01T12:00:10Z")]
    assert changes(seen, keys, NOW + timedelta(days=1))[0] == []


def test_a_key_edited_or_removed_by_hand_is_recorded_without_an_actor(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, first = add_key(path, "a", ["*"])
    add_key(path, "b", ["*"])
    _, seen = changes({}, load_keys(path).keys, NOW)
    document = json.loads(path.read_text())
    document["keys"] = document["keys"][1:]
    document["keys"][0]["models"] = ["only-this"]
    path.write_text(json.dumps(document))
    events, _ = changes(seen, load_keys(path).keys, NOW)
    assert [(e["event"], e["by"]) for e in events] == [("key_changed", None), ("key_removed", None)]
    assert events[1]["key_id"] == first.id


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    async def __call__(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise OSError("disk full")
        self.events.append(fields)
        return fields


def watcher(tmp_path: Path, write: Recorder) -> KeyWatcher:
    path = tmp_path / "keys.json"
    (tmp_path / "audit").mkdir(exist_ok=True)
    return KeyWatcher(path, tmp_path / "audit", KeyStore(load_keys(path)), write)


def test_a_garbage_keys_file_keeps_the_last_good_keys_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    plaintext, record = add_key(path, "operator", ["*"])
    recorder = Recorder()
    watch = watcher(tmp_path, recorder)
    asyncio.run(watch.tick())
    path.write_text('{"version": 1, "keys": [ {"id": "k-1"')  # an editor's half-saved file
    asyncio.run(watch.tick())
    assert watch.error is not None and "is not JSON" in watch.error
    assert watch.store.authenticate(plaintext) == record
    assert "keys not reloaded, keeping the 1 in use" in caplog.text
    path.write_text('{"version": 1, "keys": [{"id": "nope"}]}')
    asyncio.run(watch.tick())
    assert watch.error is not None and "keys[0].id" in watch.error
    assert watch.store.authenticate(plaintext) == record
    document = json.loads((tmp_path / "audit" / STATE_FILE).read_text())
    assert list(document["keys"]) == [record.id]
    # Fixed: loaded again, and the fix is an ordinary change.
    path.unlink()
    fresh, second = add_key(path, "second", ["*"])
    asyncio.run(watch.tick())
    assert watch.error is None and watch.store.authenticate(plaintext) is None
    assert watch.store.authenticate(fresh) == second
    assert [e["event"] for e in recorder.events] == ["key_created", "key_created", "key_removed"]


def test_changes_while_stopped_are_recorded_at_the_next_start_and_never_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "operator", ["*"])
    first = Recorder()
    asyncio.run(watcher(tmp_path, first).tick())
    revoke_key(path, "operator")
    add_key(path, "late", ["*"])
    second = Recorder()
    asyncio.run(watcher(tmp_path, second).tick())
    third = Recorder()
    asyncio.run(watcher(tmp_path, third).tick())
    assert [e["event"] for e in first.events] == ["key_created"]
    assert [e["event"] for e in second.events] == ["key_revoked", "key_created"]
    assert third.events == []


def test_events_that_cannot_be_written_are_tried_again(tmp_path: Path) -> None:
    add_key(tmp_path / "keys.json", "operator", ["*"])
    recorder = Recorder(fail=True)
    watch = watcher(tmp_path, recorder)
    asyncio.run(watch.tick())
    assert not (tmp_path / "audit" / STATE_FILE).exists()
    recorder.fail = False
    asyncio.run(watch.tick())
    assert [e["event"] for e in recorder.events] == ["key_created"]


def test_a_follower_reads_the_file_at_its_first_tick(tmp_path: Path) -> None:
    """A worker starts with the owner's keys, which may be older than the file (the owner still
    recording a revocation): its watcher takes the file at its first tick, not as already seen,
    else the revoked key would stay usable in that worker until the file changed again."""
    path = tmp_path / "keys.json"
    plaintext, _record = add_key(path, "leaver", ["*"])
    owners_keys = KeyStore(load_keys(path))
    revoke_key(path, "leaver", now=NOW)
    asked: list[str] = []

    async def follow() -> None:
        asked.append("record")

    async def nowhere(_event: dict[str, Any]) -> None:
        raise AssertionError("a follower records nothing itself")

    watcher = KeyWatcher(path, tmp_path, owners_keys, nowhere, follow=follow)
    assert watcher.store.authenticate(plaintext) is not None
    asyncio.run(watcher.tick())
    assert asked == ["record"]  # the owner asked to record the file first
    assert watcher.store.authenticate(plaintext) is None
