"""``appliance gateway``: API keys for the gateway (made once, shown once, stored hashed),
their lifecycle (revoke, rotate, expiry) and their limits."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from appliance.cli.output import Output
from appliance.gateway.config import DEFAULT_KEYS_FILE
from appliance.gateway.key_admin import (
    actor,
    get_key,
    parse_duration,
    parse_expires,
    revoke_key,
    rotate_key,
    set_limits,
)
from appliance.gateway.keys import (
    KeyRecord,
    Limits,
    add_key,
    format_time,
    load_keys,
    parse_time,
)

_KEYS_FILE = click.option(
    "--keys-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_KEYS_FILE,
    show_default=True,
    help="The gateway's keys file.",
)
_KEY_OUT = click.option(
    "--key-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the key to this file (0600) instead of printing it; written before the "
    "keys file, so no recorded key is ever lost.",
)


class _Limit(click.ParamType[int]):
    """A positive count, or ``none`` (read as 0) to remove the limit."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "none":
            return 0
        if not str(value).isdigit() or int(value) < 1:
            self.fail(f"{value!r} is not a whole number of at least 1, or none", param, ctx)
        return int(value)


def _limit_options(command: Any) -> Any:
    for flag, text in reversed(
        (
            ("--rpm", "Requests per minute."),
            ("--tpm", "Tokens (prompt + completion, as the backend reports) per minute."),
            ("--concurrent", "Calls in flight at once."),
        )
    ):
        command = click.option(flag, type=_Limit(), help=text + " 'none': no limit.")(command)
    return command


def _given(**values: int | None) -> dict[str, int | None]:
    """The limit options that were given: a count, or None for 'none' (no limit)."""
    return {name: v or None for name, v in values.items() if v is not None}


def _row(record: KeyRecord, now: datetime) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "models": record.models,
        "created": record.created,
        "status": record.status(now),
        "expires": record.expires,
        "revoked": record.revoked,
        "rotated": record.rotated,
        "limits": record.limits.model_dump(),
    }


@click.group("gateway")
def gateway_group() -> None:
    """Manage the API keys of the audited gateway (appliance-gateway).

    Each key has an allow list of models, optional limits and an optional
    expiry. The keys file holds only a hash of each key; the key itself is
    printed once, when it is made or rotated. The running gateway applies
    every change within a second (it watches the file; SIGHUP, i.e.
    systemctl reload appliance-gateway, loads it at once) and records it in
    its audit log, with the OS user who made it.
    """


@gateway_group.command("new-key")
@click.option("--name", required=True, help="Who or what uses the key (unique).")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help="A model the key may use (repeat); '*' for every model.",
)
@click.option(
    "--expires",
    help="When the key stops working: a duration from now (30d, 12h, 1w) or a UTC time "
    "(2027-01-31, 2027-01-31T18:00:00Z). Default: never.",
)
@_limit_options
@_KEY_OUT
@_KEYS_FILE
@click.pass_obj
def new_key_command(
    output: Output,
    name: str,
    models: tuple[str, ...],
    expires: str | None,
    rpm: int | None,
    tpm: int | None,
    concurrent: int | None,
    key_out: Path | None,
    keys_file: Path,
) -> None:
    """Make a key, add its hash to the keys file, print the key once.

    \b
    Examples:
      appliance gateway new-key --name operator --model '*'
      appliance gateway new-key --name batch --model tiny-llama --json
      appliance gateway new-key --name trial --model '*' --expires 30d --rpm 60 --tpm 20000
    """
    when = parse_expires(expires, datetime.now(UTC)) if expires is not None else None
    limits = Limits.model_validate(_given(rpm=rpm, tpm=tpm, concurrent=concurrent))
    plaintext, record = add_key(
        keys_file, name, list(models), key_out, expires=when, limits=limits, actor=actor()
    )
    added = f"Key {record.id} ({record.name}) for {', '.join(record.models)} added to {keys_file}."
    if record.expires or record.limits != Limits():
        added += f" Expires: {record.expires or 'never'}; limits: {record.limits.describe()}."
    if key_out is not None:
        output.result(
            {"id": record.id, "key_file": str(key_out)},
            human=f"{added}\nThe key is in {key_out} (0600), and nowhere else.",
        )
        return
    output.result(
        {"id": record.id, "key": plaintext},
        human=f"{plaintext}\n{added}\nIt is shown only now: store it where its user can read it.",
    )


@gateway_group.command("list-keys")
@_KEYS_FILE
@click.pass_obj
def list_keys_command(output: Output, keys_file: Path) -> None:
    """List the keys: ids, names, models, creation, status, expiry, limits (no hashes)."""
    now = datetime.now(UTC)
    keys = load_keys(keys_file).keys
    rows = [_row(k, now) for k in keys]
    lines = [
        f"{k.id}  {k.name}  {','.join(k.models)}  {k.created}  {k.status(now)}"
        + (f"  expires {k.expires}" if k.expires else "")
        + (f"  limits {k.limits.describe()}" if k.limits != Limits() else "")
        for k in keys
    ]
    output.result({"ok": True, "keys": rows}, human="\n".join(lines) or "no keys")


@gateway_group.command("revoke")
@click.argument("key")
@_KEYS_FILE
@click.pass_obj
def revoke_command(output: Output, key: str, keys_file: Path) -> None:
    """Revoke KEY (its id or name) for good; the running gateway refuses it within a second.

    \b
    Example:
      appliance gateway revoke k-3f9c01ab
    """
    record = revoke_key(keys_file, key)
    output.result(
        {"id": record.id, "revoked": record.revoked, "by": record.revoked_by},
        human=f"Key {record.id} ({record.name}) revoked at {record.revoked} by "
        f"{record.revoked_by}.",
    )


@gateway_group.command("rotate")
@click.argument("key")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    help="How long the old secret still works (a duration: 15m, 1h, 2d; 0 for not at all).",
)
@_KEY_OUT
@_KEYS_FILE
@click.pass_obj
def rotate_command(
    output: Output, key: str, grace: str, key_out: Path | None, keys_file: Path
) -> None:
    """Give KEY (its id or name) a new secret; its id, models and limits stay.

    The new key is printed once (or written to --key-out). The old one is
    accepted until the grace period ends, so its users can switch over.

    \b
    Example:
      appliance gateway rotate batch --grace 24h --key-out /root/batch.key
    """
    period = parse_duration(grace, "--grace", allow_zero=True)
    plaintext, record = rotate_key(keys_file, key, period, key_out)
    assert record.rotated is not None
    until = format_time(parse_time(record.rotated) + period) if period else None
    old = f"the old secret works until {until}" if until else "the old secret no longer works"
    done = f"Key {record.id} ({record.name}) rotated; {old}."
    if key_out is not None:
        output.result(
            {"id": record.id, "key_file": str(key_out), "old_valid_until": until},
            human=f"{done}\nThe new key is in {key_out} (0600), and nowhere else.",
        )
        return
    output.result(
        {"id": record.id, "key": plaintext, "old_valid_until": until},
        human=f"{plaintext}\n{done}\nIt is shown only now.",
    )


@gateway_group.command("limits")
@click.argument("key")
@_limit_options
@_KEYS_FILE
@click.pass_obj
def limits_command(
    output: Output,
    key: str,
    rpm: int | None,
    tpm: int | None,
    concurrent: int | None,
    keys_file: Path,
) -> None:
    """Show or change the limits of KEY (its id or name); unnamed limits stay.

    A call over a limit gets 429 with Retry-After, and an audit record that
    names the limit. Without options, shows the limits.

    \b
    Examples:
      appliance gateway limits batch --rpm 120 --tpm 50000 --concurrent 4
      appliance gateway limits batch --tpm none
    """
    changes = _given(rpm=rpm, tpm=tpm, concurrent=concurrent)
    if changes:
        record = set_limits(keys_file, key, changes)
        verb = "now"
    else:
        record = get_key(keys_file, key)
        verb = "are"
    output.result(
        {"id": record.id, "limits": record.limits.model_dump()},
        human=f"Limits of {record.id} ({record.name}) {verb}: {record.limits.describe()}.",
    )
