"""Which hosts the depot's releases run on: the inventory (and internal networks) of the last
complete play, so ``upgrade`` and ``rollback`` reach every host of a depot + nodes appliance
without the operator naming them again.

Without it, an upgrade or rollback run with no ``--inventory`` on such a depot would plan and
play a single box: the depot would take the nodes' models and the nodes would keep the release
they ran, two releases half active. ``<root>/hosts.json`` (beside ``releases.json``, written
whole: atomic.py) holds the inventory's absolute path and the ``--internal-cidr`` values; a
single-box play keeps only the latter (none: it removes the file).

``<root>/played.json`` holds one digest of what the last complete play ran on: its topology, the
inventory file's text and the internal networks (``played_digest``). An upgrade plans the
running release's topology on today's inventory, so an inventory edited since (a node's address,
a host variable) or other networks look like no change to its plan: only a digest equal to the
recorded one lets it run fewer roles than the whole play (upgrade_scope.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from appliance.errors import InstallError
from appliance.install.atomic import write_atomically
from appliance.install.topology import Topology

HOSTS_FILE = "hosts.json"
PLAYED_FILE = "played.json"


def remember(root: Path, inventory: Path | None, internal_cidrs: tuple[str, ...]) -> None:
    """After a play on the depot: the inventory it ran with (None: this machine alone)."""
    if inventory is None and not internal_cidrs:
        (root / HOSTS_FILE).unlink(missing_ok=True)
        return
    # A single box keeps its internal networks: the firewall's, and its admin access's.
    path = None if inventory is None else str(inventory.resolve())
    document = {"inventory": path, "internal_cidrs": list(internal_cidrs)}
    write_atomically(root / HOSTS_FILE, json.dumps(document, indent=2).encode() + b"\n")


def recall(root: Path) -> tuple[Path | None, tuple[str, ...]]:
    """The inventory and internal networks of the last play; (None, ()) for a single box, or
    when nothing (readable) was recorded."""
    try:
        document = json.loads((root / HOSTS_FILE).read_bytes())
    except (OSError, ValueError):
        return None, ()
    if not isinstance(document, dict) or not isinstance(document.get("inventory"), str | None):
        return None, ()
    cidrs = document.get("internal_cidrs") or []
    if not isinstance(cidrs, list):
        return None, ()
    inventory = document.get("inventory")
    return (None if inventory is None else Path(inventory)), tuple(str(c) for c in cidrs)


def hosts_for(
    root: Path,
    inventory: Path | None,
    internal_cidrs: tuple[str, ...],
    on_note: Callable[[str], None],
) -> tuple[Path | None, tuple[str, ...]]:
    """``inventory`` and ``internal_cidrs`` as given, or, with no ``--inventory``, those of the
    depot's last play (its nodes must follow the release too)."""
    if inventory is not None:
        return inventory, internal_cidrs
    recorded, cidrs = recall(root)
    if recorded is None:
        if not internal_cidrs and cidrs:
            on_note(f"internal networks: {', '.join(cidrs)}, as the last install on this depot")
        return None, internal_cidrs or cidrs
    if not recorded.is_file():
        raise InstallError(
            f"this depot's hosts were installed with the inventory {recorded}, which is gone",
            hint="pass that inventory again with --inventory FILE (and --internal-cidr as "
            "given to install); nothing was changed",
        )
    on_note(
        f"hosts: the inventory {recorded} of the last install on this depot "
        "(--inventory names another)"
    )
    return recorded, internal_cidrs or cidrs


def played_digest(
    topology: Topology, inventory: Path | None, internal_cidrs: tuple[str, ...]
) -> str:
    """One digest of what a play runs on (``inventory`` None: the generated single box)."""
    text = None if inventory is None else hashlib.sha256(inventory.read_bytes()).hexdigest()
    document = {
        "topology": topology.as_vars(),
        "inventory": text,
        "internal_cidrs": sorted(internal_cidrs),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def remember_played(root: Path, digest: str) -> None:
    """After a complete play on the depot."""
    write_atomically(root / PLAYED_FILE, json.dumps({"digest": digest}).encode() + b"\n")


def forget_played(root: Path) -> None:
    """Before a play: one that does not complete leaves hosts no digest describes."""
    (root / PLAYED_FILE).unlink(missing_ok=True)


def played(root: Path) -> str | None:
    """The digest of the last complete play (None: none recorded, or unreadable)."""
    try:
        document = json.loads((root / PLAYED_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    digest = document.get("digest") if isinstance(document, dict) else None
    return digest if isinstance(digest, str) else None
