"""Which roles an upgrade's play runs: exactly those whose inputs the plan changes."""

from __future__ import annotations

from appliance.bundle.manifest import Manifest
from appliance.install.topology import Topology, plan
from appliance.install.upgrade_plan import plan_upgrade
from appliance.install.upgrade_scope import Scope, upgrade_scope
from tests.fixtures.releases import DEBS, LLAMACPP, release

LAB = {"depot": "198.18.10.2", "gpu-1": "198.18.10.11"}


def box(manifest: Manifest, hosts: tuple[str, ...] = ("localhost",)) -> Topology:
    host_vars = {h: {"ansible_host": LAB[h]} for h in hosts if h in LAB}
    host_vars.setdefault("localhost", {"ansible_connection": "local"})
    return plan(
        hosts=list(hosts),
        depot=hosts[0],
        gpu_nodes=list(hosts[1:] or hosts),
        host_vars=host_vars,
        stack=manifest.stack,
        models=manifest.models(),
    )


def scope(
    old: Manifest | None, new: Manifest, hosts: tuple[str, ...] = ("localhost",), **kwargs: object
) -> Scope:
    old_topology = None if old is None else box(old, hosts)
    new_topology = box(new, hosts)
    planned = plan_upgrade(old, new, new_topology, old_topology, **kwargs)  # type: ignore[arg-type]
    return upgrade_scope(planned, old, new, old_topology, new_topology)


def test_nothing_changed_runs_no_role() -> None:
    found = scope(release("v1", 1), release("v2", 2))
    assert found.roles == frozenset()
    assert found.why == ()
    assert found.note().startswith("the play runs no role")


def test_nothing_changed_with_other_hosts_still_serves_the_new_release() -> None:
    found = scope(release("v1", 1), release("v2", 2), hosts=("depot", "gpu-1"))
    # The depot's repository server serves the new release's directory alone, under
    # /releases/v2/: the other hosts' package source must move there too (local_repo on them),
    # or they keep reading /releases/v1/, which nothing serves any more.
    assert found.roles == frozenset({"repo_server", "local_repo", "preflight"})
    assert found.note().startswith("the play runs only local_repo, preflight: ")
    assert "the other hosts' package source moves to the new release" in found.note()


def test_a_package_change_runs_local_repo_and_the_roles_that_install_packages() -> None:
    new = release("v2", 2, debs={**DEBS, "jq": "1.6-2.1+deb12u1"})
    found = scope(release("v1", 1), new)
    # firewall (nftables) and runtime_llamacpp (libgomp1) declare packages; the gateway none.
    assert found.roles == frozenset({"preflight", "local_repo", "firewall", "runtime_llamacpp"})
    assert found.why == ("OS packages change",)


def test_a_model_change_runs_the_runtime_and_gateway_roles_only() -> None:
    new = release("v2", 2, models={"alpha": "a1", "beta": "b1", "gamma": "g1"})
    found = scope(release("v1", 1), new)
    assert found.roles == frozenset({"preflight", "runtime_llamacpp", "gateway"})
    assert found.why[0] == "models change: gamma"
    removed = scope(release("v1", 1), release("v2", 2, models={"alpha": "a1"}))
    assert removed.roles == found.roles


def test_a_runtime_wheel_set_runs_its_runtime_and_the_installer_set_the_gateway() -> None:
    old = release("v1", 1)
    runtime = scope(old, release("v2", 2, wheels={"installer": "i1", "llamacpp": "l2"}))
    assert runtime.roles == frozenset({"preflight", "runtime_llamacpp"})
    gateway = scope(old, release("v2", 2, wheels={"installer": "i2", "llamacpp": "l1"}))
    # The gateway routes to what the runtimes publish: they run with it.
    assert gateway.roles == frozenset({"preflight", "runtime_llamacpp", "gateway"})


def test_site_models_are_served_again_by_every_upgrade() -> None:
    found = scope(release("v1", 1), release("v2", 2), site_models=["tiny-site"])
    assert found.roles == frozenset({"preflight", "runtime_llamacpp", "gateway"})


def test_what_no_role_is_tied_to_runs_the_whole_play() -> None:
    old = release("v1", 1)
    assert scope(None, old).roles is None
    assert scope(old, release("v2", 2, ansible="roles-2")).roles is None
    other = release("v2", 2).model_copy(update={"stack": {**LLAMACPP, "runtime_threads": "4"}})
    stack = scope(old, other)
    assert stack.roles is None and "stack settings change" in stack.why[0]
    unknown = release("v2", 2, wheels={"installer": "i1", "llamacpp": "l1", "x": "1"})
    assert scope(old, unknown).roles is None
    kernel = release("v2", 2, debs={**DEBS, "linux-image-6.1.0-57-amd64": "6.1.159-1"})
    assert scope(old, kernel).roles is None
    # Another set of hosts: the old topology plans one host, the new one two.
    one, two = box(old), box(release("v2", 2), ("depot", "gpu-1"))
    planned = plan_upgrade(old, release("v2", 2), two, one)
    assert upgrade_scope(planned, old, release("v2", 2), one, two).roles is None


def test_hosts_changed_since_the_last_play_run_the_whole_play() -> None:
    """The old topology is planned on today's inventory: an inventory edited since the last
    play (a node's address, its variables) or other internal networks look like no change to
    the plan, so the installer says whether the hosts are those of the last complete play."""
    old, new = release("v1", 1), release("v2", 2)
    one, two = box(old, ("depot", "gpu-1")), box(new, ("depot", "gpu-1"))
    planned = plan_upgrade(old, new, two, one)
    found = upgrade_scope(planned, old, new, one, two, hosts_as_played=False)
    assert found.roles is None
    assert "the inventory or the internal networks changed since the last play" in found.why[0]
    assert upgrade_scope(planned, old, new, one, two).roles is not None
