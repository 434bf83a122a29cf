"""``appliance install``: verify, stage, provision through Ansible, with a live view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click

from appliance.cli import options as option
from appliance.cli.bundle import progress_for
from appliance.cli.output import Output
from appliance.install import InstallOptions, install
from appliance.install.verify import VerifyOptions, raise_if_failed, verify
from appliance.runner import TaskEvent

_MARK = {
    "ok": "ok",
    "changed": "changed",
    "skipped": "skipped",
    "failed": "FAILED",
    "unreachable": "UNREACHABLE",
}


class _LiveView:
    """One line per play and task as they start, one per host result: readable in a
    terminal and in a log alike."""

    def __init__(self, output: Output) -> None:
        self.output = output

    def __call__(self, event: TaskEvent) -> None:
        if event.kind == "play":
            self.output.info(f"PLAY {event.play}")
        elif event.kind == "task":
            self.output.detail(f"  TASK {event.task}")
        elif event.kind in {"changed", "failed", "unreachable"} or self.output.verbosity > 0:
            self.output.info(f"    {_MARK[event.kind]}: [{event.host}] {event.task}")


def live_view(output: Output) -> Callable[[TaskEvent], None]:
    """The play's live view for a command (silent under --json)."""
    return _LiveView(output) if not output.json_mode else lambda _event: None


@click.command("install")
@option.bundle()
@option.pubkey()
@option.inventory()
@option.root()
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="When the depot is another machine: where this machine keeps its verified copy and "
    "run records (default: --root).",
)
@option.internal_cidr()
@click.option(
    "--allow-reboot",
    is_flag=True,
    help="Let the install reboot GPU nodes (never this machine) when the NVIDIA driver needs it; "
    "without it the install stops and says which hosts to reboot.",
)
@click.option(
    "--replace-driver",
    is_flag=True,
    help="Replace another NVIDIA driver version found on a GPU node (otherwise refused with the "
    "plan of what would change).",
)
@option.allow_downgrade()
@click.pass_obj
def install_command(
    output: Output,
    bundle: Path,
    pubkey: Path,
    inventory: Path | None,
    root: Path,
    work_dir: Path | None,
    internal_cidrs: tuple[str, ...],
    allow_reboot: bool,
    replace_driver: bool,
    allow_downgrade: bool,
) -> None:
    """Install a verified bundle onto the hosts of an isolated network.

    Verifies the bundle (signature, every digest, layout) before any host
    changes, stages it as ROOT/releases/RELEASE on the depot (a copy when the
    depot is this machine, SFTP with resume and a digest check on the depot
    when it is another), then runs the bundle's own
    playbooks through ansible-runner: preflight, the bundle's repository as
    the only package source, an nftables firewall that drops egress, the OS
    packages, the NVIDIA driver on GPU nodes when the bundle carries one, the
    models with the stack's runtime, and the audited gateway.
    The first install creates the gateway's 'operator' API key and prints it
    once. Each run is kept under ROOT/runs/. Safe to re-run: the current
    release's own bundle again stages nothing and re-checks the hosts. A
    release older than the current one (by the build sequence in its signed
    manifest) is refused unless --allow-downgrade, and so is an upgrade from
    a release the bundle's upgrades_from does not list. To go from a running
    release to another, use the new bundle's install.sh upgrade (appliance
    upgrade): it shows the plan first and commits only after verify.

    \b
    Examples:
      appliance install --bundle /media/usb/acme.tar --pubkey acme.pub
      appliance install --bundle build/demo --pubkey key.pub --internal-cidr 198.18.10.0/24
    """
    options = InstallOptions(
        bundle=bundle,
        pubkey=pubkey,
        inventory=inventory,
        root=root,
        internal_cidrs=internal_cidrs,
        work_dir=work_dir,
        allow_reboot=allow_reboot,
        replace_driver=replace_driver,
        allow_downgrade=allow_downgrade,
    )
    view = live_view(output)
    with progress_for(output) as progress:
        report = install(options, on_event=view, progress=progress, on_note=output.info)
    result = report.result
    output.result(
        {
            "ok": True,
            "name": report.manifest.name,
            "release": report.manifest.release,
            "release_dir": str(report.release_dir),
            "hosts": report.hosts,
            "stats": result.stats,
            "seconds": round(result.seconds, 2),
            "record": str(result.artifacts),
            "api_key": report.api_key,
        },
        human=(
            f"installed {report.manifest.name} {report.manifest.release} on "
            f"{len(report.hosts)} host{'s' if len(report.hosts) != 1 else ''} in "
            f"{result.seconds:.0f} s: ok={result.total('ok')} changed={result.total('changed')} "
            f"failed={result.total('failed')}\n  run record: {result.artifacts}"
            + (
                f"\n  gateway API key 'operator' (shown this once, store it now): {report.api_key}"
                if report.api_key
                else ""
            )
        ),
    )


@click.command("verify")
@option.egress_target()
@option.internal_target()
@option.inventory()
@option.root()
@click.pass_obj
def verify_command(
    output: Output,
    egress_targets: tuple[str, ...],
    internal_targets: tuple[str, ...],
    inventory: Path | None,
    root: Path,
) -> None:
    """Prove the installed appliance is sealed: evidence from every host.

    From each host: every egress target must fail to answer, every internal
    target must answer, the firewall table must be loaded and persistent
    (with its drop counter), and the bundle's repository must be the only
    package source. When the appliance serves models: each runtime is
    running and healthy and cannot reach an egress target as its own user
    from its own network namespace, a real chat completion through the
    gateway succeeds, the call is in the audit log with verify's key id and
    the model's digest, and the audit log's hash chain is intact. Writes a
    JSON report; exits 33 naming each failed check.

    \b
    Example:
      appliance verify --egress-target http://198.19.255.10/ \\
        --internal-target http://198.18.10.10/
    """
    checks, report = verify(
        VerifyOptions(egress_targets, internal_targets, inventory, root),
        on_event=lambda _event: None,
    )
    width = max(len(f"{c.host}: {c.name}") for c in checks)
    lines = [
        f"{'PASS' if c.passed else 'FAIL'}  {f'{c.host}: {c.name}':<{width}}  {c.evidence}"
        for c in checks
    ]
    passed = sum(c.passed for c in checks)
    if output.json_mode and passed < len(checks):
        raise_if_failed(checks, report)  # one JSON document: the error, with every failed check
    output.result(
        {
            "ok": passed == len(checks),
            "checks": [asdict(c) for c in checks],
            "report": str(report),
        },
        human="\n".join([*lines, f"{passed} of {len(checks)} checks passed; report: {report}"]),
    )
    raise_if_failed(checks, report)
