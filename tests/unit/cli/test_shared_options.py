"""The depot's options are one definition each (cli/options.py): every command that takes one
shows the same help and default, so --help cannot say one thing for install and another for
upgrade."""

from __future__ import annotations

import click
import pytest

from appliance.cli import cli
from appliance.cli.options import DEFAULT_ROOT
from tests.fixtures.cli import run_cli

DEPOT_COMMANDS = [
    ("install",),
    ("upgrade",),
    ("rollback",),
    ("verify",),
    ("releases",),
    ("releases", "prune"),
    ("models", "add"),
    ("models", "list"),
    ("models", "remove"),
]
SHARED = [
    "--root",
    "--bundle",
    "--inventory",
    "--internal-cidr",
    "--egress-target",
    "--internal-target",
    "--allow-downgrade",
]
# The one sentence that differs, by design, for the commands that take the last play's hosts.
RECALLED = (
    " Default: the last install's on this depot.",
    "the last install's on this depot, else ",
)


def option(path: tuple[str, ...], name: str) -> click.Option | None:
    command: click.Command | None = cli
    for part in path:
        assert isinstance(command, click.Group)
        command = command.get_command(click.Context(command), part)
    assert command is not None
    found = [p for p in command.params if isinstance(p, click.Option) and name in p.opts]
    return found[0] if found and isinstance(found[0], click.Option) else None


@pytest.mark.parametrize("name", SHARED)
def test_a_shared_option_reads_the_same_in_every_command(name: str) -> None:
    seen = {path: option(path, name) for path in DEPOT_COMMANDS}
    given = {path: o for path, o in seen.items() if o is not None}
    assert len(given) >= 2, f"{name} is taken by {list(given)} only"
    helps = set()
    for o in given.values():
        text = o.help or ""
        for sentence in RECALLED:
            text = text.replace(sentence, "")
        helps.add((text, o.default, o.multiple, o.is_flag))
    assert len(helps) == 1, helps


def test_root_has_one_default_and_says_it() -> None:
    for path in DEPOT_COMMANDS:
        root = option(path, "--root")
        assert root is not None, path
        assert (root.default, root.show_default) == (DEFAULT_ROOT, True)


def test_the_recalled_defaults_are_said_where_they_apply(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for path, recalled in ((("upgrade",), True), (("rollback",), True), (("install",), False)):
        code, out, err = run_cli(capsys, *path, "--help")
        assert (code, err) == (0, "")
        flat = " ".join(out.split())
        assert ("Default: the last install's on this depot, else this machine alone." in flat) is (
            recalled
        ), (path, flat)
        assert "--root DIRECTORY The appliance's root on the depot" in flat
