"""``appliance gateway``: API keys for the gateway (made once, shown once, stored hashed)."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.output import Output
from appliance.gateway.config import DEFAULT_KEYS_FILE
from appliance.gateway.keys import add_key, load_keys

_KEYS_FILE = click.option(
    "--keys-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_KEYS_FILE,
    show_default=True,
    help="The gateway's keys file.",
)


@click.group("gateway")
def gateway_group() -> None:
    """Manage the API keys of the audited gateway (appliance-gateway).

    Each key has an allow list of models. The keys file holds only a hash of
    each key; the key itself is printed once, when it is made. The running
    gateway picks up changes on SIGHUP (systemctl reload appliance-gateway).
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
    "--key-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the key to this file (0600) instead of printing it; written before the "
    "keys file, so no recorded key is ever lost.",
)
@_KEYS_FILE
@click.pass_obj
def new_key_command(
    output: Output,
    name: str,
    models: tuple[str, ...],
    key_out: Path | None,
    keys_file: Path,
) -> None:
    """Make a key, add its hash to the keys file, print the key once.

    \b
    Examples:
      appliance gateway new-key --name operator --model '*'
      appliance gateway new-key --name batch --model tiny-llama --json
    """
    plaintext, record = add_key(keys_file, name, list(models), key_out)
    added = f"Key {record.id} ({record.name}) for {', '.join(record.models)} added to {keys_file}."
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
    """List the keys in the keys file: ids, names, models, creation times (no hashes)."""
    keys = load_keys(keys_file).keys
    rows = [{"id": k.id, "name": k.name, "models": k.models, "created": k.created} for k in keys]
    lines = [f"{r['id']}  {r['name']}  {','.join(r['models'])}  {r['created']}" for r in rows]
    output.result({"ok": True, "keys": rows}, human="\n".join(lines) or "no keys")
