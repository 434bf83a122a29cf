"""The upgrade plan: what moving from the current release to a new one changes, worked out from
the two signed manifests and the two topologies before anything changes.

Packages are the bundle repositories' packages (what the hosts install comes from there), ordered
by Debian's rules (``debversion``); models are compared by digest; the runtime and the gateway by
the wheel sets, files and stack settings they are built from; the services each host restarts
follow from the topologies (which host runs which runtime unit, the gateway, the store, the
firewall). ``UpgradePlan.to_json`` is the document a change board reviews: its keys are stable
(``schema`` 1) and documented in the README ("Upgrades").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.bundle.manifest import Manifest
from appliance.install.debversion import compare
from appliance.install.host_packages import installed_by_name
from appliance.install.topology import HostPlan, Topology
from appliance.roles import role_defaults

PLAN_SCHEMA = 1
# The service a runtime runs per model (the others: one server for every model).
_PER_MODEL_UNIT = {"llamacpp": "appliance-llamacpp@{}.service", "vllm": "appliance-vllm@{}.service"}
_ONE_UNIT = {"ollama": "appliance-ollama.service"}
GATEWAY_UNIT = "appliance-gateway.service"
FIREWALL_UNIT = "appliance-firewall.service"
STORE_UNIT = "appliance-object-store.service"
# Packages whose new version runs only after a reboot.
_KERNEL_PREFIXES = ("linux-image-",)


@dataclass(frozen=True)
class PackageChange:
    name: str
    arch: str
    old: str | None  # None: added
    new: str | None  # None: removed

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "from": self.old, "to": self.new}


@dataclass(frozen=True)
class ModelChange:
    name: str
    old: str | None  # digest; None: added
    new: str | None  # digest; None: removed

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "from": self.old, "to": self.new}


@dataclass(frozen=True)
class HostServices:
    host: str
    start: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    reboot: tuple[str, ...] = ()  # why the host must reboot; empty: it need not

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "start": list(self.start),
            "restart": list(self.restart),
            "stop": list(self.stop),
            "reboot": list(self.reboot),
        }


@dataclass(frozen=True)
class UpgradePlan:
    name: str
    from_release: str | None  # None: nothing is installed yet
    from_sequence: int | None
    to_release: str
    to_sequence: int | None
    packages_added: tuple[PackageChange, ...] = ()
    packages_removed: tuple[PackageChange, ...] = ()
    packages_upgraded: tuple[PackageChange, ...] = ()
    packages_downgraded: tuple[PackageChange, ...] = ()
    models_added: tuple[ModelChange, ...] = ()
    models_removed: tuple[ModelChange, ...] = ()
    models_changed: tuple[ModelChange, ...] = ()
    # Wheel sets (installer: the gateway and the installer; llamacpp, vllm: the runtimes) and
    # the spec's files (runtime and store binaries) whose content changes.
    wheel_sets_changed: tuple[str, ...] = ()
    files_changed: tuple[str, ...] = ()
    # Stack settings that change: {setting: [old, new]}.
    stack_changed: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    nvidia_driver: tuple[str | None, str | None] | None = None  # (old, new) when it changes
    ansible_content_changed: bool = False
    hosts: tuple[HostServices, ...] = ()
    # Per host, the changes above among the packages that host installs by name: the spec's
    # packages.install (every host) and its roles' own (``<role>_packages``).
    host_packages: Mapping[str, Mapping[str, tuple[PackageChange, ...]]] = field(
        default_factory=dict
    )
    # None are defined yet: the field is here so a change board sees that, not a silence.
    data_migrations: tuple[str, ...] = ()
    site_models: tuple[str, ...] = ()  # kept untouched: data, outside every release

    @property
    def reboot(self) -> bool:
        return any(h.reboot for h in self.hosts)

    def changes_nothing(self) -> bool:
        """True when neither the packages, models, runtimes, gateway nor any service change."""
        document = self.to_json()
        return not any(
            [*document["packages"].values(), *document["models"].values()]
            + [document["runtime"][key] for key in ("wheel_sets", "files", "stack")]
            + [document["runtime"]["nvidia_driver"], document["ansible_content_changed"]]
            + [h["start"] or h["restart"] or h["stop"] or h["reboot"] for h in document["hosts"]]
        )

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON data, keys as documented in the README ("Upgrades")."""
        driver = self.nvidia_driver
        return {
            "schema": PLAN_SCHEMA,
            "name": self.name,
            "from": {"release": self.from_release, "sequence": self.from_sequence},
            "to": {"release": self.to_release, "sequence": self.to_sequence},
            "packages": {
                "added": [c.as_dict() for c in self.packages_added],
                "removed": [c.as_dict() for c in self.packages_removed],
                "upgraded": [c.as_dict() for c in self.packages_upgraded],
                "downgraded": [c.as_dict() for c in self.packages_downgraded],
            },
            "models": {
                "added": [c.as_dict() for c in self.models_added],
                "removed": [c.as_dict() for c in self.models_removed],
                "changed": [c.as_dict() for c in self.models_changed],
            },
            "runtime": {
                "wheel_sets": list(self.wheel_sets_changed),
                "files": list(self.files_changed),
                "stack": {k: list(v) for k, v in sorted(self.stack_changed.items())},
                "nvidia_driver": None if driver is None else {"from": driver[0], "to": driver[1]},
            },
            "ansible_content_changed": self.ansible_content_changed,
            "hosts": [h.as_dict() for h in self.hosts],
            "host_packages": {
                host: {kind: [c.as_dict() for c in found] for kind, found in kinds.items()}
                for host, kinds in self.host_packages.items()
            },
            "reboot": self.reboot,
            "data_migrations": list(self.data_migrations),
            "site_models": list(self.site_models),
        }


def plan_upgrade(
    current: Manifest | None,
    new: Manifest,
    new_topology: Topology,
    old_topology: Topology | None = None,
    site_models: Iterable[str] = (),
) -> UpgradePlan:
    """What replacing ``current`` (None: nothing installed) by ``new`` changes. The topologies are
    the inventory's for each manifest (``play_vars.plan_topology``); ``old_topology`` None means
    nothing runs yet, so every service of the new one starts."""
    old_debs = _debs(current)
    new_debs = _debs(new)
    added, removed, upgraded, downgraded = [], [], [], []
    for key in sorted(old_debs.keys() | new_debs.keys()):
        old, new_version = old_debs.get(key), new_debs.get(key)
        change = PackageChange(*key, old, new_version)
        if old is None:
            added.append(change)
        elif new_version is None:
            removed.append(change)
        elif (order := compare(new_version, old)) > 0:
            upgraded.append(change)
        elif order < 0:
            downgraded.append(change)
    old_models, new_models = _models(current), _models(new)
    models_added = [ModelChange(n, None, d) for n, d in new_models.items() if n not in old_models]
    models_removed = [ModelChange(n, d, None) for n, d in old_models.items() if n not in new_models]
    models_changed = [
        ModelChange(n, old_models[n], d)
        for n, d in new_models.items()
        if n in old_models and old_models[n] != d
    ]
    sets = _changed(_wheel_sets(current), _wheel_sets(new))
    files = _changed(_files(current), _files(new))
    old_stack = current.stack if current is not None else {}
    stack = {
        key: (old_stack.get(key), new.stack.get(key))
        for key in sorted(old_stack.keys() | new.stack.keys())
        if old_stack.get(key) != new.stack.get(key)
    }
    old_driver, new_driver = _driver(current), _driver(new)
    changes = _Changes(
        models={c.name for c in [*models_added, *models_removed, *models_changed]},
        wheel_sets=set(sets),
        files=set(files),
        driver=None if old_driver == new_driver else (old_driver, new_driver),
        kernel=[c for c in [*added, *upgraded, *downgraded] if c.name.startswith(_KERNEL_PREFIXES)],
    )
    return UpgradePlan(
        name=new.name,
        from_release=current.release if current is not None else None,
        from_sequence=current.sequence if current is not None else None,
        to_release=new.release,
        to_sequence=new.sequence,
        packages_added=tuple(added),
        packages_removed=tuple(removed),
        packages_upgraded=tuple(upgraded),
        packages_downgraded=tuple(downgraded),
        models_added=tuple(models_added),
        models_removed=tuple(models_removed),
        models_changed=tuple(models_changed),
        wheel_sets_changed=tuple(sets),
        files_changed=tuple(files),
        stack_changed=stack,
        nvidia_driver=changes.driver,
        ansible_content_changed=_ansible(current) != _ansible(new),
        hosts=_host_services(old_topology, new_topology, changes),
        host_packages=_host_packages(
            (current, old_topology),
            (new, new_topology),
            {"added": added, "removed": removed, "upgraded": upgraded, "downgraded": downgraded},
        ),
        site_models=tuple(sorted(site_models)),
    )


@dataclass(frozen=True)
class _Changes:
    """What changed that a service is built from, for deciding who restarts."""

    models: set[str]
    wheel_sets: set[str]
    files: set[str]
    driver: tuple[str | None, str | None] | None
    kernel: list[PackageChange]


def _host_services(
    old: Topology | None, new: Topology, changes: _Changes
) -> tuple[HostServices, ...]:
    found = []
    for host in sorted(new.hosts.keys() | (old.hosts.keys() if old else set())):
        before = old.hosts.get(host) if old is not None else None
        after = new.hosts.get(host)
        old_units, new_units = _units(before, old), _units(after, new)
        restart = [
            unit
            for unit, built_from in new_units.items()
            if unit in old_units
            and (built_from != old_units[unit] or _touched(built_from, changes))
        ]
        reboot = []
        if changes.kernel and after is not None:
            reboot.append("kernel " + ", ".join(f"{c.name} {c.new}" for c in changes.kernel))
        if changes.driver is not None and after is not None and "nvidia_driver" in after.roles:
            reboot.append(f"NVIDIA driver {changes.driver[0] or 'none'} -> {changes.driver[1]}")
        services = HostServices(
            host,
            start=tuple(sorted(new_units.keys() - old_units.keys())),
            restart=tuple(sorted(restart)),
            stop=tuple(sorted(old_units.keys() - new_units.keys())),
            reboot=tuple(reboot),
        )
        found.append(services)
    return tuple(found)


def _host_packages(
    old: tuple[Manifest | None, Topology | None],
    new: tuple[Manifest, Topology],
    changes: Mapping[str, list[PackageChange]],
) -> dict[str, dict[str, tuple[PackageChange, ...]]]:
    """Each host's share of the package changes: those it installs by name under either release
    (a dependency moves wherever it is installed: ``packages`` lists those)."""
    hosts = set(new[1].hosts) | set(old[1].hosts if old[1] is not None else ())
    found: dict[str, dict[str, tuple[PackageChange, ...]]] = {}
    for host in sorted(hosts):
        names = installed_by_name(*old, host) | installed_by_name(*new, host)
        found[host] = {k: tuple(c for c in cs if c.name in names) for k, cs in changes.items()}
    return found


# What a unit is built from: (kind, settings, the models it serves, the wheel set and files it
# runs). A unit restarts when any of these differ between the releases, or changed content.
_Built = tuple[str, tuple[Any, ...], frozenset[str], frozenset[str], frozenset[str]]


def _units(host: HostPlan | None, topology: Topology | None) -> dict[str, _Built]:
    if host is None or topology is None:
        return {}
    units: dict[str, _Built] = {}
    none: frozenset[str] = frozenset()
    runtime = host.runtime
    if runtime is not None:
        kind = runtime.kind
        if kind in _PER_MODEL_UNIT:
            for model in runtime.models:
                units[_PER_MODEL_UNIT[kind].format(model)] = (
                    kind,
                    (runtime.ports.get(model), runtime.listen_address),
                    frozenset({model}),
                    frozenset({kind}),
                    none,
                )
        elif kind in _ONE_UNIT:
            file_name = str(role_defaults(f"runtime_{kind}").get(f"runtime_{kind}_file", kind))
            units[_ONE_UNIT[kind]] = (
                kind,
                (tuple(sorted(runtime.ports.items())), runtime.listen_address),
                frozenset(runtime.models),
                none,
                frozenset({file_name}),
            )
    if "gateway" in host.roles:
        # The gateway's config routes every model of every host, at its address and port.
        routes = tuple(
            sorted(
                (name, other.runtime.listen_address, port)
                for other in topology.hosts.values()
                if other.runtime is not None
                for name, port in other.runtime.ports.items()
            )
        )
        models = frozenset(name for name, _, _ in routes)
        units[GATEWAY_UNIT] = ("gateway", routes, models, frozenset({"installer"}), none)
    if "object_store" in host.roles and topology.object_store is not None:
        store = topology.object_store
        store_file = str(role_defaults("object_store").get("object_store_file", "minio"))
        listen = (store.listen_address, store.port)
        units[STORE_UNIT] = ("object_store", listen, none, none, frozenset({store_file}))
    firewall = host.firewall
    openings = (
        firewall.service_ports,
        firewall.private_ports,
        firewall.private_sources,
        firewall.udp_ports,
        firewall.cluster_cidrs,
    )
    units[FIREWALL_UNIT] = ("firewall", openings, none, none, none)
    return units


def _touched(built_from: _Built, changes: _Changes) -> bool:
    _, _, models, wheel_sets, files = built_from
    return bool(models & changes.models or wheel_sets & changes.wheel_sets or files & changes.files)


def _debs(manifest: Manifest | None) -> dict[tuple[str, str], str]:
    """{(package, arch): version} of the bundle repository's packages."""
    if manifest is None:
        return {}
    found = {}
    for component in manifest.components:
        if component.kind == "deb" and component.version:
            name, _, arch = component.name.partition(":")
            found[(name, arch)] = component.version
    return found


def _models(manifest: Manifest | None) -> dict[str, str]:
    return {} if manifest is None else {m["name"]: m["digest"] for m in manifest.models()}


def _wheel_sets(manifest: Manifest | None) -> dict[str, tuple[str, ...]]:
    if manifest is None:
        return {}
    return {
        name: tuple(sorted(w["sha256"] for w in wheels))
        for name, wheels in manifest.wheel_sets().items()
    }


def _files(manifest: Manifest | None) -> dict[str, str]:
    return {} if manifest is None else {f["name"]: f["sha256"] for f in manifest.plain_files()}


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def _driver(manifest: Manifest | None) -> str | None:
    if manifest is None or manifest.nvidia is None:
        return None
    driver = manifest.nvidia.driver
    return f"{driver.version} ({driver.modules}, {driver.source})"


def _ansible(manifest: Manifest | None) -> str | None:
    if manifest is None:
        return None
    return next((e.sha256 for e in manifest.files if e.kind == "ansible-content"), None)
