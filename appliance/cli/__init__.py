"""The ``appliance`` command line. Commands parse arguments and render; work lives elsewhere."""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from appliance import __version__
from appliance.cli.options import (
    DEBUG_HELP,
    JSON_HELP,
    QUIET_HELP,
    VERBOSE_HELP,
    add_global_options,
)
from appliance.cli.output import Output
from appliance.errors import ApplianceError, exit_codes

# Each command's module, imported when that command runs (or --help lists them all): a command
# pays only for its own imports, which keeps short runs such as a cached rebuild short.
_COMMANDS = {
    "spec": "appliance.cli.spec:spec_group",
    "keygen": "appliance.cli.bundle:keygen",
    "build-bundle": "appliance.cli.bundle:build_bundle_command",
    "verify-bundle": "appliance.cli.bundle:verify_bundle",
    "inspect": "appliance.cli.bundle:inspect",
    "pack": "appliance.cli.bundle:pack_command",
    "unpack": "appliance.cli.bundle:unpack_command",
    "install": "appliance.cli.install:install_command",
    "upgrade": "appliance.cli.upgrade:upgrade_command",
    "verify": "appliance.cli.install:verify_command",
    "releases": "appliance.cli.releases:releases_group",
    "rollback": "appliance.cli.rollback:rollback_command",
    "gateway": "appliance.cli.gateway:gateway_group",
    "audit": "appliance.cli.audit:audit_group",
    "size": "appliance.cli.size:size_command",
    "models": "appliance.cli.models:models_group",
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, _, name = _COMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        # After the subcommand too, at any depth: `appliance gateway list-keys --json`.
        return add_global_options(command)


# Click reports bad options and arguments itself, with exit code 2.
_EXIT_CODES = {**exit_codes(), "usage (bad option or argument)": 2}

_EPILOG = """\b
The flow:
  1. On a connected machine, describe what the appliance holds in a spec
     (appliance.yaml), check it, and build a signed bundle:
       appliance spec validate appliance.yaml
       appliance keygen -o signing-key
       appliance build-bundle appliance.yaml -o bundle --sign-key signing-key
  2. Carry the bundle (or `appliance pack` it into one file) and signing-key.pub
     across the air gap, separately.
  3. On the isolated depot host, with only python3:
       bundle/install.sh --pubkey signing-key.pub
     which verifies the bundle and runs `appliance install`.
  4. Later releases upgrade the running one, plan first, through their own
     installer:
       new-bundle/install.sh upgrade --pubkey signing-key.pub --plan-only

\b
Examples:
  appliance spec validate examples/demo.yaml
  appliance inspect bundle --json
  appliance verify-bundle bundle.tar --pubkey signing-key.pub
  appliance install --bundle bundle --pubkey signing-key.pub --internal-cidr 198.18.10.0/24

\b
Exit codes:
""" + "\n".join(
    f"  {code:>3}  {kind}" for kind, code in sorted(_EXIT_CODES.items(), key=lambda kv: kv[1])
)


@click.group(
    cls=_LazyGroup,
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="appliance")
@click.option("--json", "json_mode", is_flag=True, help=JSON_HELP)
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
@click.pass_context
def cli(ctx: click.Context, json_mode: bool, verbose: int, quiet: bool, debug: bool) -> None:
    """Build and install air-gapped LLM appliances.

    appliance turns "connect and pull" into "pre-stage and reference": on a
    connected machine it fetches, pins (sha256) and signs everything an LLM
    appliance needs into one bundle; inside the isolated network it verifies
    that bundle and provisions the hosts offline, with egress denied.
    """
    ctx.ensure_object(Output).apply_flags(json_mode, verbose, quiet, debug)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every ApplianceError into one report."""
    output = Output()
    try:
        code = cli.main(args=argv, prog_name="appliance", standalone_mode=False, obj=output)
    except ApplianceError as error:
        if output.debug:
            traceback.print_exc()
        output.error(error)
        sys.exit(error.exit_code)
    except click.ClickException as usage:
        usage.show()
        sys.exit(usage.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
