"""${NAME} in spec values: expanded from the environment, or reported like every other problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import SpecInvalidError
from appliance.spec import parse_spec
from appliance.spec.environment import MAX_EXPANDED
from tests.fixtures.cli import run_cli

MIRROR = "http://mirror.invalid/debian"
SPEC = """\
version: 1
name: demo
release: 2026.11.0
targets: [{os: debian-12, arch: amd64}]
description: DESCRIPTION
packages:
  sources:
    - kind: apt
      url: ${DEBIAN_MIRROR}
      suites: [bookworm]
      components: [main]
      keyring: /usr/share/keyrings/debian-archive-keyring.gpg
  install: [jq]
"""  # the url is on line 9


def problems(text: str, environ: dict[str, str]) -> list[str]:
    with pytest.raises(SpecInvalidError) as caught:
        parse_spec(text, "spec.yaml", environ)
    return [p.render() for p in caught.value.problems]


def test_a_variable_becomes_the_value() -> None:
    spec = parse_spec(SPEC, "spec.yaml", {"DEBIAN_MIRROR": MIRROR})
    assert spec.packages is not None
    assert spec.packages.sources[0].url == MIRROR


def test_inside_a_longer_string_and_several_in_one_value() -> None:
    text = SPEC.replace("${DEBIAN_MIRROR}", "http://${HOST}:${PORT}/debian")
    spec = parse_spec(text, "spec.yaml", {"HOST": "198.18.0.1", "PORT": "8080"})
    assert spec.packages is not None
    assert spec.packages.sources[0].url == "http://198.18.0.1:8080/debian"


def test_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBIAN_MIRROR", MIRROR)
    spec = parse_spec(SPEC, "spec.yaml")
    assert spec.packages is not None
    assert spec.packages.sources[0].url == MIRROR


def test_an_unset_variable_is_one_problem_at_its_path_and_line() -> None:
    with pytest.raises(SpecInvalidError) as caught:
        parse_spec(SPEC, "spec.yaml", {})
    assert [p.render() for p in caught.value.problems] == [
        "packages.sources[0].url (line 9): environment variable DEBIAN_MIRROR is not set"
    ]
    assert caught.value.message == "spec.yaml: 1 problem in the spec"
    assert caught.value.hint is not None
    assert caught.value.hint.startswith(
        "export each environment variable named above before running appliance, e.g. "
        "`export DEBIAN_MIRROR=URL` with the URIs: value of this machine's Debian source"
    )


def test_reported_with_every_other_problem() -> None:
    text = SPEC.replace("name: demo", "name: Demo").replace("[jq]", "[jq, JQ]")
    assert problems(text, {}) == [
        "name (line 2): invalid name 'Demo': use 1-63 lowercase letters, digits, '.', '_' or "
        "'-', starting with a letter or digit",
        "packages.sources[0].url (line 9): environment variable DEBIAN_MIRROR is not set",
        "packages.install[1] (line 13): 'JQ' is not a Debian package name (lowercase letters, "
        "digits, '+', '-', '.'; optionally =VERSION)",
    ]


def test_an_empty_variable_is_a_problem() -> None:
    assert problems(SPEC, {"DEBIAN_MIRROR": ""}) == [
        "packages.sources[0].url (line 9): environment variable DEBIAN_MIRROR is empty"
    ]


def test_the_expanded_value_is_still_validated() -> None:
    assert problems(SPEC, {"DEBIAN_MIRROR": "ftp://mirror.invalid/debian"}) == [
        "packages.sources[0].url (line 9): unsupported URL 'ftp://mirror.invalid/debian': use "
        "one of http://, https://, file://"
    ]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("costs $$5", "costs $5"),
        ("$${DEBIAN_MIRROR}", "${DEBIAN_MIRROR}"),
        ("$$$${X}", "$${X}"),
        ("a lone $ and $HOME stay as written", "a lone $ and $HOME stay as written"),
        ("trailing $", "trailing $"),
        # A value is expanded once: text that a variable brings in is never expanded again.
        ("${NESTED}", "${DEBIAN_MIRROR}"),
    ],
)
def test_escapes_and_no_second_pass(written: str, expected: str) -> None:
    text = SPEC.replace("DESCRIPTION", f"'{written}'")
    spec = parse_spec(text, "spec.yaml", {"DEBIAN_MIRROR": MIRROR, "NESTED": "${DEBIAN_MIRROR}"})
    assert spec.description == expected


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("${DEBIAN_MIRROR:-x}", "'${DEBIAN_MIRROR:-x}'"),
        ("${}", "'${}'"),
        ("${9LIVES}", "'${9LIVES}'"),
        ("${A${B}}", "'${A${B}'"),
        ("$(id -u)${", "'${'"),
        ("${UNCLOSED", "'${UNCLOSED'"),
    ],
)
def test_anything_else_after_dollar_brace_is_refused(written: str, shown: str) -> None:
    text = SPEC.replace("DESCRIPTION", f"'{written}'")
    assert problems(text, {"DEBIAN_MIRROR": MIRROR, "A": "a", "B": "b"}) == [
        f"description (line 5): {shown} is not a variable reference: write ${{NAME}} (letters, "
        "digits and _), or $$ for a literal $"
    ]


def test_an_expansion_is_bounded() -> None:
    text = SPEC.replace("DESCRIPTION", "${BIG}")
    spec = parse_spec(text, "spec.yaml", {"DEBIAN_MIRROR": MIRROR, "BIG": "x" * MAX_EXPANDED})
    assert spec.description == "x" * MAX_EXPANDED
    big = "x" * (MAX_EXPANDED + 1)
    assert problems(text, {"DEBIAN_MIRROR": MIRROR, "BIG": big}) == [
        f"description (line 5): expands to {MAX_EXPANDED + 1} characters, more than the "
        f"{MAX_EXPANDED} a value may hold"
    ]


def test_keys_are_never_expanded() -> None:
    text = SPEC + "${EXTRA}: 1\n"
    assert problems(text, {"DEBIAN_MIRROR": MIRROR, "EXTRA": "images"}) == [
        "${EXTRA} (line 14): unknown field '${EXTRA}'"
    ]


def test_spec_validate_json_reports_it_in_its_one_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    (tmp_path / "spec.yaml").write_text(SPEC)
    code, out, _ = run_cli(capsys, "spec", "validate", str(tmp_path / "spec.yaml"), "--json")
    document = json.loads(out)
    assert code == 4
    assert document["ok"] is False
    assert document["error"]["kind"] == "spec-invalid"
    assert document["error"]["problems"] == [
        {
            "path": "packages.sources[0].url",
            "line": 9,
            "message": "environment variable DEBIAN_MIRROR is not set",
        }
    ]
    assert "export DEBIAN_MIRROR=URL" in document["error"]["hint"]


def test_the_schema_documents_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "spec", "schema")
    schema = json.loads(out)
    assert code == 0
    assert "${NAME} is replaced by the variable's value" in schema["description"]
    assert "$$ is a literal $" in schema["description"]
    url = schema["$defs"]["AptSource"]["properties"]["url"]
    assert "${DEBIAN_MIRROR}" in url["description"]
