"""appliance install: verify the bundle, stage it on the depot, run the playbook.

Nothing on any host changes before the bundle verified. Releases live side by side under
``<root>/releases/<release>``; ``<root>/current`` points at the last release that installed
completely. Every run keeps its ansible-runner private data dir under ``<root>/runs/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundle import layout
from appliance.bundle.inspect import read_manifest
from appliance.bundle.manifest import Manifest
from appliance.bundle.pack import unpack
from appliance.bundle.verify import check_signature, verify_dir
from appliance.errors import InstallError, PlaybookFailedError
from appliance.install.checks import check_can_install
from appliance.install.inventory import Inventory, load_inventory, single_box
from appliance.install.remote import depot_from_inventory, point_current_remote, stage_remote
from appliance.install.topology import Topology, plan
from appliance.progress import NullProgress, Progress
from appliance.runner import RunResult, TaskEvent, run_playbook


@dataclass(frozen=True)
class InstallOptions:
    bundle: Path
    pubkey: Path
    inventory: Path | None = None
    root: Path = Path("/opt/appliance")
    internal_cidrs: tuple[str, ...] = ()
    # This machine's own state when the depot is another machine: the verified copy, the
    # Ansible content and run records. A local depot keeps them under ``root``.
    work_dir: Path | None = None


@dataclass(frozen=True)
class InstallReport:
    manifest: Manifest
    release_dir: Path
    result: RunResult
    hosts: list[str]
    # The gateway's operator API key, when this install created it on this machine: shown once.
    api_key: str | None = None


def install(
    options: InstallOptions,
    on_event: Callable[[TaskEvent], None],
    progress: Progress | None = None,
) -> InstallReport:
    if options.inventory is None:
        run_dir = new_run_dir(options.root)
        inventory = load_inventory(single_box(run_dir / "single-box.yml", sys.executable))
    else:
        inventory = load_inventory(options.inventory)
    work = options.root if inventory.depot_is_local else (options.work_dir or options.root)
    if options.inventory is not None:
        run_dir = new_run_dir(work)
    remote = [host for host in inventory.hosts if host not in inventory.local_hosts]
    if remote and shutil.which("ssh") is None:
        raise InstallError(
            f"the inventory names other hosts ({', '.join(remote)}) but this machine has no ssh "
            "client to reach them",
            hint="install openssh-client on the depot (Debian: from the installation media), "
            "then run install again",
        )
    named = read_manifest(options.bundle)
    if not inventory.depot_is_local and named.base is not None:
        raise InstallError(
            "delta bundles install onto a depot that runs appliance install itself",
            hint="run install.sh on the depot, which holds the base release",
        )
    # Everything the play needs, checked before any host changes: the stack is one this
    # release installs, the bundle holds every OS package the roles install, and the inventory
    # gives a workable topology.
    check_can_install(named)
    topology = plan_topology(inventory, named)
    # Verified here first, whether the depot is this machine or another; a remote depot then
    # receives this verified copy.
    manifest, local_release = stage(options.bundle, options.pubkey, work)
    project = _ansible_content(local_release, manifest)
    depot_release = local_release
    depot = None
    if not inventory.depot_is_local:
        depot = depot_from_inventory(inventory.depot, inventory.depot_vars)
        progress = progress or NullProgress()
        task = progress.task(f"stage to {depot.name}", manifest.total_size())
        try:
            depot_release = Path(
                stage_remote(local_release, manifest, depot, str(options.root), task.advance)
            )
        finally:
            progress.finish(task)
    extravars = _extravars(options, manifest, depot_release, local_release, topology)
    result = run_playbook(
        data_dir=run_dir,
        project_dir=project,
        playbook="playbooks/site.yml",
        inventory=inventory.path.resolve(),
        extravars=extravars,
        envvars=runner_env(project),
        on_event=on_event,
    )
    if result.rc != 0:
        raise _failure(result)
    if depot is not None:
        point_current_remote(depot, str(options.root), manifest.release)
    else:
        _point_current(options.root, local_release)
    return InstallReport(
        manifest, depot_release, result, inventory.hosts, _take_new_key(options.root, "operator")
    )


def plan_topology(inventory: Inventory, manifest: Manifest) -> Topology:
    """The topology of ``inventory`` for ``manifest``'s stack and models."""
    return plan(
        hosts=inventory.hosts,
        depot=inventory.depot,
        gpu_nodes=inventory.gpu_nodes,
        host_vars=inventory.host_vars,
        stack=manifest.stack,
        models=manifest.models(),
    )


def _take_new_key(root: Path, name: str) -> str | None:
    """A key the gateway role just created on this machine: read it once and forget it.

    The gateway stores only the key's hash; the plaintext exists in ``<root>/secrets`` (root,
    0600) between its creation and this call, so the operator sees it exactly once.
    """
    path = root / "secrets" / f"{name}.key"
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    path.unlink()
    return key or None


def stage(bundle: Path, pubkey: Path, root: Path) -> tuple[Manifest, Path]:
    """Verify ``bundle`` and make it ``<root>/releases/<release>``; reuse a verified copy.

    A delta bundle becomes a complete release here: what it carries, plus the files its base
    release (which must be on this machine, exactly as the delta names it) holds.
    """
    releases = root / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    if not bundle.is_dir():
        with tempfile.TemporaryDirectory(prefix=".incoming-", dir=releases) as tmp:
            unpack(bundle, Path(tmp) / "bundle", pubkey)
            return stage(Path(tmp) / "bundle", pubkey, root)
    # The signed manifest says whether this is a delta; find its base before hashing anything,
    # so every file is read once, here or in the base.
    named = check_signature(bundle, pubkey)
    base = _base_release(named, releases) if named.base else None
    manifest = verify_dir(bundle, pubkey, base=base).manifest
    release_dir = releases / manifest.release
    if bundle.resolve() == release_dir.resolve():
        return manifest, release_dir
    if release_dir.exists():
        existing = verify_dir(release_dir, pubkey).manifest
        if existing.canonical() == manifest.canonical():
            return manifest, release_dir
        raise InstallError(
            f"{release_dir} holds another bundle of release {manifest.release}",
            hint="releases are immutable: build the new bundle with a new release label",
        )
    _copy_bundle(bundle, manifest, release_dir, base)
    return manifest, release_dir


def _base_release(manifest: Manifest, releases: Path) -> Path:
    assert manifest.base is not None
    wanted = manifest.base
    candidate = releases / wanted.release
    manifest_file = candidate / layout.MANIFEST
    if (
        manifest_file.is_file()
        and hashlib.sha256(manifest_file.read_bytes()).hexdigest() == wanted.sha256
    ):
        return candidate
    held = sorted(p.name for p in releases.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise InstallError(
        f"this delta bundle needs release {wanted.release} of {wanted.name} (manifest sha256 "
        f"{wanted.sha256[:16]}...) on this depot; it holds: {', '.join(held) or 'no release'}",
        hint="install that release first, or ask for a full bundle; nothing was changed",
    )


def _copy_bundle(bundle: Path, manifest: Manifest, release_dir: Path, base: Path | None) -> None:
    """Hard links where the filesystem allows (no extra disk), copies elsewhere; into a
    temporary directory renamed into place, so a release directory is always complete."""
    partial = Path(tempfile.mkdtemp(prefix=f".{release_dir.name}.", dir=release_dir.parent))
    try:
        sources = dict.fromkeys(layout.TRUST_FILES, bundle)
        for name, entry in manifest.by_path().items():
            sources[name] = base if entry.from_base and base is not None else bundle
        for name, root in sources.items():
            source, target = root / name, partial / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        partial.chmod(0o755)
        partial.rename(release_dir)
    finally:
        if partial.exists():
            shutil.rmtree(partial)


def _ansible_content(release_dir: Path, manifest: Manifest) -> Path:
    """Unpack the bundle's Ansible content next to it, once (it is verified content)."""
    target = release_dir.parent / f"{release_dir.name}.ansible"
    if target.is_dir():
        return target
    (entry,) = [e for e in manifest.files if e.kind == "ansible-content"]
    partial = Path(tempfile.mkdtemp(prefix=".ansible-", dir=release_dir.parent))
    try:
        # By hand, not extractall: Debian 12's Python 3.11.2 predates extraction filters, and
        # only plain files with safe names may come out of this tar.
        with tarfile.open(release_dir / entry.path) as tar:
            for member in tar.getmembers():
                source = tar.extractfile(member) if member.isfile() else None
                if source is None or layout.unsafe_reason(member.name):
                    raise InstallError(f"ansible content member {member.name!r} is not a file")
                path = partial / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                with source, path.open("wb") as out:
                    shutil.copyfileobj(source, out)
                path.chmod(0o755 if member.mode & 0o111 else 0o644)
        partial.chmod(0o755)
        partial.rename(target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return target


def _extravars(
    options: InstallOptions,
    manifest: Manifest,
    release_dir: Path,
    local_release: Path,
    topology: Topology,
) -> dict[str, Any]:
    variables: dict[str, Any] = {
        "appliance_root": str(options.root),
        "appliance_release": manifest.release,
        "appliance_name": manifest.name,
        "appliance_bundle_dir": str(release_dir),
        "appliance_bundle_bytes": manifest.total_size(),
        # Copied from this machine to every host; the depot's own copy may be remote.
        "appliance_repo_key": str(local_release / manifest.repo.key) if manifest.repo else "",
        "appliance_packages": manifest.packages,
        "appliance_stack": manifest.stack,
        # Who does what, where: computed once here (topology.py); the roles read it.
        "appliance_topology": topology.as_vars(),
        # What the runtime and gateway roles lay out from the bundle, each file by digest.
        "appliance_models": manifest.models(),
        "appliance_wheel_sets": manifest.wheel_sets(),
        "appliance_files": manifest.plain_files(),
    }
    if options.internal_cidrs:
        variables["appliance_internal_cidrs"] = list(options.internal_cidrs)
    return variables


def runner_env(project: Path) -> dict[str, str]:
    return {
        "ANSIBLE_ROLES_PATH": str(project / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(project / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_HOST_KEY_CHECKING": "true",
    }


def new_run_dir(root: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=runs))
    run_dir.chmod(0o700)  # the run's record may name hosts and paths: root only
    return run_dir


def _point_current(root: Path, release_dir: Path) -> None:
    link = root / "current"
    temporary = root / ".current.new"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(Path("releases") / release_dir.name)
    temporary.replace(link)


def _failure(result: RunResult) -> PlaybookFailedError:
    record = result.artifacts
    if not result.failures:
        return PlaybookFailedError(
            f"the playbook ended with status {result.status} (rc {result.rc})",
            hint=f"the run's full record is in {record}",
        )
    first = result.failures[0]
    what = "is unreachable" if first.unreachable else f"failed at task '{first.task}'"
    others = len(result.failures) - 1
    return PlaybookFailedError(
        f"{first.host} {what}: {first.message}"
        + (f" (and {others} more failure{'s' if others > 1 else ''})" if others else ""),
        hint=f"fix the cause and run install again (it is idempotent); the run's full record "
        f"is in {record}",
    )
