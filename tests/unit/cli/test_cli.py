"""The command line as a user meets it: exact output, streams and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import __version__
from tests.fixtures.cli import run_cli

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped specs read ${DEBIAN_MIRROR}; validation fetches nothing, so any URL does."""
    monkeypatch.setenv("DEBIAN_MIRROR", "http://mirror.invalid/debian")


def test_help_teaches_the_flow_and_lists_only_real_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "--help")
    assert code == 0 and err == ""
    assert "Build and install air-gapped LLM appliances." in out
    assert "appliance spec validate examples/demo.yaml" in out
    assert "new-bundle/install.sh upgrade --pubkey signing-key.pub --plan-only" in out
    commands = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in commands.splitlines()] == [
        "audit",
        "build-bundle",
        "gateway",
        "inspect",
        "install",
        "keygen",
        "models",
        "pack",
        "releases",
        "rollback",
        "size",
        "spec",
        "unpack",
        "upgrade",
        "verify",
        "verify-bundle",
    ]
    for code_line in (
        "  1  error",
        "  2  usage",
        "  3  spec-file",
        "  4  spec-invalid",
        "  5  spec-version",
        " 34  audit",
        " 35  gateway-config",
        " 36  release-order",
        " 38  rolled-back",
        " 39  rollback-failed",
    ):
        assert code_line in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "--version") == (0, f"appliance, version {__version__}\n", "")


@pytest.mark.parametrize("spec", ["demo.yaml", "production.yaml"])
def test_shipped_specs_are_valid(capsys: pytest.CaptureFixture[str], spec: str) -> None:
    code, out, err = run_cli(capsys, "spec", "validate", str(EXAMPLES / spec))
    assert (code, err) == (0, "")
    assert out.startswith(f"{EXAMPLES / spec}: valid spec v1, ")


def test_validate_summarises_the_nvidia_section(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(EXAMPLES / "production.yaml")
    code, out, _ = run_cli(capsys, "spec", "validate", path)
    assert code == 0
    assert out.endswith(
        "  nvidia:  driver from debian (newest), proprietary modules, kernel ABIs 6.1.0-57-amd64\n"
    )
    code, out, _ = run_cli(capsys, "--json", "spec", "validate", path)
    assert json.loads(out)["nvidia"]["fabricmanager"] == "off"


def test_validate_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(EXAMPLES / "demo.yaml")
    code, out, _ = run_cli(capsys, "spec", "validate", path)
    assert code == 0
    assert out == (
        f"{path}: valid spec v1, appliance-demo 2026.11.0\n"
        "  targets: debian-12/amd64\n"
        "  stack:   registry=none object_store=filesystem orchestrator=systemd runtime=llamacpp\n"
        "  holds:   targets 1, files 0, packages 4, images 0, models 1, wheel sets 1\n"
    )


def test_invalid_spec_reports_every_problem_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(EXAMPLES / "bad" / "many-problems.yaml")
    code, out, err = run_cli(capsys, "spec", "validate", path)
    assert code == 4
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"Error: {path}: 8 problems in the spec"
    assert [line.split(" (line")[0].strip() for line in lines[1:-1]] == [
        "name",
        "targets[0].arch",
        "stack.orchestrator",
        "files[0].sha256",
        "files[0].sha265",
        "images[0].ref",
        "models[0].revision",
        "wheels[0].requirements[0]",
    ]
    assert lines[-1].startswith("Hint: fix each field named above")
    assert "Traceback" not in err


def test_json_mode_prints_one_document_for_errors(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(EXAMPLES / "bad" / "many-problems.yaml")
    code, out, _ = run_cli(capsys, "--json", "spec", "validate", path)
    document = json.loads(out)
    assert code == 4
    assert document["ok"] is False
    assert document["error"]["kind"] == "spec-invalid"
    assert document["error"]["exit_code"] == 4
    assert document["error"]["problems"][0] == {
        "path": "name",
        "line": 6,
        "message": "invalid name 'ACME LLM': use 1-63 lowercase letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
    }


def test_json_mode_for_a_valid_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "--json", "spec", "validate", str(EXAMPLES / "production.yaml")
    )
    document = json.loads(out)
    assert (code, err) == (0, "")
    assert document["ok"] is True
    assert document["name"] == "acme-llm"
    assert document["stack"] == {
        "registry": "none",
        "object_store": "filesystem",
        "orchestrator": "systemd",
        "runtime": "vllm",
    }
    assert document["counts"]["files"] == 10


def test_missing_file_is_a_spec_file_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yaml"
    code, _, err = run_cli(capsys, "spec", "validate", str(missing))
    assert code == 3
    assert err == (
        f"Error: spec file '{missing}' does not exist\n"
        "Hint: check the path; the shipped examples are in examples/\n"
    )


def test_unknown_version_exit_code(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "v9.yaml"
    spec.write_text("version: 9\nname: x\n")
    code, _, err = run_cli(capsys, "spec", "validate", str(spec))
    assert code == 5
    assert err.startswith(
        f"Error: {spec}: spec version 9 is not supported; this appliance reads version 1\n"
    )


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "--debug", "spec", "validate", str(tmp_path / "nope.yaml"))
    assert code == 3
    assert "Traceback (most recent call last)" in err
    assert "Error: spec file" in err


def test_quiet_hides_the_summary_but_not_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "-q", "spec", "validate", str(EXAMPLES / "demo.yaml")) == (0, "", "")
    code, _, err = run_cli(
        capsys, "-q", "spec", "validate", str(EXAMPLES / "bad" / "many-problems.yaml")
    )
    assert code == 4 and err.startswith("Error: ")


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "spec", "validate")
    assert code == 2
    assert "Missing argument 'SPEC'" in err


def test_schema_is_json_schema_of_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "spec", "schema")
    schema = json.loads(out)
    assert code == 0
    assert schema["title"] == "Spec"
    assert schema["additionalProperties"] is False
    assert {"version", "name", "release", "targets"} <= set(schema["required"])
