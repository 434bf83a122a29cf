"""The options more than one command takes, each defined once so that --help and defaults agree.

The global options (--json, -v/--verbose, -q/--quiet, --debug) are accepted at every level:
users of gh, kubectl and skopeo type ``appliance inspect BUNDLE --json`` as readily as
``appliance --json inspect BUNDLE``; both mean the same. Each command of the tree gets the same
four options, which only add to what the root already set on the shared ``Output``.

The depot's options (--root, --bundle, --pubkey, --inventory, --internal-cidr, the verify
targets, --allow-downgrade) are decorators for the commands that install, upgrade, roll back,
verify and look after releases and models (``from appliance.cli import options as option``,
then ``@option.root()``). ``recalled=True`` is for the commands that run after an install and,
given nothing, take the hosts of the depot's last play (hosts_record.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance.cli.output import Output

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ROOT = Path("/opt/appliance")

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


def root() -> Callable[[F], F]:
    return click.option(
        "--root",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_ROOT,
        show_default=True,
        help="The appliance's root on the depot: its releases, the current link, run records.",
    )


def bundle() -> Callable[[F], F]:
    return click.option(
        "--bundle",
        type=click.Path(path_type=Path, exists=True),
        required=True,
        help="The release's bundle: a directory or a packed .tar.",
    )


def pubkey() -> Callable[[F], F]:
    return click.option(
        "--pubkey",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        required=True,
        help="The publisher's public key, carried separately.",
    )


def inventory(*, recalled: bool = False) -> Callable[[F], F]:
    default = "the last install's on this depot, else " if recalled else ""
    return click.option(
        "--inventory",
        type=click.Path(path_type=Path, dir_okay=False),
        help=f"Ansible inventory with groups depot and gpu_nodes. Default: {default}this machine "
        "alone.",
    )


def internal_cidr(*, recalled: bool = False) -> Callable[[F], F]:
    default = " Default: the last install's on this depot." if recalled else ""
    return click.option(
        "--internal-cidr",
        "internal_cidrs",
        multiple=True,
        help=f"An IPv4 network inside the boundary (repeat); all other egress is dropped.{default}",
    )


def egress_target(*, required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--egress-target",
        "egress_targets",
        multiple=True,
        required=required,
        help="A URL outside the boundary that must NOT answer when verify probes it (repeat). "
        "Probe only what you own.",
    )


def internal_target() -> Callable[[F], F]:
    return click.option(
        "--internal-target",
        "internal_targets",
        multiple=True,
        help="A URL inside the boundary that must answer when verify probes it (repeat).",
    )


def allow_downgrade() -> Callable[[F], F]:
    return click.option(
        "--allow-downgrade",
        is_flag=True,
        help="Go to a release older than the current one (a lower build sequence in its "
        "signed manifest).",
    )
