"""``appliance rollback``: return every host to the previous (or a named) staged release."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli import options as option
from appliance.cli.bundle import progress_for
from appliance.cli.install import live_view
from appliance.cli.output import Output
from appliance.install.hosts_record import hosts_for
from appliance.install.upgrade import RollbackOptions, UpgradeReport, rollback


@click.command("rollback")
@click.option(
    "--to", "to", metavar="RELEASE", help="The release to go back to (default: previous)."
)
@option.egress_target()
@option.internal_target()
@click.option(
    "--pubkey",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The publisher key to check the release with (default: the key it was installed with).",
)
@option.inventory(recalled=True)
@option.root()
@option.internal_cidr(recalled=True)
@click.pass_obj
def rollback_command(
    output: Output,
    to: str | None,
    egress_targets: tuple[str, ...],
    internal_targets: tuple[str, ...],
    pubkey: Path | None,
    inventory: Path | None,
    root: Path,
    internal_cidrs: tuple[str, ...],
) -> None:
    """Go back to the previous release (or --to RELEASE) still on the depot.

    Re-checks the release's signature, runs its own playbooks on every host
    (its packages at its exact versions from its own repository, downgrades
    included; its models, units and configuration), runs appliance verify,
    and only then points current at it. If that fails, every host returns
    to the release that was current, which is verified again. Keys, the
    audit log, site models and the stores are kept. A pruned release is
    refused: install its bundle again with --allow-downgrade. An upgrade
    that a crash interrupted is settled first (back to where it started).

    \b
    Examples:
      appliance rollback --egress-target http://198.19.255.10/
      appliance rollback --to 2026.11.0 --egress-target http://198.19.255.10/ --json
    """
    inventory, internal_cidrs = hosts_for(root, inventory, internal_cidrs, output.info)
    options = RollbackOptions(
        egress_targets=egress_targets,
        internal_targets=internal_targets,
        to=to,
        pubkey=pubkey,
        inventory=inventory,
        root=root,
        internal_cidrs=internal_cidrs,
    )
    view = live_view(output)
    with progress_for(output) as progress:
        report = rollback(options, on_event=view, progress=progress, on_note=output.info)
    if report.kind == "upgrade" and report.outcome == "rolled-back":
        # Going back from an interrupted upgrade was the rollback asked for.
        output.result(
            {**as_dict(report), "ok": True},
            human=f"the interrupted upgrade to {report.target} was rolled back: "
            f"{report.origin} is current and verified",
        )
        return
    error = report.error()
    if error is not None:
        raise error
    output.result(
        as_dict(report),
        human=f"rolled back from {report.origin}: {report.target} is current and verified",
    )


def as_dict(report: UpgradeReport) -> dict[str, object]:
    """The report as one JSON document (shared with appliance upgrade)."""
    return {
        "ok": report.outcome == "committed",
        "kind": report.kind,
        "outcome": report.outcome,
        "target": report.target,
        "origin": report.origin,
        "current": report.current,
        "failure": report.failure,
        "rollback_failure": report.rollback_failure,
        "failed_checks": [f"{c.host}: {c.name}: {c.evidence}" for c in report.failed_checks],
        "verify_report": str(report.verify_report) if report.verify_report else None,
    }
