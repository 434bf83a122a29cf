"""Hostile spec files: a clear spec error, in bounded time and memory, the same JSON document
under --json for `spec validate` and `build-bundle`; never a traceback, never a hang.

A table of the known classes (alias bombs, special files, huge files, control bytes, tags and
odd scalar types, nesting), then properties over hundreds of generated documents: random YAML
token soup, a valid spec with hostile fragments spliced in, and hostile values in each field.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from appliance.errors import ApplianceError, SpecFileError, SpecInvalidError, SpecVersionError
from appliance.spec import load_spec, parse_spec
from appliance.spec.reading import MAX_DEPTH, MAX_SPEC_BYTES
from tests.fixtures.cli import run_cli
from tests.fixtures.hostile import examples, peak_bytes

ENVIRON = {"DEBIAN_MIRROR": "http://mirror.invalid/debian"}
VALID = """\
version: 1
name: demo
release: 2026.11.0
description: a spec the generated inputs start from
targets:
  - {os: debian-12, arch: amd64}
packages:
  sources:
    - kind: apt
      url: ${DEBIAN_MIRROR}
      suites: [bookworm]
      components: [main]
      keyring: /usr/share/keyrings/debian-archive-keyring.gpg
  install: [jq]
models:
  - {name: tiny, source: models/tiny.gguf, format: gguf}
"""
SPEC_ERRORS = (SpecFileError, SpecInvalidError, SpecVersionError)
# Far above what parsing the largest hostile input here allocates; far below what the bombs
# would need if their aliases were expanded.
MEMORY_BOUND = 64 << 20


@pytest.fixture(autouse=True)
def mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBIAN_MIRROR", ENVIRON["DEBIAN_MIRROR"])


@pytest.fixture(autouse=True)
def never_hang() -> Iterator[None]:
    """A guard, not a timing: a test that would block forever (a FIFO read) fails instead."""

    def stop(_signum: int, _frame: object) -> None:
        raise TimeoutError("the spec reader blocked")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def laughs(levels: int, width: int = 10) -> str:
    """The billion-laughs document: each level ``width`` aliases of the one before."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{aliases}]")
    return "version: 1\n" + "\n".join(lines) + "\n"


def write(text: str | bytes) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / "spec.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return make


def fifo(root: Path) -> Path:
    os.mkfifo(root / "spec.yaml")
    return root / "spec.yaml"


def directory(root: Path) -> Path:
    (root / "spec.yaml").mkdir()
    return root / "spec.yaml"


def device(name: str) -> Callable[[Path], Path]:
    return lambda _root: Path(name)


def sparse_gibibyte(root: Path) -> Path:
    path = root / "spec.yaml"
    with path.open("wb") as out:
        out.truncate(1 << 30)
    return path


# id -> (make the spec path, error kind, a fragment of the message or of one problem)
TABLE: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "billion-laughs": (write(laughs(9)), "spec-file", "once aliases are expanded"),
    "quadratic-blowup": (
        write(
            "version: 1\na: &a ["
            + ", ".join(["x"] * 1000)
            + "]\nb: ["
            + ", ".join(["*a"] * 1000)
            + "]\n"
        ),
        "spec-file",
        "once aliases are expanded",
    ),
    "nested-block-mappings": (
        write(
            "version: 1\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v\n"
        ),
        "spec-file",
        f"nested deeper than {MAX_DEPTH} levels",
    ),
    "nested-flow-sequences": (
        write("version: 1\na: " + "[" * 1000 + "]" * 1000 + "\n"),
        "spec-file",
        f"nested deeper than {MAX_DEPTH} levels",
    ),
    "a-fifo": (fifo, "spec-file", "it is a FIFO, not a regular file"),
    "dev-zero": (device("/dev/zero"), "spec-file", "it is a device, not a regular file"),
    "dev-null": (device("/dev/null"), "spec-file", "it is a device, not a regular file"),
    "a-directory": (directory, "spec-file", "it is a directory, not a regular file"),
    "a-sparse-gibibyte": (sparse_gibibyte, "spec-file", f"larger than {MAX_SPEC_BYTES} bytes"),
    "missing": (lambda root: root / "nope.yaml", "spec-file", "does not exist"),
    "not-utf8": (write(b"version: 1\nname: \xff\xfe\n"), "spec-file", "not UTF-8 at byte 17"),
    "raw-nul": (write("version: 1\nname: a\x00b\n"), "spec-file", "not valid YAML"),
    "raw-escape-byte": (write("version: 1\nname: a\x1bb\n"), "spec-file", "not valid YAML"),
    "escaped-nul-in-a-path": (
        write(VALID.replace("models/tiny.gguf", '"models/\\x00tiny.gguf"')),
        "spec-invalid",
        "control character U+0000 in the value",
    ),
    "escaped-bidi-override": (
        write(
            VALID.replace("description: a spec", 'description: "a \\u202e spec"', 1).replace(
                " the generated inputs start from", ""
            )
        ),
        "spec-invalid",
        "control character U+202E in the value",
    ),
    "escaped-lone-surrogate": (
        write(VALID.replace("name: demo", 'name: "\\ud800"')),
        "spec-invalid",
        "control character U+D800",
    ),
    "python-object-tag": (
        write("version: 1\nname: !!python/object/apply:os.system ['true']\n"),
        "spec-file",
        "the YAML tag '!!python/object/apply:os.system'",
    ),
    "python-name-tag": (write("version: 1\nx: !!python/name:os.system ''\n"), "spec-file", "tag"),
    "binary-tag": (write("version: 1\nname: !!binary ZGVtbw==\n"), "spec-file", "'!!binary'"),
    "set-tag": (write("version: 1\ntargets: !!set {a, b}\n"), "spec-file", "'!!set'"),
    "omap-tag": (write("version: 1\nstack: !!omap [{a: 1}]\n"), "spec-file", "'!!omap'"),
    "timestamp-tag": (write("version: 1\nrelease: !!timestamp 2026-01-01\n"), "spec-file", "tag"),
    "local-tag": (write("version: 1\nname: !vault secret\n"), "spec-file", "'!vault'"),
    "implicit-timestamp": (
        write(VALID.replace("release: 2026.11.0", "release: 2026-11-01")),
        "spec-invalid",
        "must be text, got date",
    ),
    "merge-key": (
        write("version: 1\nbase: &b {name: demo}\n<<: *b\n"),
        "spec-file",
        "a merge key (<<) at line 3",
    ),
    "an-integer-of-5000-digits": (write("version: " + "9" * 5000 + "\n"), "spec-file", "digits"),
    "a-list-as-a-key": (write("version: 1\n? [a, b]\n: c\n"), "spec-file", "not valid YAML"),
    "two-documents": (write("version: 1\n---\nversion: 1\n"), "spec-file", "not valid YAML"),
    "a-scalar-document": (write("just text\n"), "spec-invalid", "a spec must be a mapping"),
    "a-huge-value-is-quoted-short": (
        write(VALID.replace("release: 2026.11.0", "release: " + "x" * 20_000)),
        "spec-invalid",
        "release",
    ),
}


def document(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code, out, err = run_cli(capsys, "--json", *argv)
    assert "Traceback" not in out + err
    return code, json.loads(out)


@pytest.mark.parametrize(("make", "kind", "text"), TABLE.values(), ids=TABLE.keys())
def test_a_hostile_spec_gets_one_clear_error_and_the_same_json_everywhere(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    kind: str,
    text: str,
) -> None:
    path = make(tmp_path)
    raised, peak = peak_bytes(lambda: load_spec(path))
    assert isinstance(raised, ApplianceError), repr(raised)
    assert raised.kind == kind
    found = raised.message + "".join(p.message + p.path for p in raised.problems)
    assert text in found
    assert peak < MEMORY_BOUND, f"{peak} bytes"
    assert len(found) < 4000  # quoted values are cut short, whatever the spec holds
    # The human form: Error and Hint on stderr, the error's own exit code.
    code, out, err = run_cli(capsys, "spec", "validate", str(path))
    assert (code, out) == (raised.exit_code, "")
    assert err.startswith("Error: ") and "Traceback" not in err
    # The JSON form, the same document from both commands that read a spec.
    code, validated = document(capsys, "spec", "validate", str(path))
    assert code == raised.exit_code
    assert validated == {"ok": False, "error": raised.as_dict()}
    key = tmp_path / "absent-key"  # the spec is read first: the key is never looked at
    code, built = document(
        capsys, "build-bundle", str(path), "-o", str(tmp_path / "out"), "--sign-key", str(key)
    )
    assert (code, built) == (raised.exit_code, validated)
    assert not (tmp_path / "out").exists()


def test_the_valid_spec_the_properties_start_from_is_valid() -> None:
    assert parse_spec(VALID, "valid.yaml", ENVIRON).name == "demo"


# --- properties ----------------------------------------------------------------------------

TOKENS = st.sampled_from(
    [
        "&a ", "*a", "&b ", "*b", "!!python/object:os.system ", "!!binary ", "!!set ", "!t ",
        "<<: ", "[", "]", "{", "}", "- ", ": ", ", ", "? ", "\n", "\n  ", "\t", "'", '"', "|\n",
        ">\n", "#", "---\n", "...\n", "%YAML 1.1\n", "\\x00", "\\u202e", "\x85", "\ufeff",
        "2026-01-01", "0x1F", "0o17", "1e999", ".nan", "~", "null", "yes", "on", "version",
        "name", "release", "targets", "models", "${DEBIAN_MIRROR}", "${UNSET}", "$$", "9" * 30,
        "x" * 200, "é", "\u0000",
    ]
)  # fmt: skip


def outcome(text: str) -> str:
    """What parse_spec does with ``text``: its error kind, or "valid"; any other exception
    fails the test."""
    try:
        parse_spec(text, "generated.yaml", ENVIRON)
    except SPEC_ERRORS as error:
        assert error.message.startswith("generated.yaml")
        return error.kind
    return "valid"


@examples(400)
@given(tokens=st.lists(TOKENS, max_size=40))
def test_any_yaml_token_soup_gets_a_spec_error(tokens: list[str]) -> None:
    event(outcome("version: 1\n" + "".join(tokens)))


@examples(300)
@given(data=st.data())
def test_a_valid_spec_with_hostile_fragments_spliced_in_gets_a_spec_error(
    data: st.DataObject,
) -> None:
    text = VALID
    for _ in range(data.draw(st.integers(1, 3), label="splices")):
        at = data.draw(st.integers(0, len(text)), label="at")
        text = (
            text[:at] + data.draw(st.lists(TOKENS, min_size=1, max_size=4).map("".join)) + text[at:]
        )
    event(outcome(text))


HOSTILE_VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.dates(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["../../etc/passwd", "a\x00b", "\u202e", "x" * 10_000, "${UNSET}", "$"]),
)
FIELDS = [
    ("name",), ("release",), ("description",), ("targets", 0, "os"), ("targets", 0, "arch"),
    ("packages", "sources", 0, "url"), ("packages", "sources", 0, "keyring"),
    ("packages", "install", 0), ("models", 0, "name"), ("models", 0, "source"),
    ("models", 0, "format"), ("stack",), ("version",),
]  # fmt: skip


@examples(300)
@given(field=st.sampled_from(FIELDS), value=HOSTILE_VALUES)
def test_a_hostile_value_in_any_field_is_named_by_its_path(
    field: tuple[str | int, ...], value: object
) -> None:
    """A value of any type, or any text, in any field: valid, or refused with the field (or a
    field inside it) named; rendered through YAML as a user would write it."""
    spec = yaml.safe_load(VALID)
    holder = spec
    for part in field[:-1]:
        holder = holder[part]
    holder[field[-1]] = value
    text = yaml.safe_dump(spec, allow_unicode=True)
    try:
        parse_spec(text, "generated.yaml", ENVIRON)
    except SpecInvalidError as error:
        named = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in field).lstrip(".")
        # The field itself, a field inside it, or the entry that holds it (a model whose
        # source is not text cannot tell which kind of model it is).
        related = [
            p for p in error.problems if p.path.startswith(named) or named.startswith(p.path)
        ]
        assert related or any(p.path == "version" for p in error.problems), (
            named,
            error.problems,
        )
        event("refused")
        return
    except (SpecFileError, SpecVersionError):
        event("refused as a file or version")
        return
    event("valid")
