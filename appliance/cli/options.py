"""The global options (--json, -v/--verbose, -q/--quiet, --debug), accepted at every level.

Users of gh, kubectl and skopeo type ``appliance inspect BUNDLE --json`` as readily as
``appliance --json inspect BUNDLE``; both mean the same. Each command of the tree gets the same
four options, which only add to what the root already set on the shared ``Output``.
"""

from __future__ import annotations

from typing import Any

import click

from appliance.cli.output import Output

JSON_HELP = "Print one JSON document on stdout."
VERBOSE_HELP = "Say more (repeat for even more)."
QUIET_HELP = "Print only errors and results."
DEBUG_HELP = "Show tracebacks for errors."


def _apply(flag: str) -> Any:
    def callback(ctx: click.Context, _param: click.Parameter, value: bool | int) -> None:
        if value:
            given: dict[str, Any] = {flag: value}
            ctx.ensure_object(Output).apply_flags(**given)

    return callback


def global_options() -> list[click.Option]:
    """Fresh instances of the four options, for one command."""
    common: dict[str, Any] = {"expose_value": False}
    return [
        click.Option(
            ["--json"], is_flag=True, help=JSON_HELP, callback=_apply("json_mode"), **common
        ),
        click.Option(
            ["-v", "--verbose"], count=True, help=VERBOSE_HELP, callback=_apply("verbose"), **common
        ),
        click.Option(
            ["-q", "--quiet"], is_flag=True, help=QUIET_HELP, callback=_apply("quiet"), **common
        ),
        click.Option(
            ["--debug"], is_flag=True, help=DEBUG_HELP, callback=_apply("debug"), **common
        ),
    ]


def add_global_options(command: click.Command) -> click.Command:
    """Give ``command`` and every command below it, at any depth, the global options (once:
    the lazy root group hands the same command object out again)."""
    if not getattr(command, "_appliance_global_options", False):
        command.params.extend(global_options())
        command._appliance_global_options = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_options(sub)
    return command
