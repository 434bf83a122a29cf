"""``appliance upgrade``'s second half: apply the planned release, verify it, commit, or roll
back by itself when either fails (``appliance.install.upgrade``); here the flow's report
becomes what the command shows, or the error it exits with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.install import InstallOptions
from appliance.install.upgrade import UpgradeOptions, upgrade
from appliance.progress import Progress
from appliance.runner import TaskEvent


@dataclass(frozen=True)
class Applied:
    release: str
    hosts: list[str]
    checks: int  # verify's checks, every one passed
    report: str  # verify's JSON report
    # The gateway's operator key, when this upgrade made it (the first release with models):
    # shown once, as install shows it.
    api_key: str | None = None


def apply_upgrade(
    options: InstallOptions,
    egress_targets: tuple[str, ...],
    internal_targets: tuple[str, ...],
    on_event: Callable[[TaskEvent], None],
    progress: Progress,
    on_note: Callable[[str], None],
) -> Applied:
    """Apply, verify, commit; raises the flow's error (rolled back, or the rollback failed)."""
    report = upgrade(
        UpgradeOptions(
            install=options, egress_targets=egress_targets, internal_targets=internal_targets
        ),
        on_event,
        progress,
        on_note,
    )
    error = report.error()
    if error is not None:
        raise error
    hosts = report.install.hosts if report.install is not None else []
    key = report.install.api_key if report.install is not None else None
    return Applied(report.target, hosts, len(report.checks), str(report.verify_report), key)
