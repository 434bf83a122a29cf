"""Inventories for install and verify: read with Ansible's own parser, checked before use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import InventoryError

KNOWN_GROUPS = frozenset({"all", "ungrouped", "depot", "gpu_nodes"})

SINGLE_BOX = """\
# Single box: this machine is the depot and the GPU node (written by appliance install).
all:
  children:
    depot:
      hosts:
        localhost:
          ansible_connection: local
          ansible_python_interpreter: "{python}"
    gpu_nodes:
      hosts:
        localhost:
"""


@dataclass(frozen=True)
class Inventory:
    path: Path
    depot: str
    hosts: list[str]
    depot_is_local: bool
    local_hosts: frozenset[str]
    depot_vars: dict[str, Any]
    gpu_nodes: tuple[str, ...] = ()
    # Each host's variables as Ansible will see them from the inventory (its groups', group_vars/
    # and host_vars/ files', its own), for the topology.
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)


def single_box(path: Path, python: str) -> Path:
    path.write_text(SINGLE_BOX.format(python=python))
    return path


def load_inventory(path: Path) -> Inventory:
    # Imported here: parsing an inventory needs ansible-core, the CLI's start-up does not.
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    if not path.is_file():
        raise InventoryError(
            f"inventory {path} does not exist",
            hint="pass --inventory FILE, or leave it out to install onto this machine",
        )
    loader = DataLoader()
    try:
        manager = InventoryManager(loader=loader, sources=[str(path)])
    except AnsibleError as exc:
        raise InventoryError(f"inventory {path} cannot be read: {exc}") from exc
    groups = manager.groups
    if not manager.hosts:
        raise InventoryError(
            f"inventory {path} names no hosts",
            hint="see inventories/lab/hosts.yml for the expected shape",
        )
    unknown = sorted(set(groups) - KNOWN_GROUPS)
    if unknown:
        raise InventoryError(
            f"inventory {path}: unknown group{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}",
            hint="the appliance knows the groups depot (one host that receives the bundle) and "
            "gpu_nodes; put every host in one of them",
        )
    depots = [host.name for host in groups["depot"].get_hosts()] if "depot" in groups else []
    if len(depots) != 1:
        raise InventoryError(
            f"inventory {path}: the depot group must hold exactly one host, it holds {len(depots)}",
            hint="name the host that receives the bundle under depot",
        )
    local = frozenset(
        host.name
        for host in manager.hosts.values()
        if host.get_vars().get("ansible_connection") == "local"
        or host.name in {"localhost", "127.0.0.1"}
    )
    hosts = sorted(host.name for host in manager.hosts.values())
    variables = VariableManager(loader=loader, inventory=manager)
    host_vars = {
        name: variables.get_vars(host=manager.get_host(name), include_hostvars=False)
        for name in hosts
    }
    gpu_nodes = (
        tuple(sorted(host.name for host in groups["gpu_nodes"].get_hosts()))
        if "gpu_nodes" in groups
        else ()
    )
    return Inventory(
        path,
        depots[0],
        hosts,
        depots[0] in local,
        local,
        dict(manager.get_host(depots[0]).get_vars()),
        gpu_nodes,
        host_vars,
    )
