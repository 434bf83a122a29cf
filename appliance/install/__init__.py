"""appliance install: verify the bundle, stage it on the depot, run the playbook.

Nothing on any host changes before the bundle verified. Releases live side by side under
``<root>/releases/<release>``; ``<root>/current`` points at the last release that installed
completely. Every run keeps its ansible-runner private data dir under ``<root>/runs/``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import Manifest
from appliance.bundle.verify import VerifiedBundle, open_bundle
from appliance.errors import InstallError, PlaybookFailedError
from appliance.install.checks import check_can_install
from appliance.install.hosts_record import forget_played, played_digest, remember_played
from appliance.install.hosts_record import remember as remember_hosts
from appliance.install.inventory import Inventory, load_inventory, single_box
from appliance.install.platform_vars import platform_vars
from appliance.install.play_vars import plan_topology, play_extravars
from appliance.install.release_state import (
    current_release,
    record_failed,
    record_installed,
    record_staged,
)
from appliance.install.releases import check_order, manifest_sha256
from appliance.install.remote import depot_from_inventory, point_current_remote, stage_remote
from appliance.install.sizing import gpu_sizing
from appliance.install.stage import ansible_content, stage
from appliance.progress import NullProgress, Progress
from appliance.runner import RunResult, TaskEvent, run_playbook
from appliance.site.models import SitePaths
from appliance.site.models import for_install as site_models_for_install


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
    # GPU nodes: reboot them when the driver needs it (never the controller); replace another
    # installed driver version instead of refusing with a plan.
    allow_reboot: bool = False
    replace_driver: bool = False
    # Install a release older than the current one (release order: install/releases.py).
    allow_downgrade: bool = False
    # Site models (appliance models add): outside the release directories, kept by upgrades.
    site: SitePaths = field(default_factory=SitePaths)
    # False: run the play but leave ``current`` and the release record to the caller (upgrade.py
    # moves them only after verify passed).
    commit: bool = True
    # Move every installed package of the bundle's repository to the bundle's exact version,
    # downgrades included (upgrades and rollbacks; a first install keeps what the host has).
    exact_versions: bool = False
    # The roles the play runs (upgrade_scope.py: those whose inputs the upgrade's plan changes);
    # None: every role.
    run_roles: frozenset[str] | None = None


@dataclass(frozen=True)
class InstallReport:
    manifest: Manifest
    release_dir: Path
    result: RunResult
    hosts: list[str]
    # The gateway's operator API key, when this install created it on this machine: shown once.
    api_key: str | None = None
    # What release order said of this bundle: first, replay, upgrade, downgrade or unordered.
    decision: str = "first"


def install(
    options: InstallOptions,
    on_event: Callable[[TaskEvent], None],
    progress: Progress | None = None,
    on_note: Callable[[str], None] = lambda _note: None,
    *,
    before_play: Callable[[], None] = lambda: None,
    settle: bool = True,
) -> InstallReport:
    """Open the bundle (its signature first, before anything else is read or checked), then
    stage it, copying while hashing, and run the playbook; ``on_note`` hears each step.

    ``before_play`` runs after every check and the staging, just before the first host changes.
    With ``settle`` (a plain install), the run holds the depot's transition lock throughout, and
    an upgrade or rollback that a crash interrupted on this depot is settled first (its hosts
    returned to the release that ran before it: upgrade.py); upgrade.py, which holds the lock
    and settles itself, passes False.
    """
    if settle:
        # Imported here: transition.py drives install() itself, holding the lock already.
        from appliance.install.install_lock import install_lock

        with install_lock(options, on_event, progress, on_note):
            return install(options, on_event, progress, on_note, before_play=before_play,
                           settle=False)  # fmt: skip
    with open_bundle(options.bundle, options.pubkey) as bundle:
        on_note(
            f"{bundle.label}: verified {bundle.manifest.name} {bundle.manifest.release}: "
            "signature good; every file is checked while it is staged"
        )
        return _install(options, bundle, on_event, progress or NullProgress(), on_note, before_play)


def _install(
    options: InstallOptions,
    bundle: VerifiedBundle,
    on_event: Callable[[TaskEvent], None],
    progress: Progress,
    on_note: Callable[[str], None],
    before_play: Callable[[], None],
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
    manifest = bundle.manifest
    if not inventory.depot_is_local and manifest.base is not None:
        raise InstallError(
            "delta bundles install onto a depot that runs appliance install itself",
            hint="run install.sh on the depot, which holds the base release",
        )
    # Everything the play needs, checked from the signed manifest before anything is staged
    # or changed: the stack is one this release installs, the bundle holds every OS package
    # the roles install, and the inventory gives a workable topology.
    check_can_install(manifest)
    site = _site_models(options, manifest, inventory, on_note)
    topology = plan_topology(inventory, manifest, site)
    decision = check_order(bundle, options.root, inventory, allow_downgrade=options.allow_downgrade)
    on_note(decision.note)
    # Staged here by copying while hashing, whether the depot is this machine or another (a
    # remote depot then receives this verified copy).
    local_release = stage(bundle, work, progress)
    on_note(f"staged as {local_release}: every file matched the signed manifest")
    project = ansible_content(local_release, manifest)
    depot_release = local_release
    depot = None
    if not inventory.depot_is_local:
        depot = depot_from_inventory(inventory.depot, inventory.depot_vars)
        task = progress.task(f"stage to {depot.name}", manifest.total_size())
        try:
            depot_release = Path(
                stage_remote(local_release, manifest, depot, str(options.root), task.advance)
            )
        finally:
            progress.finish(task)
    extravars = play_extravars(options, manifest, depot_release, local_release, topology)
    extravars["appliance_models"] = manifest.models() + site
    platform = platform_vars(manifest, topology, inventory.gpu_nodes, site)
    if platform is not None:
        extravars["appliance_platform"] = platform
    # Each vLLM model's facts, read from the verified copy, for preflight to judge against the
    # GPUs it finds on each node.
    extravars["appliance_gpu_sizing"] = gpu_sizing(
        topology, inventory.host_vars, manifest.models(), local_release, on_note
    )
    # The depot's release record (install/release_state.py) is kept where install runs on it.
    tracked = options.root if inventory.depot_is_local else None
    if tracked is not None:
        record_staged(
            tracked,
            manifest.release,
            manifest.sequence,
            manifest_sha256(bundle),
            _pubkey_line(options.pubkey),
        )
    before_play()
    if tracked is not None:
        forget_played(tracked)
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
        failure = _failure(result)
        if tracked is not None:
            record_failed(tracked, manifest.release, failure.message)
        raise failure
    if tracked is not None:
        remember_hosts(tracked, options.inventory, options.internal_cidrs)
        remember_played(tracked, played_digest(topology, options.inventory, options.internal_cidrs))
    if options.commit and depot is not None:
        point_current_remote(depot, str(options.root), manifest.release)
    elif options.commit:
        replaced = current_release(options.root)
        point_current(options.root, local_release)
        record_installed(options.root, manifest.release, replaced)
    return InstallReport(
        manifest,
        depot_release,
        result,
        inventory.hosts,
        _take_new_key(options.root, "operator"),
        decision.kind,
    )


def _pubkey_line(pubkey: Path) -> str | None:
    try:
        return pubkey.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _site_models(
    options: InstallOptions,
    manifest: Manifest,
    inventory: Inventory,
    on_note: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The site's models, from the signed site manifest on this depot, for the roles."""
    if not inventory.depot_is_local:
        return []
    bundle_names = {m["name"]: manifest.release for m in manifest.models()}
    object_store = str(manifest.stack.get("object_store", "filesystem"))
    site = site_models_for_install(options.site, bundle_names, object_store)
    if site and not bundle_names:
        # A bundle without models carries no runtime to serve them with.
        on_note(
            f"release {manifest.release} carries no models and so no runtime: the "
            f"{len(site)} site model(s) in {options.site.site_dir} are kept, not served"
        )
        return []
    if site:
        on_note(
            f"site models: {', '.join(m['name'] for m in site)} (site manifest "
            f"{options.site.site_dir}: signature good)"
        )
    return site


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


def runner_env(project: Path) -> dict[str, str]:
    return {
        "ANSIBLE_ROLES_PATH": str(project / "roles"),
        # The bundle carries no collections (the roles use ansible.builtin only): point Ansible
        # at a directory that does not exist rather than at whatever the host has installed.
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


def point_current(root: Path, release_dir: Path) -> None:
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
