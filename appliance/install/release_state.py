"""The depot's record of its releases: which is current, which came before, which failed.

``<root>/releases.json``, beside ``releases/`` (never inside a release directory), written by
install through a temporary file, fsync and one rename, so a reader sees the old record or the
new one, never half of one. The ``current`` link stays the truth about the running release; the
record adds what a directory cannot say (previous, failed, when). A record that cannot be read (a
torn write by another tool, a full disk) counts as empty, with a warning: nothing depends on it
for safety, and the next install writes it whole again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundle import layout
from appliance.bundle.manifest import parse_manifest
from appliance.errors import ApplianceError, InstallError
from appliance.install.atomic import write_atomically
from appliance.install.upgrade_state import load_phase
from appliance.install.venvs import freed_bytes, release_venv

STATE_FILE = "releases.json"
_SCHEMA = 1


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StateRecord:
    releases: dict[str, dict[str, Any]]
    previous: str | None = None
    warning: str | None = None  # why the record on disk was not used

    @classmethod
    def load(cls, root: Path) -> StateRecord:
        path = root / STATE_FILE
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls({})
        except (OSError, ValueError) as exc:
            return cls({}, warning=f"{path} cannot be read ({exc}); it is rewritten next install")
        if (
            not isinstance(document, dict)
            or document.get("schema") != _SCHEMA
            or not isinstance(document.get("releases"), dict)
        ):
            return cls({}, warning=f"{path} is not a release record; it is rewritten next install")
        previous = document.get("previous")
        return cls(document["releases"], previous if isinstance(previous, str) else None)

    def save(self, root: Path) -> None:
        data = json.dumps(
            {"schema": _SCHEMA, "previous": self.previous, "releases": self.releases},
            indent=2,
            sort_keys=True,
        ).encode()
        write_atomically(root / STATE_FILE, data + b"\n")


def record_staged(
    root: Path,
    release: str,
    sequence: int | None,
    manifest_sha256: str,
    pubkey: str | None = None,
) -> None:
    """``pubkey``: the publisher key the release verified with (an OpenSSH public key line), so
    a rollback to it later re-checks its signature with the key that admitted it."""
    record = StateRecord.load(root)
    entry = record.releases.setdefault(release, {"staged": _now()})
    entry.update(sequence=sequence, manifest_sha256=manifest_sha256)
    if pubkey:
        entry["pubkey"] = pubkey
    record.save(root)


def record_failed(root: Path, release: str, error: str) -> None:
    record = StateRecord.load(root)
    record.releases.setdefault(release, {"staged": _now()}).update(failed=_now(), error=error)
    record.save(root)


def record_installed(root: Path, release: str, replaced: str | None) -> None:
    """``current`` moved to ``release`` after a complete run; the release it replaced, if
    another, becomes previous."""
    record = StateRecord.load(root)
    entry = record.releases.setdefault(release, {"staged": _now()})
    entry.pop("error", None)
    entry.pop("failed", None)
    entry["installed"] = _now()
    if replaced is not None and replaced != release:
        record.previous = replaced
        record.releases.setdefault(replaced, {})["superseded"] = _now()
    record.save(root)


@dataclass(frozen=True)
class Release:
    release: str
    # current, previous, failed, staged, superseded; or the phase of an unfinished upgrade or
    # rollback towards it (staged, applying, verifying, rolling-back, rollback-failed)
    state: str
    sequence: int | None
    staged: str | None
    installed: str | None
    error: str | None
    size: int | None = None  # bytes on disk of its directory and unpacked Ansible content
    venv: str | None = None  # its installer venv (install.sh's), when that is on this machine

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def current_release(root: Path) -> str | None:
    try:
        return (root / "current").readlink().name or None
    except OSError:
        return None


def list_releases(root: Path) -> tuple[list[Release], str | None]:
    """The releases staged under ``<root>/releases``, newest first, and a warning if the record
    was unusable."""
    record = StateRecord.load(root)
    current = current_release(root)
    found = []
    for directory in _release_dirs(root):
        entry = record.releases.get(directory.name, {})
        found.append(
            Release(
                release=directory.name,
                state=_state(directory.name, entry, current, record.previous),
                sequence=entry.get("sequence", _sequence(directory)),
                staged=entry.get("staged"),
                installed=entry.get("installed"),
                error=entry.get("error"),
                size=freed_bytes([directory, directory.with_name(f"{directory.name}.ansible")]),
                venv=_venv(root, directory.name),
            )
        )
    # A transition in progress, or one a crash interrupted: its target shows the phase it is in.
    phase = load_phase(root)
    if phase is not None and phase.unfinished:
        found = [replace(r, state=phase.phase) if r.release == phase.target else r for r in found]
    # Newest first: by build sequence, then by when each was installed or staged.
    found.sort(key=lambda r: r.installed or r.staged or "", reverse=True)
    found.sort(key=lambda r: r.sequence or 0, reverse=True)
    found.sort(key=lambda r: {"current": 0, "previous": 1}.get(r.state, 2))
    return found, record.warning


def _venv(root: Path, release: str) -> str | None:
    venv = release_venv(root, release)
    return str(venv) if venv is not None and venv.is_dir() else None


def _state(name: str, entry: dict[str, Any], current: str | None, previous: str | None) -> str:
    if name == current:
        return "current"
    if name == previous:
        return "previous"
    if entry.get("failed") and entry.get("failed", "") >= entry.get("installed", ""):
        return "failed"
    if entry.get("superseded") or entry.get("installed"):
        return "superseded"
    return "staged"


def _release_dirs(root: Path) -> list[Path]:
    releases = root / "releases"
    if not releases.is_dir():
        return []
    return [
        p
        for p in releases.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".ansible")
    ]


def _sequence(directory: Path) -> int | None:
    try:
        return parse_manifest(
            (directory / layout.MANIFEST).read_bytes(), str(directory / layout.MANIFEST)
        ).sequence
    except (OSError, ApplianceError):
        return None


def prune(root: Path, keep: int, *, dry_run: bool = False) -> list[str]:
    """Remove all releases but current, previous and the ``keep`` newest others; returns the
    releases removed (or, with ``dry_run``, that would be)."""
    if keep < 0:
        raise InstallError(f"--keep must be 0 or more, not {keep}", hint="e.g. --keep 2")
    releases, _ = list_releases(root)
    # An unfinished upgrade or rollback still needs both ends: never prune them.
    phase = load_phase(root)
    busy = {phase.target, phase.origin} if phase is not None and phase.unfinished else set()
    others = [r for r in releases if r.state not in {"current", "previous"}]
    others = [r for r in others if r.release not in busy]
    kept_previous = sum(r.state == "previous" for r in releases)
    doomed = others[max(keep - kept_previous, 0) :]
    if not dry_run:
        for release in doomed:
            _remove(root, release.release)
    return [r.release for r in doomed]


def _remove(root: Path, release: str) -> None:
    """A release and its unpacked Ansible content, each moved aside by one rename first, so a
    half-removed release never sits under its own name."""
    releases = root / "releases"
    for name in (f"{release}.ansible", release):
        path = releases / name
        if not path.exists():
            continue
        doomed = Path(tempfile.mkdtemp(prefix=".prune-", dir=root))
        path.rename(doomed / name)
        shutil.rmtree(doomed)
    record = StateRecord.load(root)
    if record.releases.pop(release, None) is not None:
        record.save(root)
