"""The one error family of appliance.

Every failure a user can cause or fix is an ``ApplianceError`` subclass. Each class owns an exit
code (so automation can tell failures apart without parsing text) and carries a hint that says
what to do next. ``appliance.cli`` is the only place that turns them into output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Problem:
    """One finding at one place in an input document."""

    path: str
    message: str
    line: int | None = None

    def render(self) -> str:
        where = self.path or "(document)"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "message": self.message}


@dataclass
class ApplianceError(Exception):
    """Base of every error appliance reports to its user."""

    message: str
    hint: str | None = None
    problems: list[Problem] = field(default_factory=list)

    exit_code: ClassVar[int] = 1
    kind: ClassVar[str] = "error"

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "hint": self.hint,
            "problems": [p.as_dict() for p in self.problems],
        }


class SpecFileError(ApplianceError):
    """The spec file cannot be read or is not well-formed YAML."""

    exit_code = 3
    kind = "spec-file"


class SpecInvalidError(ApplianceError):
    """The spec parses but breaks one or more rules; ``problems`` lists every one."""

    exit_code = 4
    kind = "spec-invalid"


class SpecVersionError(ApplianceError):
    """The spec declares a format version this appliance does not read."""

    exit_code = 5
    kind = "spec-version"


def exit_codes() -> dict[str, int]:
    """Map each error kind to its exit code (documented in ``appliance --help``)."""
    classes: list[type[ApplianceError]] = [ApplianceError]
    seen: dict[str, int] = {}
    while classes:
        cls = classes.pop(0)
        seen[cls.kind] = cls.exit_code
        classes.extend(cls.__subclasses__())
    return seen
