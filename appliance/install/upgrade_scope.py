"""What an upgrade's play runs: the roles whose inputs the plan says changed, and no others.

A first install runs every role. An upgrade already knows, from its plan (upgrade_plan.py), which
packages, models, wheel sets and services change on which host, so it runs only the roles that
own those: a package change runs local_repo and every role that installs packages; a model change
the runtime roles, the gateway (its routes) and the object store (it publishes them); a changed
wheel set the role that builds a venv from it; a service the plan starts, restarts or stops, the
role that owns it. The gateway reads the runtimes' ``appliance_backends`` facts, so the runtime
roles run whenever it does. Whatever this module cannot tie to a role (new Ansible content, a
stack setting, a spec file, a container image, the NVIDIA driver, a reboot, another set of hosts
or roles, an inventory or internal networks other than the last complete play's) runs the whole
play, as a first install does: a role that is skipped must be one whose every input is the same.

Two steps run on every upgrade whatever the plan says, because the new release lives in a new
directory: the depot's package source moves to the new release's repository (the play's depot
``local_repo`` play, always run) and, with other hosts, the depot's repository server serves it
(``repo_server``) under ``/releases/<release>/`` and no longer the old release's, so the other
hosts' package source moves to that URL too (``local_repo`` on them, which also lays out their
package list for a later rollback). Without them apt on a host would read an old release's
repository that a later ``releases prune`` removes (or, on a node, one nothing serves any more).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.bundle.manifest import Manifest
from appliance.install.topology import Topology
from appliance.install.upgrade_plan import FIREWALL_UNIT, GATEWAY_UNIT, STORE_UNIT, UpgradePlan
from appliance.roles import role_packages

# Run on every upgrade (see the docstring); only where the topology plans them.
ALWAYS = ("repo_server",)
# The wheel sets a role builds a venv from ("installer": the gateway's venv).
_WHEEL_SET_ROLE = {"installer": "gateway", "llamacpp": "runtime_llamacpp", "vllm": "runtime_vllm"}
_UNIT_ROLE = {
    FIREWALL_UNIT: "firewall",
    GATEWAY_UNIT: "gateway",
    STORE_UNIT: "object_store",
    "appliance-llamacpp@": "runtime_llamacpp",
    "appliance-vllm@": "runtime_vllm",
    "appliance-ollama.service": "runtime_ollama",
}


@dataclass(frozen=True)
class Scope:
    """``roles``: the roles the play runs (None: every role, as a first install); ``why``: one
    line per reason, for the operator's notes."""

    roles: frozenset[str] | None
    why: tuple[str, ...]

    def note(self) -> str:
        if self.roles is None:
            return "the play runs every role: " + "; ".join(self.why)
        ran = sorted(self.roles - set(ALWAYS))
        if not ran:
            return (
                "the play runs no role: nothing they install changes (the package source moves "
                "to the new release)"
            )
        return f"the play runs only {', '.join(ran)}: " + "; ".join(self.why)


def upgrade_scope(
    plan: UpgradePlan,
    current: Manifest | None,
    new: Manifest,
    old_topology: Topology | None,
    new_topology: Topology,
    hosts_as_played: bool = True,
) -> Scope:
    """The roles moving from ``current`` to ``new`` must run, from the ``plan`` between them.
    ``hosts_as_played``: the inventory and internal networks are those of the last complete
    play (hosts_record.played_digest); ``old_topology`` is planned on today's inventory, so
    without that no edit to it since shows in the plan."""
    whole = _whole_play(plan, current, new, old_topology, new_topology)
    if not whole and not hosts_as_played:
        whole = [
            "the inventory or the internal networks changed since the last play (or it left no "
            "record of them)"
        ]
    if whole:
        return Scope(None, tuple(whole))
    planned = {role for host in new_topology.hosts.values() for role in host.roles}
    # Under k3s its role runs the models' workloads and publishes them to the gateway.
    runtimes = {role for role in planned if role.startswith("runtime_") or role == "k3s"}
    roles: set[str] = set()
    why: list[str] = []
    assert current is not None  # _whole_play runs everything for a first install
    if _packages_change(plan, current, new):
        roles |= {"local_repo"} | {role for role in planned if role_packages(role)}
        why.append("OS packages change")
    models = [*plan.models_added, *plan.models_removed, *plan.models_changed]
    if models:
        roles |= runtimes | {"gateway", "object_store"}
        why.append("models change: " + ", ".join(sorted(m.name for m in models)))
    if plan.site_models:
        # Which site models the running release serves is not recorded (each install serves
        # those of the site manifest at that time): lay them out and route them again.
        roles |= runtimes | {"gateway", "object_store"}
        why.append("site models are served again: " + ", ".join(plan.site_models))
    for wheel_set in plan.wheel_sets_changed:
        roles.add(_WHEEL_SET_ROLE[wheel_set])
        why.append(f"wheel set {wheel_set} changes")
    for host in plan.hosts:
        for unit in (*host.start, *host.restart, *host.stop):
            role = next((r for prefix, r in _UNIT_ROLE.items() if unit.startswith(prefix)), None)
            if role is None:
                return Scope(None, (f"{host.host} changes {unit}",))
            if role not in roles:
                why.append(f"{host.host} changes {unit}")
            roles.add(role)
    if "repo_server" in planned and "local_repo" not in roles:
        # The depot serves the new release alone, under /releases/<release>/ (repo_server): the
        # other hosts' source still names the old release's URL, which nothing serves any more.
        roles.add("local_repo")
        why.append("the other hosts' package source moves to the new release")
    if "gateway" in roles:
        roles |= runtimes  # the gateway routes to what they publish (appliance_backends)
    if roles & runtimes:
        roles.add("gpu_facts")  # what vLLM sizes itself with, on GPU nodes
    if roles:
        roles.add("preflight")  # checks every host before anything changes
    return Scope(frozenset((roles | set(ALWAYS)) & planned), tuple(why))


def _whole_play(
    plan: UpgradePlan,
    current: Manifest | None,
    new: Manifest,
    old: Topology | None,
    topology: Topology,
) -> list[str]:
    """Why the whole play must run; empty when every change is one a role is tied to."""
    if current is None or old is None:
        return ["nothing ran before (or the running release no longer plans on this inventory)"]
    why = []
    if plan.ansible_content_changed:
        why.append("the roles themselves change")
    if plan.stack_changed:
        why.append("stack settings change: " + ", ".join(sorted(plan.stack_changed)))
    if plan.files_changed:
        why.append("spec files change: " + ", ".join(plan.files_changed))
    if plan.nvidia_driver is not None or plan.reboot:
        why.append("the NVIDIA driver or the kernel changes")
    unknown = sorted(set(plan.wheel_sets_changed) - _WHEEL_SET_ROLE.keys())
    if unknown:
        why.append("wheel sets change: " + ", ".join(unknown))
    if _images(current) != _images(new):
        why.append("container images change")
    if _shape(old) != _shape(topology):
        why.append("the hosts, their roles or the shared services change")
    return why


def _packages_change(plan: UpgradePlan, current: Manifest, new: Manifest) -> bool:
    moved = (
        plan.packages_added
        or plan.packages_removed
        or plan.packages_upgraded
        or plan.packages_downgraded
    )
    return bool(moved) or (current.packages, current.role_packages) != (
        new.packages,
        new.role_packages,
    )


def _images(manifest: Manifest) -> set[tuple[str, str, str]]:
    return {
        (e.component, e.path, e.sha256)
        for e in manifest.files
        if e.kind in {"image", "image-index"}
    }


def _shape(topology: Topology) -> tuple[object, ...]:
    """What the plan's per-unit view does not cover: which hosts run which roles, and where the
    shared services are."""
    hosts = tuple(sorted((name, host.roles, host.depot) for name, host in topology.hosts.items()))
    return (
        hosts,
        topology.depot,
        topology.repo_url,
        topology.gateway_host,
        topology.gateway_url,
        topology.object_store,
        topology.registry,
    )


# The verify role's evidence (by tag) that reads what only these roles change.
_EVIDENCE = {
    "verify_models": ("runtime_llamacpp", "runtime_vllm", "runtime_ollama", "k3s"),
    "verify_store": ("object_store",),
    "verify_registry": ("registry", "harbor"),
    "verify_engines": ("container_engines",),
    "verify_gpu": (
        "gpu_facts",
        "nvidia_driver",
        "nvidia_container_toolkit",
        "runtime_llamacpp",
        "runtime_vllm",
        "runtime_ollama",
    ),
}


def verify_skips(roles: frozenset[str] | None) -> tuple[str, ...]:
    """The verify evidence an upgrade that ran only ``roles`` need not gather again: rereading
    every model file, store object and registry image the play did not touch (the costly part
    of a verify on a real appliance: gigabytes hashed). What the commit still proves, always:
    egress denied from each host and each runtime process, the firewall loaded and persistent,
    the bundle's repository the only package source, every runtime healthy, one audited
    completion through the gateway with its record found, and the audit log's hash chain."""
    if roles is None:
        return ()
    return tuple(tag for tag, owners in _EVIDENCE.items() if not roles & set(owners))
