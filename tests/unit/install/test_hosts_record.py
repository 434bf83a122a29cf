"""The depot remembers the inventory of its last play, so upgrade and rollback reach its nodes."""

from __future__ import annotations

from pathlib import Path

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
