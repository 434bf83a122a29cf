"""Reading a spec safely: a bounded file, and YAML held to what a spec needs.

A spec may come from anyone (a merge request, a shared drive), so reading one must end quickly
with a clear ``SpecFileError`` whatever it holds: a FIFO or a device instead of a file, a file
too large, an alias bomb (a few lines that expand to billions of nodes), nesting past any real
spec, tags that ask for Python objects or other types, merge keys, control characters. Every
bound below is far above what a real spec uses and is checked on the YAML events, before any
node or object is built, so neither time nor memory follows what the input claims.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from appliance.errors import SpecFileError
from appliance.names import TEXT_CONTROL_RE

# The largest shipped spec is about 3 KiB; a thousand models would still fit.
MAX_SPEC_BYTES = 1 << 20
# Specs nest five levels deep; anything past this is not a spec.
MAX_DEPTH = 32
# Nodes after every alias is expanded (what a consumer of the document walks).
MAX_NODES = 100_000

_CORE = "tag:yaml.org,2002:"
# The tags a spec may write explicitly (``!!str 1.0``): the YAML core schema's, nothing that
# makes a Python object, a set, binary data or a timestamp.
ALLOWED_TAGS = frozenset(
    f"{_CORE}{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map")
)
_MERGE = f"{_CORE}merge"
_HINT_FILE = "the spec must be a regular UTF-8 YAML file of at most 1 MiB"
_HINT_YAML = "write the spec as plain YAML: mappings, lists, text, numbers and booleans"


def read_spec_file(path: Path) -> bytes:
    """The bytes of the spec file at ``path``: a regular file of at most ``MAX_SPEC_BYTES``.

    Opened without blocking (a FIFO would otherwise wait for a writer forever) and checked
    with fstat on the open descriptor, so what is read is what was checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError as exc:
        raise SpecFileError(
            f"spec file {str(path)!r} does not exist",
            hint="check the path; the shipped examples are in examples/",
        ) from exc
    except OSError as exc:
        raise SpecFileError(
            f"cannot read spec file {str(path)!r}: {exc.strerror}", hint=_HINT_FILE
        ) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SpecFileError(
            f"cannot read spec file {str(path)!r}: it is {_kind(mode)}, not a regular file",
            hint=_HINT_FILE,
        )
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise SpecFileError(
                f"cannot read spec file {str(path)!r}: {exc.strerror}", hint=_HINT_FILE
            ) from exc
    if len(data) > MAX_SPEC_BYTES:
        raise SpecFileError(
            f"spec file {str(path)!r} is larger than {MAX_SPEC_BYTES} bytes", hint=_HINT_FILE
        )
    return data


def decode_spec(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecFileError(
            f"cannot read spec file {source!r}: not UTF-8 at byte {exc.start}",
            hint="the spec must be a readable UTF-8 YAML file",
        ) from exc


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def check_events(text: str, source: str) -> None:
    """Walk the YAML events once (PyYAML's parser is iterative: no recursion, no objects) and
    refuse what a spec never needs before anything is built from them."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecFileError(f"{source}: larger than {MAX_SPEC_BYTES} characters", hint=_HINT_FILE)
    depth = 0
    nodes = 0
    # Each open collection's anchor and the node count when it opened; an anchor's size is
    # what an alias to it adds (so a billion-laughs document is refused by arithmetic).
    open_: list[tuple[str | None, int]] = []
    sizes: dict[str, int] = {}
    try:
        # The reader refuses non-printable characters as it is made: inside the try too.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from exc
    try:
        while loader.check_event():
            event = loader.get_event()  # type: ignore[no-untyped-call]
            line = event.start_mark.line + 1 if event.start_mark else None
            if isinstance(event, yaml.AliasEvent):
                nodes += sizes.get(event.anchor or "", 1)
            elif isinstance(event, yaml.NodeEvent):
                _check_tag(event, source, line)
                if (
                    isinstance(event, yaml.ScalarEvent)
                    and event.value == "<<"
                    and event.implicit[0]
                ):
                    # A merge key hides where a value comes from (and multiplies aliases).
                    raise SpecFileError(
                        f"{source}: a merge key (<<) at line {line}: not supported in a spec",
                        hint="write the fields out instead of merging them from an anchor",
                    )
                nodes += 1
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise SpecFileError(
                            f"{source}: nested deeper than {MAX_DEPTH} levels at line {line}",
                            hint=_HINT_YAML,
                        )
                    open_.append((event.anchor, nodes))
                elif event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                anchor, started = open_.pop()
                if anchor is not None:
                    sizes[anchor] = nodes - started + 1
            if nodes > MAX_NODES:
                raise SpecFileError(
                    f"{source}: more than {MAX_NODES} values once aliases are expanded "
                    f"(at line {line})",
                    hint="a spec this large is not one; remove repeated aliases (*name)",
                )
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from exc
    finally:
        loader.dispose()


def _check_tag(event: Any, source: str, line: int | None) -> None:
    tag = event.tag
    if tag is None or tag == "!":
        return
    implicit = event.implicit[0] if isinstance(event.implicit, tuple) else event.implicit
    if implicit and tag in ALLOWED_TAGS:
        return
    if tag not in ALLOWED_TAGS:
        shown = tag.replace(_CORE, "!!")[:60]
        raise SpecFileError(
            f"{source}: the YAML tag {shown!r} at line {line} is not allowed in a spec",
            hint=f"{_HINT_YAML}; remove the tag",
        )


def yaml_error(exc: yaml.YAMLError, source: str) -> SpecFileError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return SpecFileError(
        f"{source}: not valid YAML{where}: {str(problem)[:200]}",
        hint="check indentation and quoting around that line",
    )


Loc = tuple[str | int, ...]


def control_problems(data: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Every key or text value with a control or format character (a YAML escape such as
    ``"\\x00"`` or ``"\\u202e"`` writes one): none belongs in a name, a URL or a path."""
    found: list[tuple[Loc, str]] = []
    stack: list[tuple[Loc, Any]] = [(loc, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and (hit := TEXT_CONTROL_RE.search(key)):
                    character = f"U+{ord(hit.group()):04X}"
                    found.append(((*where, key), f"control character {character} in a key"))
                stack.append(((*where, key), item))
        elif isinstance(value, list):
            stack.extend(((*where, index), item) for index, item in enumerate(value))
        elif isinstance(value, str) and (hit := TEXT_CONTROL_RE.search(value)):
            found.append((where, f"control character U+{ord(hit.group()):04X} in the value"))
    return sorted(found, key=str)


def scrubbed(data: Any) -> Any:
    """``data`` with every control or format character replaced by U+FFFD: what validation
    sees once control_problems has reported them (a lone surrogate would break its reports)."""
    if isinstance(data, dict):
        return {scrubbed(key): scrubbed(item) for key, item in data.items()}
    if isinstance(data, list):
        return [scrubbed(item) for item in data]
    if isinstance(data, str):
        return TEXT_CONTROL_RE.sub("\ufffd", data)
    return data
