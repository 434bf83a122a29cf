"""Environment variables in spec values: ``url: ${DEBIAN_MIRROR}``.

A spec is shared between machines that reach the same artifacts through different mirrors, so a
string value may name an environment variable of the machine that reads it. The syntax is
deliberately small, and safe to apply to text from anyone:

- ``${NAME}`` (NAME: letters, digits and ``_``, not starting with a digit) is replaced by the
  variable's value; an unset or empty variable is a problem at that value's path.
- ``$$`` is one literal ``$``; any other ``$`` is literal too, so existing text keeps its meaning.
- Nothing else: no defaults, no command substitution, and a substituted value is never expanded
  again (one pass, so the work is linear in the spec's size).
- An expanded value is at most ``MAX_EXPANDED`` characters.

Only string values are expanded, never mapping keys: the spec's structure is fixed by its text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Loc = tuple[str | int, ...]

# Far above any URL or path a spec holds; a bound so one variable cannot blow a value up.
MAX_EXPANDED = 8192

_SPECIAL = re.compile(r"\$[${]")
_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

HINT = (
    "export each environment variable named above before running appliance, e.g. "
    "`export DEBIAN_MIRROR=URL` with the URIs: value of this machine's Debian source "
    "(/etc/apt/sources.list.d/*.sources, or the URL of a deb line in /etc/apt/sources.list); "
    "write $$ for a literal $"
)


@dataclass
class Expansion:
    """The document with every reference replaced, the problems found, the variables read."""

    data: Any
    problems: list[tuple[Loc, str]] = field(default_factory=list)
    used: set[str] = field(default_factory=set)


def expand_environment(data: Any, environ: Mapping[str, str]) -> Expansion:
    """Expand ``${NAME}`` in every string value of ``data`` (a parsed YAML document).

    A value with a problem is left as written, so validation can still look at it; the caller
    reports the problem in its place.
    """
    expansion = Expansion(data=None)
    expansion.data = _walk(data, (), environ, expansion)
    return expansion


def _walk(value: Any, loc: Loc, environ: Mapping[str, str], expansion: Expansion) -> Any:
    if isinstance(value, dict):
        return {key: _walk(item, (*loc, key), environ, expansion) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, (*loc, index), environ, expansion) for index, item in enumerate(value)]
    if isinstance(value, str) and "$" in value:
        expanded, problem = _expand(value, environ, expansion.used)
        if problem is not None:
            expansion.problems.append((loc, problem))
            return value
        return expanded
    return value


def _expand(text: str, environ: Mapping[str, str], used: set[str]) -> tuple[str, str | None]:
    """(expanded text, None), or (text, the first problem in it)."""
    out: list[str] = []
    position = 0
    for special in _SPECIAL.finditer(text):
        start = special.start()
        if start < position:  # the second '$' of a '$$' already consumed
            continue
        out.append(text[position:start])
        if text[start + 1] == "$":
            out.append("$")
            position = start + 2
            continue
        reference = _NAME.match(text, start + 1)
        if reference is None:
            written = text[start : text.find("}", start) + 1 or len(text)][:40]
            return text, (
                f"{written!r} is not a variable reference: write ${{NAME}} (letters, digits "
                "and _), or $$ for a literal $"
            )
        name = reference.group(1)
        used.add(name)
        if name not in environ:
            return text, f"environment variable {name} is not set"
        if not environ[name]:
            return text, f"environment variable {name} is empty"
        out.append(environ[name])
        position = reference.end()
    out.append(text[position:])
    expanded = "".join(out)
    if len(expanded) > MAX_EXPANDED:
        return text, (
            f"expands to {len(expanded)} characters, more than the {MAX_EXPANDED} a value may hold"
        )
    return expanded, None
