"""``appliance upgrade --plan-only`` as an operator runs it on a depot: the running release's
signed manifest against a new signed bundle, the plan shown, nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle import layout
from appliance.bundle.signing import keygen
from appliance.install.hosts_record import remember
from tests.fixtures.bundles import sign_bundle
from tests.fixtures.cli import run_cli
from tests.fixtures.hosts import lab_inventory
from tests.fixtures.releases import DEBS, release


@pytest.fixture
def depot(tmp_path: Path) -> Path:
    """A depot root running v1, a signed v2 bundle beside it, and the publisher's keys."""
    keygen(tmp_path / "key", "upgrade test")
    root = tmp_path / "root"
    (root / "releases" / "v1").mkdir(parents=True)
    v1 = release("v1", 1)
    (root / "releases" / "v1" / layout.MANIFEST).write_bytes(v1.canonical())
    (root / "current").symlink_to("releases/v1")
    bundle = tmp_path / "v2"
    bundle.mkdir()
    v2 = release("v2", 2, debs={**DEBS, "jq": "1.7.1-3"}, models={"alpha": "a1", "gamma": "g"})
    sign_bundle(bundle, v2, tmp_path / "key")
    return tmp_path


def _upgrade(capsys: pytest.CaptureFixture[str], tmp: Path, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "upgrade", "--bundle", str(tmp / "v2"), "--pubkey",
                   str(tmp / "key.pub"), "--root", str(tmp / "root"), *args)  # fmt: skip


def test_plan_only_shows_the_plan_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], depot: Path
) -> None:
    before = sorted(str(p) for p in (depot / "root").rglob("*"))
    code, out, err = _upgrade(capsys, depot, "--plan-only", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["ok"] and document["decision"] == "upgrade"
    plan = document["plan"]
    assert plan["schema"] == 1
    assert plan["packages"]["upgraded"] == [
        {"name": "jq", "arch": "amd64", "from": "1.6-2.1", "to": "1.7.1-3"}
    ]
    assert [m["name"] for m in plan["models"]["added"]] == ["gamma"]
    assert [m["name"] for m in plan["models"]["removed"]] == ["beta"]
    assert plan["hosts"][0]["stop"] == ["appliance-llamacpp@beta.service"]
    assert sorted(str(p) for p in (depot / "root").rglob("*")) == before

    code, out, _ = _upgrade(capsys, depot, "--plan-only")
    assert code == 0
    lines = out.splitlines()
    assert "upgrade from v1 (sequence 1) to v2 (sequence 2)" in lines
    assert "Upgrade plan: t v1 (sequence 1) -> v2 (sequence 2)" in lines
    assert any("package upgraded" in line and "1.7.1-3" in line for line in lines)
    assert any("model removed" in line and "beta" in line for line in lines)
    assert lines[-3:] == [
        "reboot needed: no",
        "data migrations: none",
        "site models (data, untouched): none",
    ]


def test_refusals_change_nothing(capsys: pytest.CaptureFixture[str], depot: Path) -> None:
    code, _, err = _upgrade(capsys, depot, "--yes")
    assert code == 2 and "--egress-target is required to apply" in err
    # An older release than the running one: refused with install's own words.
    (depot / "root" / "current").unlink()
    (depot / "root" / "releases" / "v3").mkdir()
    (depot / "root" / "releases" / "v3" / layout.MANIFEST).write_bytes(release("v3", 3).canonical())
    (depot / "root" / "current").symlink_to("releases/v3")
    code, _, err = _upgrade(capsys, depot, "--plan-only")
    assert code == 36
    assert "release v2 (sequence 2) is older than the installed release v3 (sequence 3)" in err
    # A bundle signed by someone else is refused before anything is read.
    keygen(depot / "other", "someone else")
    bundle, other, root = str(depot / "v2"), str(depot / "other.pub"), str(depot / "root")
    code, _, err = run_cli(
        capsys, "upgrade", "--bundle", bundle, "--pubkey", other, "--root", root, "--plan-only"
    )
    assert code == 10, err


def test_nothing_installed_is_not_an_upgrade(
    capsys: pytest.CaptureFixture[str], depot: Path
) -> None:
    (depot / "root" / "current").unlink()
    code, out, _ = _upgrade(capsys, depot, "--plan-only", "--json")
    assert code == 0 and json.loads(out)["decision"] == "first"
    code, _, err = _upgrade(capsys, depot, "--yes", "--egress-target", "http://198.19.255.10/")
    assert code != 0
    assert "nothing is installed under" in err and "there is nothing to upgrade" in err


def test_a_depot_and_node_plan_per_host_with_the_inventory_of_the_last_install(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keygen(tmp_path / "key", "upgrade test")
    root = tmp_path / "root"
    (root / "releases" / "v1").mkdir(parents=True)
    fields = {"packages": ["jq"], "role_packages": {"runtime_llamacpp": ["libgomp1"]}}
    v1 = release("v1", 1, **fields)
    (root / "releases" / "v1" / layout.MANIFEST).write_bytes(v1.canonical())
    (root / "current").symlink_to("releases/v1")
    debs = {**DEBS, "jq": "1.7.1-3", "libgomp1": "12.2.0-15"}
    (tmp_path / "v2").mkdir()
    sign_bundle(tmp_path / "v2", release("v2", 2, debs=debs, **fields), tmp_path / "key")
    inventory = tmp_path / "lab.yml"
    inventory.write_text(lab_inventory("198.18.53.10", {"gpu-1": "198.18.53.11"}))
    remember(root, inventory, ("198.18.53.0/24",))

    code, out, err = _upgrade(capsys, tmp_path, "--plan-only", "--json")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    jq = {"name": "jq", "arch": "amd64", "from": "1.6-2.1", "to": "1.7.1-3"}
    libgomp = {"name": "libgomp1", "arch": "amd64", "from": "12.2.0-14", "to": "12.2.0-15"}
    assert {h: kinds["upgraded"] for h, kinds in plan["host_packages"].items()} == {
        "depot-1": [jq],
        "gpu-1": [jq, libgomp],
    }
    assert [(h["host"], h["restart"]) for h in plan["hosts"]] == [
        ("depot-1", []),
        ("gpu-1", []),
    ]
    code, out, err = _upgrade(capsys, tmp_path, "--plan-only")
    assert code == 0
    assert out.startswith(f"hosts: the inventory {inventory} of the last install on this depot")
    rows = [line for line in out.splitlines() if "1.7.1-3" in line and "->" in line]
    assert [row.split()[1] for row in rows] == ["depot-1", "gpu-1"], out
    assert any(
        row.split()[-4:] == ["12.2.0-14", "->", "12.2.0-15", "│"] for row in out.splitlines()
    )
