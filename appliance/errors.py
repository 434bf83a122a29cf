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


class BundleSignatureError(ApplianceError):
    """The bundle's signature is missing, malformed, or not made by the trusted key."""

    exit_code = 10
    kind = "bundle-signature"


class BundleCorruptError(ApplianceError):
    """A file the signed manifest lists is missing, or its size or digest differs."""

    exit_code = 11
    kind = "bundle-corrupt"


class BundleLayoutError(ApplianceError):
    """The bundle holds something unsafe or unexpected: a path that escapes, a link, a device
    file, or a file the manifest does not list."""

    exit_code = 12
    kind = "bundle-layout"


class KeyFileError(ApplianceError):
    """A signing or verification key cannot be made, read or used."""

    exit_code = 13
    kind = "key"


class FetchError(ApplianceError):
    """An artifact could not be downloaded (after retries, where retrying made sense)."""

    exit_code = 21
    kind = "fetch"


class ChecksumMismatchError(ApplianceError):
    """Downloaded bytes do not match the pinned digest."""

    exit_code = 22
    kind = "checksum-mismatch"


class BuildError(ApplianceError):
    """The bundle cannot be built as asked (output in the way, unsupported source, ...)."""

    exit_code = 23
    kind = "build"


class InventoryError(ApplianceError):
    """The inventory cannot drive an install: unreadable, unknown groups, no depot."""

    exit_code = 30
    kind = "inventory"


class InstallError(ApplianceError):
    """The install could not start or stage the bundle (nothing ran on the hosts)."""

    exit_code = 31
    kind = "install"


class ReleaseOrderError(ApplianceError):
    """The bundle's release is older than the installed one, or cannot upgrade from it
    (nothing was staged or changed)."""

    exit_code = 36
    kind = "release-order"


class PlaybookFailedError(ApplianceError):
    """A task failed on a host; the message names host, task and the module's words."""

    exit_code = 32
    kind = "playbook-failed"


class VerifyFailedError(ApplianceError):
    """`appliance verify` found a check that does not hold."""

    exit_code = 33
    kind = "verify-failed"


class UpgradeRolledBackError(ApplianceError):
    """An upgrade (or rollback) failed in apply or verify; every host was returned to the
    release that ran before, and that release verified."""

    exit_code = 38
    kind = "rolled-back"


class RollbackFailedError(ApplianceError):
    """An upgrade or rollback failed and returning to the release before it failed too."""

    exit_code = 39
    kind = "rollback-failed"


class AuditError(ApplianceError):
    """The gateway's audit log cannot be trusted as it stands: a record was modified, removed,
    reordered or cut off, or the log cannot be read or written."""

    exit_code = 34
    kind = "audit"


class GatewayConfigError(ApplianceError):
    """The gateway's config or keys file is missing, unreadable or breaks a rule."""

    exit_code = 35
    kind = "gateway-config"


class SiteModelError(ApplianceError):
    """A site model (fine-tuned inside the boundary) cannot be added, listed or served: a bad
    or taken name, an unusable model directory, a site manifest whose signature fails, or a
    file that changed after it was recorded."""

    exit_code = 37
    kind = "site-model"


class SizingError(ApplianceError):
    """A model's files or the GPU facts cannot be read for sizing (a header too large or not
    well-formed, a config without the numbers sizing needs, an unknown GPU type)."""

    exit_code = 40
    kind = "sizing"


def exit_codes() -> dict[str, int]:
    """Map each error kind to its exit code (documented in ``appliance --help``)."""
    classes: list[type[ApplianceError]] = [ApplianceError]
    seen: dict[str, int] = {}
    while classes:
        cls = classes.pop(0)
        seen[cls.kind] = cls.exit_code
        classes.extend(cls.__subclasses__())
    return seen


class PackageResolveError(ApplianceError):
    """Debian packages cannot be resolved against the spec's apt sources."""

    exit_code = 20
    kind = "package-resolve"
