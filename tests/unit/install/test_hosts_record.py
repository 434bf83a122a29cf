"""The depot remembers the inventory of its last play, so upgrade and rollback reach its nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import InstallError
from appliance.install.hosts_record import HOSTS_FILE, hosts_for, recall, remember


def test_a_play_with_an_inventory_is_recalled_and_a_single_box_forgets_it(tmp_path: Path) -> None:
    root, inventory = tmp_path / "root", tmp_path / "lab.yml"
    root.mkdir()
    inventory.write_text("all: {}\n")
    assert recall(root) == (None, ())
    remember(root, inventory, ("198.18.53.0/24",))
    assert recall(root) == (inventory.resolve(), ("198.18.53.0/24",))
    notes: list[str] = []
    assert hosts_for(root, None, (), notes.append) == (inventory.resolve(), ("198.18.53.0/24",))
    assert notes == [
        f"hosts: the inventory {inventory.resolve()} of the last install on this depot "
        "(--inventory names another)"
    ]
    # What the operator names wins, the networks too.
    other = tmp_path / "other.yml"
    assert hosts_for(root, other, ("198.18.0.0/16",), notes.append) == (other, ("198.18.0.0/16",))
    assert hosts_for(root, None, ("198.18.0.0/16",), notes.append)[1] == ("198.18.0.0/16",)
    remember(root, None, ())
    assert not (root / HOSTS_FILE).exists()
    assert hosts_for(root, None, (), notes.append) == (None, ())


def test_a_recorded_inventory_that_is_gone_is_refused_by_name(tmp_path: Path) -> None:
    inventory = tmp_path / "lab.yml"
    inventory.write_text("all: {}\n")
    remember(tmp_path, inventory, ())
    inventory.unlink()
    with pytest.raises(InstallError) as raised:
        hosts_for(tmp_path, None, (), lambda _note: None)
    assert raised.value.message == (
        f"this depot's hosts were installed with the inventory {inventory.resolve()}, which is gone"
    )


@pytest.mark.parametrize("content", [b"", b"[]", b'{"inventory": 3}', b"\xff"])
def test_an_unreadable_record_counts_as_a_single_box(tmp_path: Path, content: bytes) -> None:
    (tmp_path / HOSTS_FILE).write_bytes(content)
    assert recall(tmp_path) == (None, ())


def test_the_last_complete_plays_hosts_are_one_digest(tmp_path: Path) -> None:
    """An upgrade runs only some roles when the hosts are as the last complete play left them:
    the same topology, inventory file and internal networks (hosts_record.played_digest)."""
    from appliance.install.hosts_record import forget_played, played, played_digest, remember_played
    from appliance.install.topology import plan

    def topology(address: str) -> Any:
        return plan(hosts=["depot", "gpu-1"], depot="depot", gpu_nodes=["gpu-1"],
                    host_vars={"depot": {"ansible_host": "198.18.10.2"},
                               "gpu-1": {"ansible_host": address}},
                    stack={}, models=[])  # fmt: skip

    root, inventory = tmp_path / "root", tmp_path / "lab.yml"
    root.mkdir()
    inventory.write_text("all: {}\n")
    assert played(root) is None
    digest = played_digest(topology("198.18.10.11"), inventory, ("198.18.10.0/24",))
    remember_played(root, digest)
    assert played(root) == digest
    assert played_digest(topology("198.18.10.11"), inventory, ("198.18.10.0/24",)) == digest
    # A node moved, the internal networks or the inventory's text changed: another digest.
    assert played_digest(topology("198.18.10.12"), inventory, ("198.18.10.0/24",)) != digest
    assert played_digest(topology("198.18.10.11"), inventory, ("198.18.0.0/16",)) != digest
    assert played_digest(topology("198.18.10.11"), None, ("198.18.10.0/24",)) != digest
    inventory.write_text("all: {vars: {gateway_workers: 4}}\n")
    assert played_digest(topology("198.18.10.11"), inventory, ("198.18.10.0/24",)) != digest
    forget_played(root)
    assert played(root) is None


def test_a_single_boxs_internal_networks_are_recalled(tmp_path: Path) -> None:
    """A single box installed with --internal-cidr: an upgrade or rollback without it plays the
    firewall with the same networks (admin access from them is not cut off)."""
    remember(tmp_path, None, ("198.18.53.0/24",))
    assert recall(tmp_path) == (None, ("198.18.53.0/24",))
    notes: list[str] = []
    assert hosts_for(tmp_path, None, (), notes.append) == (None, ("198.18.53.0/24",))
    assert notes == ["internal networks: 198.18.53.0/24, as the last install on this depot"]
    assert hosts_for(tmp_path, None, ("10.0.0.0/8",), notes.append) == (None, ("10.0.0.0/8",))
    remember(tmp_path, None, ())
    assert not (tmp_path / HOSTS_FILE).exists()
