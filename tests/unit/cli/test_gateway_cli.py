"""``appliance gateway``: key lifecycle and limits commands, exact output and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.gateway.key_admin import actor
from appliance.gateway.keys import load_keys
from tests.fixtures.cli import run_cli

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


def made(capsys: pytest.CaptureFixture[str], keys_file: Path, *extra: str) -> dict[str, str]:
    code, out, err = run_cli(
        capsys, "--json", "gateway", "new-key", "--keys-file", str(keys_file), *extra
    )
    assert (code, err) == (0, ""), err
    return json.loads(out)  # type: ignore[no-any-return]


def test_new_key_with_expiry_and_limits(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    code, out, err = run_cli(
        capsys, "gateway", "new-key", "--keys-file", str(keys_file), "--name", "trial",
        "--model", "*", "--expires", "2099-01-31", "--rpm", "60", "--concurrent", "2",
    )  # fmt: skip
    assert (code, err) == (0, "")
    key, added, shown = out.splitlines()
    record = load_keys(keys_file).keys[0]
    assert added == (
        f"Key {record.id} (trial) for * added to {keys_file}. Expires: 2099-01-31T00:00:00Z; "
        "limits: rpm=60,concurrent=2."
    )
    assert key.startswith(f"apl_{record.id[2:]}_") and shown.startswith("It is shown only now")
    assert record.created_by == actor()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("--expires", "soon"), 35, "Error: --expires 'soon' is neither a duration nor a time"),
        (("--expires", "2001-01-01"), 35, "Error: --expires '2001-01-01' is already past"),
        (("--rpm", "0"), 2, "'0' is not a whole number of at least 1, or none"),
        (("--tpm", "-5"), 2, "'-5' is not a whole number of at least 1, or none"),
        (("--concurrent", "many"), 2, "'many' is not a whole number of at least 1, or none"),
    ],
)
def test_bad_new_key_options_change_nothing(
    capsys: pytest.CaptureFixture[str],
    keys_file: Path,
    argv: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    result = run_cli(
        capsys, "gateway", "new-key", "--keys-file", str(keys_file), "--name", "x",
        "--model", "*", *argv,
    )  # fmt: skip
    assert result[0] == code and message in result[2], result
    assert not keys_file.exists()


def test_revoke_by_name_or_id(capsys: pytest.CaptureFixture[str], keys_file: Path) -> None:
    key_id = made(capsys, keys_file, "--name", "batch", "--model", "*")["id"]
    code, out, err = run_cli(capsys, "gateway", "revoke", "--keys-file", str(keys_file), "batch")
    assert (code, err) == (0, "")
    assert re.fullmatch(
        rf"Key {key_id} \(batch\) revoked at {STAMP} by {re.escape(actor())}\.\n", out
    )
    code, out, err = run_cli(capsys, "gateway", "revoke", "--keys-file", str(keys_file), key_id)
    assert (code, out) == (35, "")
    assert err.startswith(f"Error: key {key_id} (batch) was already revoked at ")
    code, out, _ = run_cli(capsys, "gateway", "list-keys", "--keys-file", str(keys_file))
    assert code == 0 and out.split("  ")[4].strip() == "revoked"


def test_unknown_key_is_a_clear_error_and_nothing_changes(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    key_id = made(capsys, keys_file, "--name", "batch", "--model", "*")["id"]
    before = keys_file.read_bytes()
    for command in (("revoke",), ("rotate",), ("limits", "--rpm", "5")):
        code, out, err = run_cli(
            capsys, "gateway", command[0], "--keys-file", str(keys_file), "k-0badc0de", *command[1:]
        )
        assert (code, out) == (35, "")
        assert err == (
            f"Error: {keys_file} holds no key 'k-0badc0de'\n"
            f"Hint: name a key by its id or name; keys: {key_id} (batch) "
            "(appliance gateway list-keys)\n"
        )
    assert keys_file.read_bytes() == before


def test_rotate_prints_the_new_key_once_and_the_grace(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    first = made(capsys, keys_file, "--name", "batch", "--model", "*")
    code, out, err = run_cli(
        capsys, "--json", "gateway", "rotate", "--keys-file", str(keys_file), "batch",
        "--grace", "2h",
    )  # fmt: skip
    assert (code, err) == (0, "")
    rotated = json.loads(out)
    assert rotated["id"] == first["id"] and rotated["key"] != first["key"]
    assert rotated["key"].split("_")[1] == first["key"].split("_")[1]
    assert re.fullmatch(STAMP, rotated["old_valid_until"])
    code, out, err = run_cli(
        capsys, "gateway", "rotate", "--keys-file", str(keys_file), "batch", "--grace", "0"
    )
    assert (code, err) == (0, "")
    assert (
        out.splitlines()[1] == f"Key {first['id']} (batch) rotated; the old secret no longer works."
    )
    code, _, err = run_cli(
        capsys, "gateway", "rotate", "--keys-file", str(keys_file), "batch", "--grace", "1 hour"
    )
    assert code == 35 and err.startswith("Error: --grace '1 hour' is not a duration\n")


def test_limits_show_set_and_clear(capsys: pytest.CaptureFixture[str], keys_file: Path) -> None:
    key_id = made(capsys, keys_file, "--name", "batch", "--model", "*", "--rpm", "10")["id"]
    show = ("gateway", "limits", "--keys-file", str(keys_file), "batch")
    assert run_cli(capsys, *show) == (0, f"Limits of {key_id} (batch) are: rpm=10.\n", "")
    assert run_cli(capsys, *show, "--tpm", "5000", "--rpm", "none") == (
        0,
        f"Limits of {key_id} (batch) now: tpm=5000.\n",
        "",
    )
    code, out, _ = run_cli(capsys, "--json", *show, "--concurrent", "3")
    assert code == 0
    assert json.loads(out)["limits"] == {"rpm": None, "tpm": 5000, "concurrent": 3}
