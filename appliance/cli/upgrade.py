"""``appliance upgrade``: verify the bundle, show the plan, then apply, verify and commit."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli import options as option
from appliance.cli.bundle import progress_for
from appliance.cli.install import live_view
from appliance.cli.output import Output
from appliance.errors import InstallError
from appliance.install import InstallOptions
from appliance.install.apply import apply_upgrade
from appliance.install.hosts_record import hosts_for
from appliance.install.prepare import prepare_plan
from appliance.install.upgrade_plan import UpgradePlan


@click.command("upgrade")
@option.bundle()
@option.pubkey()
@option.inventory(recalled=True)
@option.root()
@option.internal_cidr(recalled=True)
@option.egress_target(required=False)
@option.internal_target()
@option.allow_downgrade()
@click.option("--plan-only", is_flag=True, help="Show the plan and stop; nothing changes.")
@click.option("--yes", is_flag=True, help="Apply without asking (required under --json).")
@click.pass_obj
def upgrade_command(
    output: Output,
    bundle: Path,
    pubkey: Path,
    inventory: Path | None,
    root: Path,
    internal_cidrs: tuple[str, ...],
    egress_targets: tuple[str, ...],
    internal_targets: tuple[str, ...],
    allow_downgrade: bool,
    plan_only: bool,
    yes: bool,
) -> None:
    """Upgrade the running appliance to the release in BUNDLE.

    Verifies the bundle (signature first), reads the running release's signed
    manifest (ROOT/current/manifest.json on the depot), checks the release
    order as install does, and computes the plan before anything changes:
    packages added, removed, upgraded and downgraded; models added, removed
    and changed (by digest); runtime, gateway and stack changes; which host
    starts, restarts or stops which service; whether a host must reboot
    (NVIDIA driver, kernel); data migrations; the site models, kept. With
    --plan-only it stops there (--json: the plan for a change board).
    Otherwise it applies the release, runs appliance verify with the
    targets given, and commits (current moves) only then. Run it through
    the new bundle's own installer: install.sh upgrade --pubkey KEY ...

    \b
    Examples:
      /media/bundle/install.sh upgrade --pubkey key.pub --plan-only
      /media/bundle/install.sh upgrade --pubkey key.pub --yes --egress-target http://198.19.255.10/
    """
    if not plan_only and not egress_targets:
        raise click.UsageError(
            "--egress-target is required to apply (verify probes it); or pass --plan-only"
        )
    inventory, internal_cidrs = hosts_for(root, inventory, internal_cidrs, output.info)
    options = InstallOptions(
        bundle=bundle,
        pubkey=pubkey,
        inventory=inventory,
        root=root,
        internal_cidrs=internal_cidrs,
        allow_downgrade=allow_downgrade,
    )
    planned = prepare_plan(options, on_note=output.info)
    plan, decision = planned.plan, planned.decision
    output.info(decision.note)
    document = {"ok": True, "decision": decision.kind, "plan": plan.to_json()}
    if plan_only:
        output.result(document, human=None)
        if not output.json_mode:
            render_plan(output, plan)
        return
    if decision.kind == "first":
        raise InstallError(
            f"nothing is installed under {root} yet: there is nothing to upgrade",
            hint="install the first release with install.sh --pubkey KEY (or appliance install)",
        )
    if not output.json_mode:
        render_plan(output, plan)
    if not yes:
        if output.json_mode or not sys.stdin.isatty():
            raise click.UsageError("pass --yes to apply without a terminal to confirm in")
        click.confirm(f"Apply this plan to upgrade to {plan.to_release}?", abort=True)
    view = live_view(output)
    with progress_for(output) as progress:
        applied = apply_upgrade(
            options, egress_targets, internal_targets, view, progress, output.info,
        )  # fmt: skip
    output.result(
        {
            **document,
            "release": applied.release,
            "hosts": applied.hosts,
            "verify_report": applied.report,
            "api_key": applied.api_key,
        },
        human=f"upgraded {plan.name} to {applied.release} on {len(applied.hosts)} host(s); "
        f"verify passed {applied.checks} checks (report: {applied.report}); current is "
        f"{applied.release}"
        + (
            f"\n  gateway API key 'operator' (shown this once, store it now): {applied.api_key}"
            if applied.api_key
            else ""
        ),
    )


def render_plan(output: Output, plan: UpgradePlan) -> None:
    """The plan as two tables: what changes, and what each host does about it."""
    from rich.table import Table

    changes = Table(title=f"Upgrade plan: {plan.name} {_release(plan)}", title_justify="left")
    for column in ("change", "what", "from", "to"):
        changes.add_column(column, overflow="fold")
    for row in _change_rows(plan):
        changes.add_row(*row)
    if not changes.rows:
        changes.add_row("nothing", "the two releases install the same", "", "")
    output.console.print(changes)
    hosts = Table(title="Services and packages per host", title_justify="left")
    for column in ("host", "start", "restart", "stop", "reboot", "packages"):
        hosts.add_column(column, overflow="fold")
    for host in plan.hosts:
        moved = [
            f"{c.name} {c.old or '-'} -> {c.new or '-'}"
            for changes in plan.host_packages.get(host.host, {}).values()
            for c in changes
        ]
        cells = [host.start, host.restart, host.stop, host.reboot, moved]
        hosts.add_row(host.host, *("\n".join(c) or "-" for c in cells))
    output.console.print(hosts)
    output.console.print(
        f"reboot needed: {'yes' if plan.reboot else 'no'}\n"
        f"data migrations: {', '.join(plan.data_migrations) or 'none'}\n"
        "site models (data, untouched): " + (", ".join(plan.site_models) or "none")
    )


def _release(plan: UpgradePlan) -> str:
    def label(release: str | None, sequence: int | None) -> str:
        return f"{release} (sequence {sequence or '-'})" if release else "nothing installed"

    before = label(plan.from_release, plan.from_sequence)
    return f"{before} -> {label(plan.to_release, plan.to_sequence)}"


def _change_rows(plan: UpgradePlan) -> list[tuple[str, str, str, str]]:
    rows = []
    for kind, changes in (
        ("package added", plan.packages_added),
        ("package removed", plan.packages_removed),
        ("package upgraded", plan.packages_upgraded),
        ("package DOWNGRADED", plan.packages_downgraded),
    ):
        rows += [(kind, f"{c.name} ({c.arch})", c.old or "-", c.new or "-") for c in changes]
    for kind, models in (
        ("model added", plan.models_added),
        ("model removed", plan.models_removed),
        ("model changed", plan.models_changed),
    ):
        rows += [(kind, m.name, m.old or "-", m.new or "-") for m in models]
    rows += [("wheel set changed", name, "", "") for name in plan.wheel_sets_changed]
    rows += [("file changed", name, "", "") for name in plan.files_changed]
    rows += [
        ("stack", key, old or "-", new or "-") for key, (old, new) in plan.stack_changed.items()
    ]
    if plan.nvidia_driver is not None:
        rows.append(
            ("NVIDIA driver", "", plan.nvidia_driver[0] or "-", plan.nvidia_driver[1] or "-")
        )
    if plan.ansible_content_changed:
        rows.append(("roles changed", "Ansible content", "", "units and config re-rendered"))
    return rows
