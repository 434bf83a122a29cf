"""The Ansible content that ships inside the package, and what its roles declare.

The playbooks and roles live in ``appliance/ansible/`` so that an installed appliance (a wheel,
pipx) carries them: build-bundle packs them from there, whether it runs from a checkout or from
site-packages.

Each role declares the OS packages it installs in one place, its public ``<role>_packages``
default (a literal list in ``defaults/main.yml``). build-bundle adds them to the package closure
and install checks, before any host changes, that the bundle holds them, so a spec lists only
what the site wants on top.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ANSIBLE_DIR = Path(__file__).resolve().parent / "ansible"
ROLES_DIR = ANSIBLE_DIR / "roles"

# Every host runs these, in this order, before anything else.
BASE_ROLES = ("preflight", "local_repo", "firewall")


@functools.cache
def role_defaults(role: str) -> dict[str, Any]:
    """The role's ``defaults/main.yml`` as YAML data (Jinja expressions stay strings)."""
    path = ROLES_DIR / role / "defaults" / "main.yml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def role_packages(role: str) -> tuple[str, ...]:
    """The OS packages ``role`` installs from the bundle's repository (``<role>_packages``)."""
    value = role_defaults(role).get(f"{role}_packages", [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(
            f"{ROLES_DIR / role / 'defaults/main.yml'}: {role}_packages must be a literal list "
            "of package names (build-bundle reads it without Ansible)"
        )
    return tuple(value)


# On GPU nodes, when the bundle carries an NVIDIA driver (the spec's nvidia section), before
# the runtimes; the container toolkit only when the bundle carries it too.
GPU_ROLES = ("gpu_facts", "nvidia_driver")
TOOLKIT_ROLE = "nvidia_container_toolkit"


# containerd and Docker pull through the local registry alone. Not under k3s: it embeds its own
# containerd, configured by its registries.yaml.
ENGINES_ROLE = "container_engines"


def engines_configured(stack: Mapping[str, Any]) -> bool:
    """Whether every host's container engines are pointed at the local registry."""
    registry, orchestrator = stack.get("registry", "none"), stack.get("orchestrator", "systemd")
    return bool(registry != "none" and orchestrator != "k3s")


def runtime_role(stack: Mapping[str, Any]) -> str:
    return f"runtime_{stack.get('runtime', 'llamacpp')}"


def play_roles(
    stack: Mapping[str, Any], serves_models: bool, gpu: bool = False, toolkit: bool = False
) -> tuple[str, ...]:
    """The roles ``site.yml`` runs somewhere for this stack, including those they include.

    ``gpu``: the bundle carries an NVIDIA driver; ``toolkit``: and NVIDIA's container toolkit.
    """
    roles = list(BASE_ROLES)
    if stack.get("object_store", "filesystem") != "filesystem":
        # The store's TLS comes from the site CA, which the object_store role includes.
        roles += ["site_ca", "object_store"]
    if stack.get("registry") == "harbor":
        roles += ["site_ca", "harbor"]
    elif stack.get("registry") == "distribution":
        # Its TLS comes from the site CA too.
        roles += ["site_ca", "registry"]
    if gpu:
        roles += [*GPU_ROLES, *([TOOLKIT_ROLE] if toolkit else [])]
    if engines_configured(stack):
        roles += [ENGINES_ROLE]
    if stack.get("orchestrator") == "k3s":
        roles += ["k3s"]
    if serves_models:
        # Under k3s the runtimes are its workloads (the k3s role lays out their models).
        runtime = [] if stack.get("orchestrator") == "k3s" else [runtime_role(stack)]
        roles += ["artifacts", *runtime]
        # The gateway's HTTPS certificate comes from the site CA by default (gateway_tls).
        roles += ["site_ca", "gateway"]
    # Once each, where it first appears (the site CA serves the store, the registry and the
    # gateway).
    return tuple(dict.fromkeys(roles))


def required_packages(
    stack: Mapping[str, Any], serves_models: bool, gpu: bool = False, toolkit: bool = False
) -> dict[str, list[str]]:
    """Each OS package the play installs, with the roles that need it (in play order)."""
    needed: dict[str, list[str]] = {}
    for role in play_roles(stack, serves_models, gpu, toolkit):
        for package in role_packages(role):
            needed.setdefault(package, []).append(role)
    return needed
