"""Where an upgrade or rollback stands, written before each step so a killed run can be finished.

``<root>/upgrade.json`` (beside ``releases.json``) holds the one transition in progress: its kind
(``upgrade`` or ``rollback``), the release it goes to (``target``), the release ``current``
pointed at when it began (``origin``), and its phase::

    staged -> applying -> verifying -> committed
                 \\            \\
                  +------------+--> rolling-back -> rolled-back   (or rollback-failed)

Each phase is written whole (atomic.py) before the step it names begins, so after a controller
crash or a host reboot the next install, upgrade or rollback knows exactly how far the last one
got. ``current`` moves only at commit, after verify passed: until then the origin is what runs,
and a run that finds an unfinished record returns every host to it (or finishes the same upgrade
when asked for it again), so two releases are never left half active. The verify targets and
inventory are kept too, so whichever command comes next can verify what it puts back.

An exclusive lock (``<root>/upgrade.lock``, flock: the kernel drops it with a killed process)
keeps two transitions from running at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import InstallError
from appliance.install.atomic import write_atomically

PHASE_FILE = "upgrade.json"
LOCK_FILE = "upgrade.lock"
# A record in one of these phases is a transition that has not finished: the next run settles it.
UNFINISHED = frozenset({"staged", "applying", "verifying", "rolling-back", "rollback-failed"})
PHASES = UNFINISHED | {"committed", "rolled-back"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Phase:
    kind: str  # upgrade (to a new bundle) or rollback (to a staged release)
    phase: str
    target: str
    origin: str | None
    started: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    failure: str | None = None  # what made it roll back
    egress_targets: tuple[str, ...] = ()
    internal_targets: tuple[str, ...] = ()
    inventory: str | None = None
    internal_cidrs: tuple[str, ...] = ()

    @property
    def unfinished(self) -> bool:
        return self.phase in UNFINISHED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wedged_message(phase: Phase) -> str:
    """What a ``rollback-failed`` record says happened."""
    return (
        f"the {phase.kind} to {phase.target} failed ({phase.failure}) and so did the rollback "
        f"to {phase.origin}"
    )


def load_phase(root: Path) -> Phase | None:
    """The last transition's record, or None when there is none (or it cannot be read: then
    ``current`` is the only truth, as before upgrades were recorded)."""
    try:
        document = json.loads((root / PHASE_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("phase") not in PHASES:
        return None
    try:
        return Phase(
            kind=str(document["kind"]),
            phase=str(document["phase"]),
            target=str(document["target"]),
            origin=document.get("origin"),
            started=str(document.get("started", "")),
            updated=str(document.get("updated", "")),
            failure=document.get("failure"),
            egress_targets=tuple(document.get("egress_targets") or ()),
            internal_targets=tuple(document.get("internal_targets") or ()),
            inventory=document.get("inventory"),
            internal_cidrs=tuple(document.get("internal_cidrs") or ()),
        )
    except (KeyError, TypeError):
        return None


def save_phase(root: Path, phase: Phase) -> Phase:
    root.mkdir(parents=True, exist_ok=True)
    data = json.dumps(phase.as_dict(), indent=2, sort_keys=True).encode()
    write_atomically(root / PHASE_FILE, data + b"\n")
    return phase


def advance(root: Path, phase: Phase, to: str, failure: str | None = None) -> Phase:
    """Record that ``phase`` now enters ``to`` (before that step begins)."""
    assert to in PHASES, to
    changed = replace(phase, phase=to, updated=_now())
    if failure is not None:
        changed = replace(changed, failure=failure)
    return save_phase(root, changed)


def forget(root: Path) -> None:
    """A transition refused before anything changed leaves no record behind."""
    (root / PHASE_FILE).unlink(missing_ok=True)


_LOCK_TRIES = 20  # 2 s


@contextmanager
def transition_lock(root: Path, holder: str | None = None) -> Iterator[None]:
    """Hold the depot's transition lock, or refuse at once when another run holds it, naming
    that run. ``holder``: what this run is (``appliance install``), written into the lock file
    for a refused run to name."""
    root.mkdir(parents=True, exist_ok=True)
    handle = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # A few tries: `appliance releases` probes the lock for an instant (lock_held), and a
        # monitoring loop running it must not make an upgrade refuse to start.
        for attempt in range(_LOCK_TRIES):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _LOCK_TRIES - 1:
                    raise _refusal(root) from None
                time.sleep(0.1)
        os.ftruncate(handle, 0)
        if holder is not None:
            os.pwrite(handle, f"{holder} (pid {os.getpid()}, since {_now()})\n".encode(), 0)
        yield
    finally:
        os.close(handle)  # closing the descriptor drops the lock


def _refusal(root: Path) -> InstallError:
    try:
        holder = (root / LOCK_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        holder = ""
    if not holder:  # a run that names nothing, or one that has not written its name yet
        return InstallError(
            f"another install, upgrade or rollback is running on this depot ({root})",
            hint="wait for it to finish, then run this again; nothing was changed",
        )
    return InstallError(
        f"{holder} holds this depot's transition lock ({root / LOCK_FILE}): one install, "
        "upgrade, rollback or prune runs at a time",
        hint="wait for it to finish (appliance releases shows where it stands), then run this "
        "again; nothing was changed",
    )


def lock_held(root: Path) -> bool:
    """Whether a run holds the transition lock now (an unfinished record without it was
    interrupted)."""
    try:
        handle = os.open(root / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(handle)
    return False
