"""What an upgrade or rollback did, and the error a command exits with for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import (
    ApplianceError,
    Problem,
    RollbackFailedError,
    UpgradeRolledBackError,
)
from appliance.install import InstallReport
from appliance.install.verify_models import Check


@dataclass(frozen=True)
class UpgradeReport:
    kind: str  # upgrade or rollback
    # committed (target is current and verified), rolled-back (target failed, origin serves
    # again and verified), rollback-failed (origin did not come back: act now).
    outcome: str
    target: str
    origin: str | None
    current: str | None
    failure: str | None = None  # what failed on the way to target
    rollback_failure: str | None = None
    failed_checks: list[Check] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)  # the last verify's
    verify_report: Path | None = None
    install: InstallReport | None = None

    def error(self) -> ApplianceError | None:
        """The error a command exits with for this outcome (None when committed)."""
        problems = [Problem(f"{c.host}: {c.name}", c.evidence) for c in self.failed_checks]
        if self.outcome == "rolled-back":
            return UpgradeRolledBackError(
                f"{self.kind} to {self.target} failed: {self.failure}; every host was returned "
                f"to {self.origin}, which verified: the rollback held",
                hint=f"{self.origin} serves as before; fix the cause (the run records are under "
                "<root>/runs/) and try again",
                problems=problems,
            )
        if self.outcome == "rollback-failed":
            return RollbackFailedError(
                f"{self.kind} to {self.target} failed: {self.failure}; and returning to "
                f"{self.origin} FAILED too: {self.rollback_failure}",
                hint="the hosts may run parts of both releases: check `appliance releases` and "
                "the run records under <root>/runs/ and fix the cause; then `appliance rollback` "
                f"tries {self.origin} again, while `appliance rollback --to {self.origin}` (or "
                "--to another release on this depot) or an install of a release's bundle "
                "(install.sh) puts that release on every host at once and, once it succeeded, "
                "clears this state; an upgrade first tries the rollback again",
                problems=problems,
            )
        return None
