"""Read a spec file, validate all of it, and report every problem with its path and line."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from appliance.errors import Problem, SpecFileError, SpecInvalidError, SpecVersionError
from appliance.spec.environment import HINT as _ENVIRONMENT_HINT
from appliance.spec.environment import expand_environment
from appliance.spec.models import SPEC_VERSION, UNION_TAGS, Spec, all_field_names
from appliance.spec.reading import (
    check_events,
    control_problems,
    decode_spec,
    read_spec_file,
    scrubbed,
    yaml_error,
)

Loc = tuple[str | int, ...]

_HINT = (
    "fix each field named above and run `appliance spec validate` again; "
    "`appliance spec schema` prints every field a spec accepts"
)


def _line_map(node: yaml.Node, loc: Loc = ()) -> tuple[dict[Loc, int], list[Problem]]:
    """Map every path in the document to the 1-based line where it starts.

    Also returns the duplicate mapping keys, which PyYAML would otherwise resolve silently by
    keeping the last value.
    """
    lines: dict[Loc, int] = {loc: node.start_mark.line + 1}
    duplicates: list[Problem] = []
    children: list[tuple[Loc, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)[:60]
            child = (*loc, key)
            if key in seen:
                line = key_node.start_mark.line + 1
                duplicates.append(Problem(format_loc(child), "duplicate key: remove one", line))
            seen.add(key)
            children.append((child, value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [((*loc, index), item) for index, item in enumerate(node.value)]
    for child, child_node in children:
        child_lines, child_duplicates = _line_map(child_node, child)
        lines.update(child_lines)
        duplicates.extend(child_duplicates)
    if isinstance(node, yaml.MappingNode):
        # Point at the key itself: that is where a user looks for an unknown field.
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[(*loc, key_node.value)] = key_node.start_mark.line + 1
    return lines, duplicates


def format_loc(loc: Loc) -> str:
    """Render ('images', 2, 'ref') as images[2].ref."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


_FIELD_NAMES = all_field_names()


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        field = str(error["loc"][-1])
        close = difflib.get_close_matches(field, _FIELD_NAMES, n=1, cutoff=0.75)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field {field!r}{suggestion}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"must be {expected} (got {_shown(error['input'])})"
    if kind in {"list_type", "model_type", "model_attributes_type", "dict_type"}:
        wanted = "a list" if kind == "list_type" else "a mapping of fields"
        return f"must be {wanted}, got {type(error['input']).__name__}"
    if kind == "string_type":
        got = type(error["input"]).__name__
        return f"must be text, got {got} {_shown(error['input'])}: put the value in quotes"
    if kind == "too_short":
        return "must not be empty"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _shown(value: object) -> str:
    """A value as a message quotes it: never longer than a line, whatever the spec holds."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _problems(error: ValidationError, lines: dict[Loc, int]) -> list[Problem]:
    problems = []
    for detail in error.errors(include_url=False):
        loc = tuple(p for p in detail["loc"] if p not in UNION_TAGS)
        ctx = detail.get("ctx") or {}
        if detail["type"] == "duplicate" and "second" in ctx:
            # Point at the repeated entry, not at the list that holds it.
            loc = (*loc, ctx["second"], *([ctx["field"]] if "field" in ctx else []))
        problems.append(Problem(format_loc(loc), _message(detail), _line_for(loc, lines)))
    return problems


def parse_spec(text: str, source: str = "<spec>", environ: Mapping[str, str] | None = None) -> Spec:
    """Validate spec text, with ``${NAME}`` in string values taken from ``environ`` (default:
    this process's environment). Raises a ``Spec*Error`` that lists every problem found."""
    check_events(text, source)  # bounded: size, depth, aliases, tags, before any node is built
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from exc
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        # What PyYAML's constructors raise past its own errors (an int too long for int(), a
        # value no type takes): the spec's fault, said as such.
        what = "a number of thousands of digits" if "digits" in str(exc) else str(exc)[:200]
        raise SpecFileError(
            f"{source}: a value cannot be read: {what}",
            hint="check the value types; quote text that YAML would read as something else",
        ) from exc
    finally:
        loader.dispose()

    if node is None or not isinstance(data, dict):
        got = "an empty file" if node is None else type(data).__name__
        raise SpecInvalidError(
            f"{source}: a spec must be a mapping of fields, got {got}",
            hint="start from examples/demo.yaml; a spec begins with `version: 1`",
        )
    lines, problems = _line_map(node)
    problems.extend(_version_problems(data, lines, source))
    expansion = expand_environment(data, os.environ if environ is None else environ)
    unexpanded = {format_loc(loc) for loc, _ in expansion.problems}
    problems.extend(
        Problem(format_loc(loc), message, _line_for(loc, lines))
        for loc, message in expansion.problems
    )
    # After expansion: a variable's value is checked like the text around it.
    controls = control_problems(expansion.data)
    problems.extend(
        Problem(format_loc(loc), message, _line_for(loc, lines)) for loc, message in controls
    )
    # A value refused for its characters gets no second problem from validation.
    refused = unexpanded | {format_loc(loc) for loc, _ in controls}

    try:
        spec = Spec.model_validate(scrubbed(expansion.data) if controls else expansion.data)
    except ValidationError as exc:
        # A value left as written because its variable is missing would only add a second,
        # misleading problem (``unsupported URL '${DEBIAN_MIRROR}'``) at the same path.
        done = refused | ({"version"} if any(p.path == "version" for p in problems) else set())
        problems.extend(p for p in _problems(exc, lines) if p.path not in done)
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.path))
        count = len(problems)
        raise SpecInvalidError(
            f"{source}: {count} problem{'s' if count != 1 else ''} in the spec",
            hint=f"{_ENVIRONMENT_HINT}; then {_HINT}" if unexpanded else _HINT,
            problems=problems,
        )
    return spec


def _version_problems(data: dict[Any, Any], lines: dict[Loc, int], source: str) -> list[Problem]:
    """Check ``version`` first: it decides which rules apply to everything else."""
    if "version" not in data:
        return [Problem("version", f"required field missing: add `version: {SPEC_VERSION}`", 1)]
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        return [
            Problem(
                "version",
                f"must be an integer (write `version: {SPEC_VERSION}`), got {_shown(version)}",
                lines.get(("version",)),
            )
        ]
    if version != SPEC_VERSION:
        raise SpecVersionError(
            f"{source}: spec version {version} is not supported; this appliance reads "
            f"version {SPEC_VERSION}",
            hint=f"use an appliance release that reads version {version}, or rewrite the "
            f"spec for version {SPEC_VERSION} (see examples/)",
        )
    return []


def load_spec(path: Path) -> Spec:
    """Read and validate the spec at ``path``."""
    return load_spec_bytes(path)[0]


def load_spec_bytes(path: Path) -> tuple[Spec, bytes]:
    """The spec at ``path`` and the exact bytes it was read from (one read: what is hashed
    into a bundle's manifest is what was validated)."""
    data = read_spec_file(path)
    return parse_spec(decode_spec(data, str(path)), str(path)), data
