"""``appliance upgrade``'s second half: apply the planned release, verify it, commit.

The upgrade flow with automatic rollback lives in ``appliance.install.upgrade`` (apply with
``current`` left in place, verify, then commit; roll back when either fails). Where that module
is not part of this build yet, apply is install (which commits after a complete play) followed by
``appliance verify``, whose failure is reported with the release it left current.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.install import InstallOptions, install
from appliance.install.verify import VerifyOptions, raise_if_failed, verify
from appliance.progress import Progress
from appliance.runner import TaskEvent


@dataclass(frozen=True)
class Applied:
    release: str
    hosts: list[str]
    checks: int  # verify's checks, every one passed
    report: str  # verify's JSON report


def apply_upgrade(
    options: InstallOptions,
    egress_targets: tuple[str, ...],
    internal_targets: tuple[str, ...],
    on_event: Callable[[TaskEvent], None],
    progress: Progress,
    on_note: Callable[[str], None],
    moves_packages: bool = False,
) -> Applied:
    """Apply, verify, commit. ``moves_packages``: the plan changes versions of packages the
    hosts may have installed, which only the upgrade flow moves."""
    if importlib.util.find_spec("appliance.install.upgrade") is not None:
        return _with_rollback(
            options, egress_targets, internal_targets, on_event, progress, on_note
        )
    if moves_packages:
        on_note(
            "note: this build applies with install, which keeps an installed package at its "
            "version: the plan's package version changes reach only packages not yet installed"
        )
    report = install(options, on_event=on_event, progress=progress, on_note=on_note)
    on_note(f"applied {report.manifest.release}; verifying")
    verify_options = VerifyOptions(
        egress_targets, internal_targets, options.inventory, options.root
    )
    checks, path = verify(verify_options, on_event=lambda _event: None)
    raise_if_failed(checks, path)
    return Applied(report.manifest.release, report.hosts, len(checks), str(path))


def _with_rollback(
    options: InstallOptions,
    egress_targets: tuple[str, ...],
    internal_targets: tuple[str, ...],
    on_event: Callable[[TaskEvent], None],
    progress: Progress,
    on_note: Callable[[str], None],
) -> Applied:
    flow: Any = importlib.import_module("appliance.install.upgrade")
    report = flow.upgrade(
        flow.UpgradeOptions(
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
    return Applied(report.target, hosts, len(report.checks), str(report.verify_report))
