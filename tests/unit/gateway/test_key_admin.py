"""Key lifecycle in the keys file: expiry and duration syntax, revoke, rotate with a grace
period, limits; and what the gateway's check makes of each."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.errors import GatewayConfigError
from appliance.gateway.key_admin import (
    actor,
    get_key,
    parse_duration,
    parse_expires,
    revoke_key,
    rotate_key,
    set_limits,
)
from appliance.gateway.keys import KeyStore, Limits, add_key, load_keys

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("12h", 43200), ("30d", 2592000), ("1w", 604800), ("1d12h", 129600),
     ("45s", 45), (" 2H ", 7200)],
)  # fmt: skip
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, "--grace") == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a duration"),
        ("12", "is not a duration"),
        ("1x", "is not a duration"),
        ("-5m", "is not a duration"),
        ("1.5h", "is not a duration"),
        ("5m 3s", "is not a duration"),
        ("0m", "is zero"),
        ("999999w", "over a hundred years"),
        ("\uff11h", "is not a duration"),  # a fullwidth digit
    ],
)
def test_bad_durations_are_refused_with_the_syntax(text: str, message: str) -> None:
    with pytest.raises(GatewayConfigError, match=message) as caught:
        parse_duration(text, "--grace")
    assert caught.value.exit_code == 35
    assert caught.value.hint is not None and "90m, 12h, 30d" in caught.value.hint


def test_grace_may_be_zero() -> None:
    assert parse_duration("0", "--grace", allow_zero=True) == timedelta(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", "2026-12-31T12:00:00Z"),
        ("2027-01-31", "2027-01-31T00:00:00Z"),
        ("2027-01-31T18:00:00Z", "2027-01-31T18:00:00Z"),
        ("2027-01-31T18:00:00+02:00", "2027-01-31T16:00:00Z"),
    ],
)
def test_expires_takes_a_duration_or_a_zoned_time(text: str, expected: str) -> None:
    assert parse_expires(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tomorrow", "neither a duration nor a time"),
        ("2027-13-01", "neither a duration nor a time"),
        ("2027-01-31T18:00:00", "has no time zone"),
        ("2026-11-30", "already past"),
        ("0d", "is zero"),
    ],
)
def test_bad_expiry_is_refused(text: str, message: str) -> None:
    with pytest.raises(GatewayConfigError, match=message):
        parse_expires(text, NOW)


def test_actor_is_the_os_user_and_who_ran_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    plain = actor()
    assert plain and "sudo" not in plain
    monkeypatch.setenv("SUDO_USER", "alice")
    assert actor() == f"{plain} (sudo from alice)"


def test_revoked_key_is_refused_with_its_identity(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    plaintext, record = add_key(path, "batch", ["*"])
    revoked = revoke_key(path, "batch", now=NOW)
    assert (revoked.id, revoked.revoked, revoked.revoked_by) == (
        record.id,
        "2026-12-01T12:00:00Z",
        actor(),
    )
    store = KeyStore(load_keys(path))
    found, why = store.check(plaintext, NOW)
    assert found is not None and found.id == record.id
    assert why == "this API key was revoked at 2026-12-01T12:00:00Z"
    assert store.authenticate(plaintext) is None
    with pytest.raises(GatewayConfigError, match="already revoked"):
        revoke_key(path, record.id)
    with pytest.raises(GatewayConfigError, match="is revoked and cannot be rotated"):
        rotate_key(path, record.id, timedelta(hours=1))


def test_unknown_key_names_the_keys_there_are(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, record = add_key(path, "batch", ["*"])
    before = path.read_bytes()
    for change in (
        lambda: revoke_key(path, "k-00000000"),
        lambda: rotate_key(path, "nobody", timedelta(0)),
        lambda: set_limits(path, "nobody", {"rpm": 5}),
        lambda: get_key(path, "nobody"),
    ):
        with pytest.raises(GatewayConfigError, match="holds no key") as caught:
            change()
        assert caught.value.hint is not None and f"{record.id} (batch)" in caught.value.hint
    assert path.read_bytes() == before


def test_expiry_applies_at_its_time(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    plaintext, _ = add_key(path, "trial", ["*"], expires="2026-12-01T12:00:05Z")
    store = KeyStore(load_keys(path))
    assert store.check(plaintext, NOW)[1] is None
    assert store.check(plaintext, NOW + timedelta(seconds=5))[1] == (
        "this API key expired at 2026-12-01T12:00:05Z"
    )
    assert load_keys(path).keys[0].status(NOW + timedelta(seconds=5)) == "expired"


def test_rotation_keeps_the_id_and_the_old_secret_for_the_grace_period(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old, record = add_key(path, "batch", ["m"], limits=Limits(rpm=5))
    out = tmp_path / "new.key"
    new, rotated = rotate_key(path, "batch", timedelta(minutes=10), key_out=out, now=NOW)
    assert out.read_text() == new + "\n" and new != old
    assert new.split("_")[1] == old.split("_")[1]  # the same id, in the key itself
    assert (rotated.id, rotated.models, rotated.limits) == (record.id, ["m"], Limits(rpm=5))
    assert rotated.rotated == "2026-12-01T12:00:00Z"
    assert [s.valid_until for s in rotated.old_secrets] == ["2026-12-01T12:10:00Z"]
    text = path.read_text()
    assert old not in text and new not in text
    store = KeyStore(load_keys(path))
    for moment, old_ok in ((NOW, True), (NOW + timedelta(minutes=10), False)):
        assert store.check(new, moment) == (rotated, None)
        found, why = store.check(old, moment)
        assert found == rotated
        assert (why is None) == old_ok
    assert "this secret was replaced at 2026-12-01T12:00:00Z" in str(
        store.check(old, NOW + timedelta(minutes=10))[1]
    )
    # A second rotation after the grace drops the spent secret; with no grace, none is kept.
    _, again = rotate_key(path, "batch", timedelta(0), now=NOW + timedelta(hours=1))
    assert again.old_secrets == []
    assert KeyStore(load_keys(path)).check(new, NOW + timedelta(hours=1)) == (None, None)


def test_limits_are_set_cleared_and_kept_per_name(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "batch", ["*"], limits=Limits(rpm=60, concurrent=2))
    changed = set_limits(path, "batch", {"tpm": 1000, "rpm": None})
    assert changed.limits == Limits(tpm=1000, concurrent=2)
    assert changed.changed_by == actor() and changed.changed is not None
    assert json.loads(path.read_text())["keys"][0]["limits"] == {"tpm": 1000, "concurrent": 2}


def test_a_file_without_lifecycle_fields_reads_and_writes_as_before(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "operator", ["*"])
    (entry,) = json.loads(path.read_text())["keys"]
    assert set(entry) == {"id", "name", "sha256", "models", "created"}


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        ({"expires": "next tuesday"}, "keys[0].expires"),
        ({"limits": {"rpm": 0}}, "keys[0].limits.rpm"),
        ({"limits": {"rps": 5}}, "keys[0].limits.rps"),
        ({"old_secrets": [{"sha256": "x", "valid_until": "2026-12-01T12:00:00Z"}]},
         "keys[0].old_secrets[0].sha256"),
    ],
)  # fmt: skip
def test_bad_lifecycle_fields_name_their_place(
    tmp_path: Path, edit: dict[str, object], where: str
) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "operator", ["*"])
    document = json.loads(path.read_text())
    document["keys"][0].update(edit)
    path.write_text(json.dumps(document))
    with pytest.raises(GatewayConfigError) as caught:
        load_keys(path)
    assert [p.path for p in caught.value.problems] == [where]
