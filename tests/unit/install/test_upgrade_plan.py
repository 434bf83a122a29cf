"""The upgrade plan from two signed manifests and their topologies: exactly what changes."""

from __future__ import annotations

import json
from typing import Any

from appliance.bundle.manifest import Manifest, NvidiaDriver, NvidiaInfo
from appliance.install.topology import Topology, plan
from appliance.install.upgrade_plan import UpgradePlan, plan_upgrade
from tests.fixtures.releases import DEBS, LLAMACPP, release


def box(manifest: Manifest | None) -> Topology | None:
    if manifest is None:
        return None
    return plan(
        hosts=["localhost"],
        depot="localhost",
        gpu_nodes=["localhost"],
        host_vars={"localhost": {"ansible_connection": "local"}},
        stack=manifest.stack,
        models=manifest.models(),
    )


def upgrade(old: Manifest | None, new: Manifest, **kwargs: Any) -> UpgradePlan:
    topology = box(new)
    assert topology is not None
    return plan_upgrade(old, new, topology, box(old), **kwargs)


def test_a_package_version_and_two_models_are_all_that_change() -> None:
    old = release("v1", 1)
    new = release("v2", 2, debs={**DEBS, "jq": "1.6-2.1+deb12u1"},
                  models={"alpha": "a1", "gamma": "g1"})  # fmt: skip
    found = upgrade(old, new, site_models=["tiny-site"]).to_json()
    assert found["from"] == {"release": "v1", "sequence": 1}
    assert found["to"] == {"release": "v2", "sequence": 2}
    assert found["packages"] == {
        "added": [],
        "removed": [],
        "upgraded": [{"name": "jq", "arch": "amd64", "from": "1.6-2.1", "to": "1.6-2.1+deb12u1"}],
        "downgraded": [],
    }
    gamma, beta = _digest(new, "gamma"), _digest(old, "beta")
    assert found["models"] == {
        "added": [{"name": "gamma", "from": None, "to": gamma}],
        "removed": [{"name": "beta", "from": beta, "to": None}],
        "changed": [],
    }
    assert found["runtime"] == {"wheel_sets": [], "files": [], "stack": {}, "nvidia_driver": None}
    assert found["ansible_content_changed"] is False
    # alpha keeps its unit; the gateway's routes change; the firewall (loopback only) does not.
    assert found["hosts"] == [
        {
            "host": "localhost",
            "start": ["appliance-llamacpp@gamma.service"],
            "restart": ["appliance-gateway.service"],
            "stop": ["appliance-llamacpp@beta.service"],
            "reboot": [],
        }
    ]
    assert found["reboot"] is False and found["data_migrations"] == []
    assert found["site_models"] == ["tiny-site"]
    assert json.loads(json.dumps(found)) == found


def test_the_same_content_again_changes_nothing() -> None:
    planned = upgrade(release("v1", 1), release("v2", 2))
    assert planned.changes_nothing()
    assert planned.hosts[0].restart == ()


def test_packages_added_removed_and_downgraded_in_debian_order() -> None:
    old = release("v1", 1, debs={"jq": "1.7", "zstd": "1.5.4+dfsg2-5", "a": "2.0~rc1"})
    new = release("v2", 2, debs={"jq": "1.7~rc2", "a": "2.0", "nginx-light": "1.22.1-9"})
    planned = upgrade(old, new)
    assert [(c.name, c.old, c.new) for c in planned.packages_added] == [
        ("nginx-light", None, "1.22.1-9")
    ]
    assert [(c.name, c.old, c.new) for c in planned.packages_removed] == [
        ("zstd", "1.5.4+dfsg2-5", None)
    ]
    # 2.0~rc1 is before 2.0 and 1.7~rc2 before 1.7: a string comparison gets both wrong.
    assert [c.name for c in planned.packages_upgraded] == ["a"]
    assert [c.name for c in planned.packages_downgraded] == ["jq"]


def test_a_changed_model_and_runtime_wheels_restart_its_units() -> None:
    old = release("v1", 1)
    planned = upgrade(old, release("v2", 2, models={"alpha": "a2", "beta": "b1"}))
    assert [(m.name, m.old, m.new) for m in planned.models_changed] == [
        ("alpha", _digest(old, "alpha"), _digest(release("x", 1, models={"alpha": "a2"}), "alpha"))
    ]
    assert planned.hosts[0].restart == (
        "appliance-gateway.service", "appliance-llamacpp@alpha.service",
    )  # fmt: skip
    wheels = upgrade(old, release("v2", 2, wheels={"installer": "i1", "llamacpp": "l2"}))
    assert wheels.wheel_sets_changed == ("llamacpp",)
    assert wheels.hosts[0].restart == (
        "appliance-llamacpp@alpha.service", "appliance-llamacpp@beta.service",
    )  # fmt: skip
    gateway = upgrade(old, release("v2", 2, wheels={"installer": "i2", "llamacpp": "l1"}))
    assert gateway.hosts[0].restart == ("appliance-gateway.service",)
    roles = upgrade(old, release("v2", 2, ansible="roles-2"))
    assert roles.ansible_content_changed and not roles.changes_nothing()


def test_a_kernel_or_driver_change_needs_a_reboot() -> None:
    old = release("v1", 1, debs={**DEBS, "linux-image-6.1.0-57-amd64": "6.1.158-1"})
    new = release("v2", 2, debs={**DEBS, "linux-image-6.1.0-57-amd64": "6.1.159-1"})
    planned = upgrade(old, new)
    assert planned.reboot
    assert planned.hosts[0].reboot == ("kernel linux-image-6.1.0-57-amd64 6.1.159-1",)
    driver_old, driver_new = _with_driver(old, "535.261.03"), _with_driver(old, "535.309.01")
    topology = plan(
        hosts=["depot", "gpu-1"], depot="depot", gpu_nodes=["gpu-1"],
        host_vars={"depot": {"ansible_host": "198.18.10.2"},
                   "gpu-1": {"ansible_host": "198.18.10.11"}},
        stack=LLAMACPP, models=old.models(), nvidia={"container_toolkit": False},
    )  # fmt: skip
    driven = plan_upgrade(driver_old, driver_new, topology, topology)
    assert [(h.host, h.reboot) for h in driven.hosts] == [
        ("depot", ()),
        ("gpu-1", ("NVIDIA driver 535.261.03 (proprietary, debian) -> 535.309.01 (proprietary, "
                   "debian)",)),
    ]  # fmt: skip


def test_a_first_install_starts_everything() -> None:
    planned = upgrade(None, release("v1", 1)).to_json()
    assert planned["from"] == {"release": None, "sequence": None}
    assert len(planned["packages"]["added"]) == len(DEBS)
    assert planned["hosts"][0]["start"] == [
        "appliance-firewall.service",
        "appliance-gateway.service",
        "appliance-llamacpp@alpha.service",
        "appliance-llamacpp@beta.service",
    ]


def _digest(manifest: Manifest, model: str) -> str:
    return str(next(m["digest"] for m in manifest.models() if m["name"] == model))


def _with_driver(manifest: Manifest, version: str) -> Manifest:
    driver = NvidiaDriver(
        source="debian", version=version, branch="535", modules="proprietary",
        dkms_package="nvidia-kernel-dkms", packages={"nvidia-kernel-dkms": f"{version}-1"},
    )  # fmt: skip
    info = NvidiaInfo(driver=driver, kernel_abis=[], install=["nvidia-kernel-dkms"])
    return manifest.model_copy(update={"nvidia": info})
