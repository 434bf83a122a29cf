"""A plain install and the depot's transitions: one at a time, and a failed rollback's way out.

A plain ``appliance install`` holds the depot's transition lock (upgrade_state.py) for its whole
run, as upgrade and rollback do, so no upgrade, rollback or prune runs beside it. Before its
play it settles an upgrade or rollback that a crash interrupted (transition.py). A record that says
a rollback failed is not tried again here: installing a release is one of the ways out of that
state (``appliance rollback --to RELEASE`` is the other), and its success settles the record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from appliance.errors import ApplianceError
from appliance.install import InstallOptions
from appliance.install.inventory import load_inventory
from appliance.install.release_state import current_release
from appliance.install.transition import settle
from appliance.install.upgrade_state import (
    advance,
    load_phase,
    transition_lock,
    wedged_message,
)
from appliance.progress import Progress
from appliance.runner import TaskEvent

Events = Callable[[TaskEvent], None]
Notes = Callable[[str], None]


@contextmanager
def install_lock(
    options: InstallOptions, on_event: Events, progress: Progress | None, on_note: Notes
) -> Iterator[None]:
    """A plain install holds the transition lock for its whole run (no upgrade, rollback or
    prune meanwhile), settling an interrupted upgrade or rollback on this depot first. After a
    failed rollback, the install is the way out: it runs without another attempt at the origin,
    and once it completed its release is current and the record says so."""
    try:
        local = options.inventory is None or load_inventory(options.inventory).depot_is_local
    except ApplianceError:
        # Reported by install itself, after the bundle's signature (checked before anything
        # else is read): meanwhile this machine's own lock keeps two runs apart.
        local = True
    # A remote depot's lock is on the depot; this one keeps two runs of this machine apart.
    with transition_lock(options.root if local else options.work_dir or options.root,
                         "appliance install"):  # fmt: skip
        wedged = load_phase(options.root) if local else None
        if wedged is not None and wedged.phase == "rollback-failed":
            on_note(f"{wedged_message(wedged)}: this install replaces it")
        elif local:
            _settle_for_install(options, on_event, progress, on_note)
        yield
        if wedged is not None and wedged.phase == "rollback-failed":
            release = current_release(options.root) or "?"
            failure = f"recovered by installing {release} after: {wedged_message(wedged)}"
            advance(options.root, replace(wedged, kind="install", target=release), "committed",
                    failure)  # fmt: skip
            on_note(f"{release} is installed and current: the failed rollback is settled")


def settle_interrupted(
    options: InstallOptions, on_event: Events, progress: Progress | None, on_note: Notes
) -> None:
    """Settle an interrupted upgrade or rollback on this depot (as install does first)."""
    phase = load_phase(options.root)
    if phase is None or not phase.unfinished:
        return  # the common case: nothing is locked or created
    if options.inventory is not None and not load_inventory(options.inventory).depot_is_local:
        return
    with transition_lock(options.root, "appliance install"):
        _settle_for_install(options, on_event, progress, on_note)


def _settle_for_install(
    options: InstallOptions, on_event: Events, progress: Progress | None, on_note: Notes
) -> None:
    settled = settle(options.root, options.pubkey, on_event, progress, on_note)
    if settled is not None and settled.outcome == "rollback-failed":
        error = settled.error()
        assert error is not None
        raise error
