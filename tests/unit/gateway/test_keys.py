"""API keys and the gateway's config: made once, stored hashed, checked in constant time."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import GatewayConfigError
from appliance.gateway.config import load_config
from appliance.gateway.keys import KeyStore, add_key, claimed_id, load_keys, new_key


def test_new_key_format_and_record() -> None:
    plaintext, record = new_key("operator", ["*"])
    assert re.fullmatch(r"apl_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", plaintext)
    assert record.id == f"k-{plaintext[4:12]}"
    assert record.sha256 == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in record.model_dump_json()
    assert claimed_id(plaintext) == record.id


@pytest.mark.parametrize("key", ["", "sk-abc", "apl_1234567_x", "apl_zzzzzzzz_x", "apl_12345678_"])
def test_claimed_id_rejects_what_is_not_a_key(key: str) -> None:
    assert claimed_id(key) is None


def test_store_authenticates_only_the_exact_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    plaintext, record = add_key(path, "operator", ["tiny-llama"])
    store = KeyStore(load_keys(path))
    assert store.authenticate(plaintext) == record
    assert store.authenticate(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert store.authenticate(new_key("other", ["*"])[0]) is None
    assert record.allows("tiny-llama") and not record.allows("other")


def test_keys_file_is_0640_holds_no_plaintext_and_names_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "keys.json"
    first, _ = add_key(path, "operator", ["*"])
    second, _ = add_key(path, "batch", ["a", "b"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    text = path.read_text()
    assert first not in text and second not in text
    assert [k["name"] for k in json.loads(text)["keys"]] == ["operator", "batch"]
    with pytest.raises(GatewayConfigError, match="already holds a key named 'operator'"):
        add_key(path, "operator", ["*"])
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind


def test_missing_keys_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError) as caught:
        load_keys(tmp_path / "keys.json")
    assert caught.value.hint is not None and "appliance gateway new-key" in caught.value.hint


GOOD = {
    "listen": {"host": "127.0.0.1", "port": 8000, "plain_http": True},
    "keys_file": "/etc/appliance/gateway/keys.json",
    "audit": {"dir": "/var/log/appliance/audit", "max_bytes": 67108864, "fsync": False},
    "models": [
        {"name": "tiny-llama", "digest": "sha256:" + "a" * 64, "backend": "http://127.0.0.1:8081"}
    ],
}


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"models": []}, "models", "List should have at least 1 item"),
        ({"listen": {"port": 0}}, "listen.port", "greater than or equal to 1"),
        ({"listen": {"port": 8000}}, "listen", "set tls (cert, key) to serve HTTPS, or plain_http"),
        (
            {"listen": {"plain_http": True, "tls": {"cert": "/c", "key": "/k"}}},
            "listen",
            "both tls and plain_http are set",
        ),
        (
            {"listen": {"tls": {"cert": "/c", "key": "/k", "min_version": "1.1"}}},
            "listen.tls.min_version",
            "Input should be '1.2' or '1.3'",
        ),
        ({"audit": {"dir": "/x", "colour": 1}}, "audit.colour", "Extra inputs are not permitted"),
        (
            {"models": [{**GOOD["models"][0], "digest": "md5:00"}]},  # type: ignore[index]
            "models[0].digest",
            "String should match pattern",
        ),
        (
            {"models": [{**GOOD["models"][0], "backend": "ftp://x"}]},  # type: ignore[index]
            "models[0].backend",
            "URL scheme should be 'http' or 'https'",
        ),
        (
            {"models": [GOOD["models"][0], GOOD["models"][0]]},  # type: ignore[index]
            "models",
            "repeated: tiny-llama",
        ),
    ],
)
def test_config_errors_name_the_field(
    tmp_path: Path, change: dict[str, object], path: str, message: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(GatewayConfigError) as caught:
        load_config(config)
    problems = caught.value.problems
    assert [p.path for p in problems] == [path]
    assert message in problems[0].message


def test_good_config_loads(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(GOOD))
    loaded = load_config(config)
    route = loaded.models[0]
    assert (route.upstream_name, route.backend_base) == ("tiny-llama", "http://127.0.0.1:8081")


def test_key_out_writes_the_plaintext_first_and_root_only(tmp_path: Path) -> None:
    keys_file, secret = tmp_path / "keys.json", tmp_path / "secrets" / "operator.key"
    plaintext, record = add_key(keys_file, "operator", ["*"], key_out=secret)
    assert secret.read_text() == plaintext + "\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert hashlib.sha256(plaintext.encode()).hexdigest() == record.sha256
    assert plaintext not in keys_file.read_text()
    # A keys file that cannot be written leaves the plaintext (a fresh key next run), never a
    # recorded key whose plaintext is lost. (Root ignores modes: a file where a directory
    # should be makes the write fail.)
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises((OSError, GatewayConfigError)):
        add_key(
            tmp_path / "not-a-dir" / "keys.json",
            "second",
            ["*"],
            key_out=tmp_path / "secrets" / "second.key",
        )
    assert (tmp_path / "secrets" / "second.key").is_file()
    assert [k.name for k in load_keys(keys_file).keys] == ["operator"]


def test_two_key_changes_at_once_both_stay(tmp_path: Path) -> None:
    """A revocation and a limits change running together: neither save undoes the other."""
    import threading

    from appliance.gateway import key_admin

    keys_file = tmp_path / "keys.json"
    add_key(keys_file, "a", ["*"])
    add_key(keys_file, "b", ["*"])
    saving = threading.Event()
    real_save = key_admin.save_keys

    def slow_save(path: Path, keys: Any) -> None:
        saving.set()  # the revocation holds its copy of the file now
        threading.Event().wait(0.3)
        real_save(path, keys)

    key_admin.save_keys = slow_save  # type: ignore[assignment]
    try:
        first = threading.Thread(target=key_admin.revoke_key, args=(keys_file, "a"))
        first.start()
        saving.wait(5)
        key_admin.save_keys = real_save  # type: ignore[assignment]
        key_admin.set_limits(keys_file, "b", {"rpm": 5})
        first.join()
    finally:
        key_admin.save_keys = real_save  # type: ignore[assignment]
    by_name = {k.name: k for k in load_keys(keys_file).keys}
    assert by_name["a"].revoked is not None
    assert by_name["b"].limits.rpm == 5
