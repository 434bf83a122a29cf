"""Inventories read with Ansible's own parser: groups, and each host's variables merged the way
the play will see them (group vars, group_vars/ files, host vars)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import InventoryError
from appliance.install.inventory import load_inventory

LAB = """\
all:
  vars:
    ansible_user: root
  children:
    depot:
      hosts:
        depot-1: {ansible_connection: local, ansible_host: 198.18.10.2}
    gpu_nodes:
      vars:
        runtime_llamacpp_port_base: 9000
      hosts:
        gpu-1: {ansible_host: 198.18.10.11}
        gpu-2: {ansible_host: 198.18.10.12, runtime_llamacpp_port_base: 8091}
"""


def test_host_vars_merge_groups_files_and_hosts(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text(LAB)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "gpu_nodes.yml").write_text("runtime_llamacpp_models: [tiny]\n")
    inventory = load_inventory(tmp_path / "hosts.yml")
    assert inventory.depot == "depot-1"
    assert inventory.depot_is_local
    assert inventory.gpu_nodes == ("gpu-1", "gpu-2")
    one, two = inventory.host_vars["gpu-1"], inventory.host_vars["gpu-2"]
    assert (one["runtime_llamacpp_port_base"], two["runtime_llamacpp_port_base"]) == (9000, 8091)
    assert one["runtime_llamacpp_models"] == ["tiny"]  # from group_vars/gpu_nodes.yml
    assert one["ansible_user"] == "root"
    assert "runtime_llamacpp_port_base" not in inventory.host_vars["depot-1"]


def test_two_depots_are_refused(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    depot:\n      hosts:\n        a: {}\n        b: {}\n"
    )
    with pytest.raises(InventoryError, match="the depot group must hold exactly one host"):
        load_inventory(tmp_path / "hosts.yml")
