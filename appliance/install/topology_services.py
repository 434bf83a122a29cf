"""The depot's services in the topology (appliance/install/topology.py): the object store and
the container registry, where each listens and what it serves, and the container networks the
firewall counts inside the boundary; with the small checks they share with the runtimes' plan.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import InventoryError
from appliance.registry import RegistryError, storage_bytes, upstreams


@dataclass(frozen=True)
class ObjectStore:
    """The S3 store on the depot (``object_store: minio``): where it listens, the URL every
    host reaches it at (TLS from the site CA), and who fetches from it."""

    kind: str
    host: str
    listen_address: str
    port: int
    url: str


@dataclass(frozen=True)
class Registry:
    """The container registry on the depot (``registry: distribution``): the address every
    host pulls from (``appliance_registry_host``:``appliance_registry_port``, TLS from the site
    CA), its storage and what it needs, one mirror rule per upstream registry, and the images
    it is seeded with (appliance.registry.images)."""

    kind: str
    host: str
    address: str
    port: int
    data_dir: str
    storage_bytes: int
    upstreams: tuple[dict[str, str], ...]
    images: tuple[dict[str, Any], ...]


def container_network(host: str, name: str, var: Any) -> str:
    """A container network the firewall counts inside: private, and no wider than a /12 (a
    wider one, 0.0.0.0/0 at worst, would let the containers reach what the firewall denies)."""
    value = str(var(host, name, "harbor"))
    hint = f"give {name} as a private CIDR such as 172.30.0.0/16, clear of the site's networks"
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        error = InventoryError(f"host {host}: {name} is {value!r}, not an IPv4 network", hint=hint)
        raise error from None
    if not network.is_private or network.prefixlen < 12:
        raise InventoryError(
            f"host {host}: {name} is {value}: a container network must be private and no wider "
            "than a /12, or the containers would reach beyond the boundary",
            hint=hint,
        )
    return str(network)


def _listen(depot: str, multi: bool, address: Any, service: str) -> str:
    """Where a depot service listens: loopback on a single box; with other hosts the depot's
    internal IPv4 address, which their certificate checks name (the site CA's)."""
    listen = str(address(depot)) if multi else "127.0.0.1"
    if multi and not is_ipv4(listen):
        raise InventoryError(
            f"host {depot} runs {service} for the other hosts, but its address {listen!r} is "
            "not an IPv4 address",
            hint=f"set ansible_host of {depot} to its IPv4 address on the internal network",
        )
    return listen


def plan_object_store(
    stack: Mapping[str, Any], depot: str, multi: bool, var: Any, address: Any
) -> ObjectStore | None:
    kind = str(stack.get("object_store", "filesystem"))
    if kind == "filesystem":
        return None
    port = checked_port(var(depot, "object_store_port", "object_store"), depot, "object_store_port")
    listen = _listen(depot, multi, address, "the object store")
    return ObjectStore(kind, depot, listen, port, f"https://{listen}:{port}")


def plan_registry(
    stack: Mapping[str, Any],
    depot: str,
    multi: bool,
    var: Any,
    address: Any,
    images: Sequence[Mapping[str, Any]],
) -> Registry | None:
    kind = str(stack.get("registry", "none"))
    if kind == "none":
        return None
    port = checked_port(var(depot, "registry_port", "registry"), depot, "registry_port")
    listen = _listen(depot, multi, address, "the registry")
    found = [dict(image) for image in images]
    try:
        rules = upstreams([image["ref"] for image in found])
    except RegistryError as error:
        raise InventoryError(
            f"registry on {depot}: {error}",
            hint="rebuild the bundle from a spec whose images name their registry by DNS name "
            "or IPv4 address; nothing was changed",
        ) from None
    return Registry(
        kind=kind,
        host=depot,
        address=listen,
        port=port,
        data_dir=str(var(depot, "registry_data_dir", "registry")),
        storage_bytes=storage_bytes(found),
        upstreams=tuple(rules),
        images=tuple(found),
    )


def checked_port(value: Any, host: str, name: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise InventoryError(
            f"host {host}: {name} is {value!r}, not a TCP port",
            hint=f"set {name} to a number between 1 and 65535",
        )
    return port


def is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True
