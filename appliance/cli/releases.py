"""``appliance releases``: the releases on the depot with their state, and pruning old ones."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli import options as option
from appliance.cli.output import Output, human_bytes
from appliance.install.prune import prune_depot
from appliance.install.release_state import list_releases
from appliance.install.upgrade_state import load_phase, lock_held


@click.group("releases", invoke_without_command=True)
@option.root()
@click.pass_context
def releases_group(ctx: click.Context, root: Path) -> None:
    """List the releases on this depot, newest first, with their state.

    \b
    States: current (what runs), previous (what current replaced: the
    first to go back to), failed (its last install run failed), staged
    (never installed completely), superseded (installed once, replaced
    since); with the bytes only that release holds on disk (what pruning it
    frees) and, under --json, its installer venv. Run on the depot itself.

    \b
    Examples:
      appliance releases
      appliance releases prune --keep 2 --dry-run
    """
    if ctx.invoked_subcommand is not None:
        return
    output = ctx.ensure_object(Output)
    found, warning = list_releases(root)
    if warning:
        output.warning(warning)
    width = max((len(r.release) for r in found), default=0)
    lines = [
        f"{r.release:<{width}}  {r.state:<10}  sequence {r.sequence or '-'}"
        + (f"  installed {r.installed}" if r.installed else f"  staged {r.staged or '?'}")
        + (f"  {human_bytes(r.size)}" if r.size is not None else "")
        + (f"  error: {r.error}" if r.state == "failed" and r.error else "")
        for r in found
    ]
    phase = load_phase(root)
    if phase is not None and phase.unfinished:
        running = (
            "in progress"
            if lock_held(root)
            else "rollback --to RELEASE, or an install of a release's bundle, recovers from it"
            if phase.phase == "rollback-failed"
            else "interrupted: the next install, upgrade or rollback settles it"
        )
        lines.append(
            f"{phase.kind} from {phase.origin} to {phase.target}: {phase.phase} since "
            f"{phase.updated} ({running})"
        )
    output.result(
        {
            "ok": True,
            "root": str(root),
            "releases": [r.as_dict() for r in found],
            "transition": None if phase is None else phase.as_dict(),
        },
        human="\n".join(lines) if lines else f"no release is staged under {root}",
    )


@releases_group.command("prune")
@option.root()
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="How many releases before current to keep (previous always stays).",
)
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@click.pass_obj
def prune_command(output: Output, root: Path, keep: int, dry_run: bool) -> None:
    """Remove old releases from the depot: never current, never previous.

    Keeps current, previous and the newest others up to KEEP releases
    before current; removes the rest with their unpacked Ansible content,
    and the installer venvs (install.sh's, beside the venv link) that only
    they used: never the venv of a kept release, the one the link names or
    the one running. Says how many bytes that frees. Waits for no install,
    upgrade or rollback: refused while one runs.
    """
    pruned = prune_depot(root, keep, dry_run=dry_run)
    removed = pruned.releases
    verb = "would remove" if dry_run else "removed"
    venvs = len(pruned.venvs)
    output.result(
        {
            "ok": True,
            "dry_run": dry_run,
            "removed": removed,
            "keep": keep,
            "venvs": pruned.venvs,
            "freed_bytes": pruned.freed,
        },
        human=f"{verb} {len(removed)} release{'s' if len(removed) != 1 else ''}"
        + (f": {', '.join(removed)}" if removed else "")
        + (f"\n{verb} {venvs} installer venv{'s' if venvs != 1 else ''}: " if venvs else "")
        + ", ".join(pruned.venvs)
        + f"\n{'would free' if dry_run else 'freed'} {human_bytes(pruned.freed)}",
    )
