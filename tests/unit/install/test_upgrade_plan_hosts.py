"""The upgrade plan on a depot and GPU nodes: each host's share of the package changes (the spec's
packages on every host, each role's own where the role runs) and of the service changes."""

from __future__ import annotations

from typing import Any

from appliance.bundle.manifest import Manifest
from appliance.install.topology import Topology, plan
from appliance.install.upgrade_plan import plan_upgrade
from tests.fixtures.releases import DEBS, LLAMACPP, release

HOSTS = {"depot": "198.18.10.2", "gpu-1": "198.18.10.11", "gpu-2": "198.18.10.12"}
# As build-bundle records them ({role: [package]}).
ROLE_PACKAGES = {
    "firewall": ["nftables"],
    "gateway": ["openssl"],
    "local_repo": ["python3-apt", "nginx-light"],
    "runtime_llamacpp": ["libgomp1"],
    "site_ca": ["openssl"],
}


def lab(manifest: Manifest, serves: dict[str, list[str]]) -> Topology:
    return plan(
        hosts=list(HOSTS), depot="depot", gpu_nodes=list(serves),
        host_vars={h: {"ansible_host": a, "runtime_llamacpp_models": serves.get(h, [])}
                   for h, a in HOSTS.items()},
        stack=LLAMACPP, models=manifest.models(),
    )  # fmt: skip


def versions(**changed: str) -> Manifest:
    return release("v", 1, debs={**DEBS, **changed}, packages=["jq=1.6-2.1"],
                   role_packages=ROLE_PACKAGES)  # fmt: skip


def test_each_host_lists_the_changes_of_the_packages_it_installs() -> None:
    serves = {"gpu-1": ["alpha"], "gpu-2": ["beta"]}
    old = versions()
    new = versions(**{"jq": "1.7", "nginx-light": "1.22.1-10", "libgomp1": "12.2.0-15",
                      "openssl": "3.0.18-1~deb12u1"})  # fmt: skip
    new = new.model_copy(update={"release": "v2", "sequence": 2})
    found = plan_upgrade(old, new, lab(new, serves), lab(old, serves)).to_json()

    def moved(*names: str) -> dict[str, list[dict[str, Any]]]:
        upgraded = [c for c in found["packages"]["upgraded"] if c["name"] in names]
        assert len(upgraded) == len(names)
        return {"added": [], "removed": [], "upgraded": upgraded, "downgraded": []}

    # jq (the spec's) everywhere; nginx-light on the depot, which serves the repository, and
    # openssl, which the gateway's site CA needs; libgomp1 where llama.cpp runs.
    assert found["host_packages"] == {
        "depot": moved("jq", "nginx-light", "openssl"),
        "gpu-1": moved("jq", "libgomp1"),
        "gpu-2": moved("jq", "libgomp1"),
    }
    assert [(h["host"], h["restart"]) for h in found["hosts"]] == [
        ("depot", []),
        ("gpu-1", []),
        ("gpu-2", []),
    ]


def test_a_model_moved_between_nodes_starts_on_one_and_stops_on_the_other() -> None:
    manifest = versions()
    before = lab(manifest, {"gpu-1": ["alpha"], "gpu-2": ["beta"]})
    after = lab(manifest, {"gpu-1": ["alpha", "beta"]})
    found = plan_upgrade(manifest, manifest, after, before).to_json()
    hosts = {h["host"]: h for h in found["hosts"]}
    assert hosts["gpu-1"]["start"] == ["appliance-llamacpp@beta.service"]
    assert hosts["gpu-2"]["stop"] == ["appliance-llamacpp@beta.service"]
    assert hosts["depot"]["restart"] == ["appliance-gateway.service"]  # beta's route moved
    # No package changes anywhere; gpu-2 no longer runs llama.cpp but kept what it installed.
    assert all(not any(kinds.values()) for kinds in found["host_packages"].values())
