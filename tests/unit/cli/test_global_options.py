"""--json, -v/--verbose, -q/--quiet and --debug work after the subcommand too, at any depth, with
the same effect as before it: exact output and exit codes of both forms."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from appliance.bundle.signing import keygen
from appliance.cli import cli
from appliance.cli.output import Output
from appliance.gateway.keys import add_key
from tests.fixtures.bundles import make_bundle
from tests.fixtures.cli import run_cli

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
GLOBAL_OPTION_LINES = [
    "--json Print one JSON document on stdout.",
    "-v, --verbose Say more (repeat for even more).",
    "-q, --quiet Print only errors and results.",
    "--debug Show tracebacks for errors.",
]


@pytest.fixture(autouse=True)
def mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped specs read ${DEBIAN_MIRROR}; validation fetches nothing, so any URL does."""
    monkeypatch.setenv("DEBIAN_MIRROR", "http://mirror.invalid/debian")


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path below ``group``, asking it as click does (the root loads lazily)."""
    context = click.Context(group)
    paths = []
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


def test_the_tree_is_walked_to_every_depth() -> None:
    paths = command_paths(cli)
    assert ("gateway", "list-keys") in paths and ("audit", "verify") in paths
    assert ("spec", "validate") in paths and ("inspect",) in paths


@pytest.mark.parametrize("path", command_paths(cli), ids=" ".join)
def test_every_command_lists_the_global_options_in_its_help(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...]
) -> None:
    code, out, err = run_cli(capsys, *path, "--help")
    assert (code, err) == (0, "")
    options = [" ".join(line.split()) for line in out.split("Options:\n", 1)[1].splitlines()]
    for line in GLOBAL_OPTION_LINES:
        assert options.count(line) == 1, (line, out)


def test_inspect_help_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "inspect", "--help") == (
        0,
        "Usage: appliance inspect [OPTIONS] BUNDLE\n"
        "\n"
        "  Show what BUNDLE holds: components, versions, sizes, counts.\n"
        "\n"
        "  Without --pubkey, reads the manifest without verifying it; run verify-bundle\n"
        "  before you trust what it says.\n"
        "\n"
        "Options:\n"
        "  --pubkey FILE  Check the manifest's signature with this key first (the files\n"
        "                 are not read).\n"
        "  --json         Print one JSON document on stdout.\n"
        "  -v, --verbose  Say more (repeat for even more).\n"
        "  -q, --quiet    Print only errors and results.\n"
        "  --debug        Show tracebacks for errors.\n"
        "  -h, --help     Show this message and exit.\n",
        "",
    )


def same_either_side(capsys: pytest.CaptureFixture[str], flag: str, *argv: str) -> tuple:
    """Run with ``flag`` before and after the command; both must print exactly the same."""
    before = run_cli(capsys, flag, *argv)
    after = run_cli(capsys, *argv, flag)
    assert after == before
    return before


def test_inspect_json_after_the_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    keygen(tmp_path / "key", "cli test")
    bundle = make_bundle(tmp_path, tmp_path / "key")
    code, out, err = same_either_side(capsys, "--json", "inspect", str(bundle))
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert (document["name"], document["release"]) == ("t", "1")
    human = run_cli(capsys, "inspect", str(bundle))
    assert human[0] == 0 and not human[1].lstrip().startswith("{")


def test_an_error_is_one_json_document_with_json_after_the_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = same_either_side(capsys, "--json", "spec", "validate", str(tmp_path / "x"))
    assert code == 3
    assert json.loads(out) == {
        "ok": False,
        "error": {
            "kind": "spec-file",
            "exit_code": 3,
            "message": f"spec file '{tmp_path / 'x'}' does not exist",
            "hint": "check the path; the shipped examples are in examples/",
            "problems": [],
        },
    }
    assert err == (
        f"Error: spec file '{tmp_path / 'x'}' does not exist\n"
        "Hint: check the path; the shipped examples are in examples/\n"
    )


def test_gateway_list_keys_json_at_every_depth(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    add_key(keys, "team-a", ["tiny-llama"], None)
    argv = ("list-keys", "--keys-file", str(keys))
    root = run_cli(capsys, "--json", "gateway", *argv)
    assert run_cli(capsys, "gateway", "--json", *argv) == root
    assert run_cli(capsys, "gateway", *argv, "--json") == root
    code, out, err = root
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["ok"] is True
    assert [(k["name"], k["models"]) for k in document["keys"]] == [("team-a", ["tiny-llama"])]


def test_quiet_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    demo = str(EXAMPLES / "demo.yaml")
    assert same_either_side(capsys, "-q", "spec", "validate", demo) == (0, "", "")
    code, out, err = same_either_side(capsys, "--quiet", "spec", "validate", str(EXAMPLES / "x"))
    assert (code, out) == (3, "") and err.startswith("Error: spec file ")


def test_debug_after_the_command_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "spec", "validate", str(tmp_path / "nope.yaml"), "--debug")
    assert code == 3
    assert "Traceback (most recent call last)" in err
    assert "Error: spec file" in err


def flags(*argv: str) -> tuple[bool, int, bool]:
    """(json_mode, verbosity, debug) after parsing ``appliance ARGV``."""
    output = Output()
    cli.main(args=list(argv), prog_name="appliance", standalone_mode=False, obj=output)
    return output.json_mode, output.verbosity, output.debug


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (["-v"], ["-v"], (False, 2, False)),
        (["-vv"], [], (False, 2, False)),
        ([], ["-vv"], (False, 2, False)),
        (["-v"], ["-q"], (False, -1, False)),
        ([], ["-q", "-v"], (False, -1, False)),
        ([], ["-v", "--quiet"], (False, -1, False)),
        (["--json"], ["--debug"], (True, 0, True)),
        ([], ["--json", "--debug", "--verbose"], (True, 1, True)),
    ],
)
def test_flags_add_up_wherever_they_stand(
    capsys: pytest.CaptureFixture[str],
    before: list[str],
    after: list[str],
    expected: tuple[bool, int, bool],
) -> None:
    demo = str(EXAMPLES / "demo.yaml")
    assert flags(*before, "spec", "validate", demo, *after) == expected
    assert flags(*before, *after, "spec", "validate", demo) == expected
    capsys.readouterr()


def test_a_usage_error_is_still_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "spec", "validate", "--json")
    assert code == 2
    assert "Missing argument 'SPEC'" in err
