"""Who does what on the isolated network, computed once, here, before the play runs.

The play receives the result as ``appliance_topology`` (extravars) and as groups of a generated
inventory (``appliance_<role>`` groups), so ``site.yml`` lists plays and roles and no role
works out another host's address, port or job. The inputs are the inventory (groups, each
host's address, per-host runtime settings), the signed manifest (stack, models) and the roles'
own defaults (ports), read from the bundle's Ansible content that the play itself will use.

Flows the firewall allows, by construction:
  - every host -> the depot's repository server, when the depot serves other hosts;
  - internal networks -> the gateway's port, on the gateway host;
  - internal networks -> the registry's port (TLS, authenticated), on the depot;
  - the gateway host alone -> a runtime's ports, on a GPU node other than the gateway host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.errors import InventoryError
from appliance.install.topology_services import (
    ObjectStore,
    Registry,
    checked_port,
    container_network,
    is_ipv4,
    plan_object_store,
    plan_registry,
)
from appliance.platform.k3s import CLUSTER_CIDRS, FLANNEL_VXLAN_PORT, KUBELET_PORT
from appliance.roles import (
    BASE_ROLES,
    ENGINES_ROLE,
    GPU_ROLES,
    TOOLKIT_ROLE,
    engines_configured,
    role_defaults,
)

# ObjectStore and Registry live in topology_services; their users import them from here.
__all__ = [
    "K3S_SERVER_PORT",
    "Firewall",
    "HostPlan",
    "ObjectStore",
    "Registry",
    "Runtime",
    "Topology",
    "plan",
]

# The model formats each runtime serves, as Manifest.models() reports them. vLLM serves a
# Hugging Face checkpoint directory: any model that is neither a GGUF file nor an Ollama layout
# and that comes from the hub or says it is safetensors.
_RUNTIME_FORMATS: dict[str, frozenset[str]] = {
    "llamacpp": frozenset({"gguf"}),
    "vllm": frozenset({"safetensors", "hf"}),
    "ollama": frozenset({"ollama"}),
}
K3S_SERVER_PORT = 6443
# Runtimes that serve every model on one port (the others: one server per model, consecutive
# ports from a base).
_ONE_PORT = frozenset({"ollama"})


@dataclass(frozen=True)
class Runtime:
    kind: str
    models: tuple[str, ...]
    ports: dict[str, int]  # model name -> port
    listen_address: str


@dataclass(frozen=True)
class Firewall:
    # Open to the internal networks.
    service_ports: tuple[int, ...] = ()
    # Open to private_sources alone.
    private_ports: tuple[int, ...] = ()
    private_sources: tuple[str, ...] = ()
    # UDP ports open to the internal networks (k3s's VXLAN between nodes).
    udp_ports: tuple[int, ...] = ()
    # Container networks of this host that count as inside the boundary (a k3s node's pods and
    # Services): reached from the host and routed to and from, never beyond the boundary.
    cluster_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostPlan:
    name: str
    address: str
    depot: bool
    roles: tuple[str, ...]
    firewall: Firewall
    runtime: Runtime | None = None


@dataclass(frozen=True)
class Topology:
    depot: str
    depot_address: str
    # The depot's repository server, when other hosts install from it.
    repo_url: str | None
    gateway_host: str | None
    gateway_url: str | None
    require_default_route: bool
    hosts: dict[str, HostPlan] = field(default_factory=dict)
    # None: models are files from the release (object_store: filesystem).
    object_store: ObjectStore | None = None
    # None: no registry (registry: none).
    registry: Registry | None = None

    def groups(self) -> dict[str, list[str]]:
        """``appliance_<role>`` -> the hosts that run it, for the generated inventory."""
        groups: dict[str, list[str]] = {}
        for plan in self.hosts.values():
            for role in plan.roles:
                groups.setdefault(f"appliance_{role}", []).append(plan.name)
        return {name: sorted(hosts) for name, hosts in sorted(groups.items())}

    def as_vars(self) -> dict[str, Any]:
        """The play's ``appliance_topology``: plain JSON data (lists, dicts, strings, numbers)."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return data


def plan(
    *,
    hosts: Sequence[str],
    depot: str,
    gpu_nodes: Sequence[str],
    host_vars: Mapping[str, Mapping[str, Any]],
    stack: Mapping[str, Any],
    models: Sequence[Mapping[str, Any]],
    nvidia: Mapping[str, Any] | None = None,
    images: Sequence[Mapping[str, Any]] = (),
) -> Topology:
    """The topology for ``hosts`` (the inventory's), ``stack`` and ``models`` (the manifest's).

    ``nvidia`` is the manifest's NVIDIA section (None: the bundle carries no driver, and no host
    gets the GPU roles): every GPU node then installs the driver, and NVIDIA's container
    toolkit when the bundle carries it, before its runtime. ``images`` are the manifest's
    (appliance.registry.images), which a registry in the stack is seeded with.

    Raises ``InventoryError`` naming the host and variable when the inventory asks for
    something that cannot work (a model no node can serve, a port clash, a gateway that the
    nodes' firewalls could not tell apart).
    """

    def var(host: str, name: str, role: str) -> Any:
        value = host_vars.get(host, {}).get(name)
        if value is None:
            value = role_defaults(role).get(name)
        if isinstance(value, str) and "{{" in value:
            raise InventoryError(
                f"host {host}: {name} is a template ({value!r}); the installer plans ports and "
                "addresses before Ansible runs",
                hint=f"give {name} a plain value in the inventory",
            )
        return value

    def address(host: str) -> str:
        value = host_vars.get(host, {}).get("ansible_host") or host
        return str(value)

    runtime_kind = str(stack.get("runtime", "llamacpp"))
    k3s = stack.get("orchestrator") == "k3s"
    multi = len(hosts) > 1
    serves = bool(models)
    gateway_host = None
    if serves:
        gateway_host = str(host_vars.get(depot, {}).get("appliance_gateway_host") or depot)
        if gateway_host not in hosts:
            raise InventoryError(
                f"appliance_gateway_host names {gateway_host}, which is not in the inventory",
                hint=f"name one of: {', '.join(hosts)}",
            )
    repo_port = checked_port(
        var(depot, "local_repo_http_port", "local_repo"), depot, "local_repo_http_port"
    )
    runtimes = (
        _runtimes(runtime_kind, gpu_nodes, gateway_host, models, var, address)
        if serves and gateway_host is not None
        else {}
    )
    gateway_port = (
        checked_port(var(gateway_host, "gateway_port", "gateway"), gateway_host, "gateway_port")
        if gateway_host is not None
        else None
    )
    store = plan_object_store(stack, depot, multi, var, address)
    registry = plan_registry(stack, depot, multi, var, address, images)
    remote_runtimes = [h for h, r in runtimes.items() if h != gateway_host and r.ports]
    sources: tuple[str, ...] = ()
    if remote_runtimes:
        assert gateway_host is not None
        gateway_address = address(gateway_host)
        if not is_ipv4(gateway_address):
            raise InventoryError(
                f"host {gateway_host} runs the gateway, and {', '.join(remote_runtimes)} open "
                f"their runtime ports to it alone, but its address {gateway_address!r} is not "
                "an IPv4 address",
                hint=f"set ansible_host of {gateway_host} to its IPv4 address on the internal "
                "network",
            )
        sources = (gateway_address,)

    plans = {}
    for host in hosts:
        runtime = runtimes.get(host)
        roles = list(BASE_ROLES)
        if store is not None and host == store.host:
            roles += ["object_store"]
        if registry is not None and host == registry.host:
            # registry: harbor runs Harbor there instead, seeded and audited the same way.
            roles += ["harbor" if registry.kind == "harbor" else "registry"]
        if nvidia is not None and host in gpu_nodes:
            roles += [*GPU_ROLES, *([TOOLKIT_ROLE] if nvidia.get("container_toolkit") else [])]
        if engines_configured(stack):
            roles += [ENGINES_ROLE]
        on_k3s = k3s and (host == depot or host in gpu_nodes)
        if on_k3s:
            # The server on the depot, an agent on each GPU node; the runtimes are its
            # workloads, on the address and ports planned here (host network).
            roles += ["k3s"]
        elif runtime is not None:
            roles += [f"runtime_{runtime.kind}"]
        if host == gateway_host:
            roles += ["gateway"]
        service = (
            ([repo_port] if host == depot and multi else [])
            # The nodes fetch their models from it (presigned, over TLS): the internal networks.
            + ([store.port] if store is not None and host == store.host and multi else [])
            # Every host's container engine pulls from it (TLS, the pull identity).
            + ([registry.port] if registry is not None and host == registry.host and multi else [])
            + ([gateway_port] if host == gateway_host and gateway_port is not None else [])
            # The agents join the server (k3s's supervisor and API port).
            + ([K3S_SERVER_PORT] if k3s and host == depot and multi else [])
            + ([KUBELET_PORT] if on_k3s and multi else [])
        )
        # Harbor runs in Docker: its containers' networks are inside, as a k3s node's pods are.
        docker_networks = (
            (container_network(host, "harbor_docker_address_pool", var),)
            if registry is not None and registry.kind == "harbor" and host == registry.host
            else ()
        )
        private = (
            tuple(sorted(set(runtime.ports.values())))
            if runtime is not None and host != gateway_host
            else ()
        )
        if host == depot and multi:
            roles.insert(roles.index("local_repo") + 1, "repo_server")
        plans[host] = HostPlan(
            name=host,
            address=address(host),
            depot=host == depot,
            roles=tuple(roles),
            firewall=Firewall(
                tuple(service),
                private,
                sources if private else (),
                udp_ports=(FLANNEL_VXLAN_PORT,) if on_k3s and multi else (),
                cluster_cidrs=(CLUSTER_CIDRS if on_k3s else ()) + docker_networks,
            ),
            runtime=runtime,
        )
    return Topology(
        depot=depot,
        depot_address=address(depot),
        repo_url=f"http://{address(depot)}:{repo_port}" if multi else None,
        gateway_host=gateway_host,
        gateway_url=(
            f"{_gateway_scheme(var(gateway_host, 'gateway_tls', 'gateway'))}://"
            f"{address(gateway_host)}:{gateway_port}"
            if gateway_host is not None
            else None
        ),
        require_default_route=stack.get("orchestrator") == "k3s",
        hosts=plans,
        object_store=store,
        registry=registry,
    )


def _runtimes(
    kind: str,
    gpu_nodes: Sequence[str],
    gateway_host: str,
    models: Sequence[Mapping[str, Any]],
    var: Any,
    address: Any,
) -> dict[str, Runtime]:
    role = f"runtime_{kind}"
    servable = [m["name"] for m in models if _serves(kind, m)]
    plans: dict[str, Runtime] = {}
    for node in gpu_nodes:
        wanted = var(node, f"{role}_models", role) or []
        if not isinstance(wanted, list):
            raise InventoryError(
                f"host {node}: {role}_models must be a list of model names",
                hint=f"e.g. {role}_models: [{servable[0] if servable else 'my-model'}]",
            )
        unknown = [name for name in wanted if name not in servable]
        if unknown:
            raise InventoryError(
                f"host {node}: {role}_models names {', '.join(map(str, unknown))}, which the "
                f"bundle has no {kind}-servable model of (it has: {', '.join(servable) or 'none'})",
                hint="name models of the bundle that the stack's runtime can serve",
            )
        served = tuple(name for name in servable if not wanted or name in wanted)
        if kind in _ONE_PORT:
            port = checked_port(var(node, f"{role}_port", role), node, f"{role}_port")
            ports = dict.fromkeys(served, port)
        else:
            base = checked_port(var(node, f"{role}_port_base", role), node, f"{role}_port_base")
            if base + len(served) > 65535:
                raise InventoryError(
                    f"host {node}: {role}_port_base {base} leaves no port for each of its "
                    f"{len(served)} models",
                    hint=f"lower {role}_port_base",
                )
            ports = {name: base + index for index, name in enumerate(served)}
        listen = "127.0.0.1" if node == gateway_host else address(node)
        plans[node] = Runtime(kind, served, ports, listen)
    twice = _served_twice(plans)
    if twice:
        raise InventoryError(
            f"model {twice[0]} is served by {' and '.join(twice[1])}; the gateway routes each "
            "model to one runtime",
            hint=f"set runtime_{kind}_models per host so that each model is served once",
        )
    return plans


def _serves(kind: str, model: Mapping[str, Any]) -> bool:
    fmt = model.get("format") or model.get("version") or ""
    if fmt in _RUNTIME_FORMATS.get(kind, frozenset()):
        return True
    # vLLM also serves hub checkpoints whose files named no format (e.g. .bin weights).
    return kind == "vllm" and str(model.get("source") or "").startswith("hf://") and fmt != "gguf"


def _served_twice(plans: Mapping[str, Runtime]) -> tuple[str, list[str]] | None:
    seen: dict[str, list[str]] = {}
    for node, runtime in plans.items():
        for name in runtime.models:
            seen.setdefault(name, []).append(node)
    for name, nodes in seen.items():
        if len(nodes) > 1:
            return name, nodes
    return None


def _gateway_scheme(tls: Any) -> str:
    # The gateway serves HTTPS unless the operator turned TLS off (the role's gateway_tls).
    return "http" if tls == "off" else "https"
