"""The model store, from the installer's side: the very code the roles run on the hosts.

The store's layout, its S3 client and the publish and audit logic live in the object_store
role's module_utils (``appliance_s3``, ``appliance_store``): the hosts run them as Ansible
module_utils with python3 alone. The installer (``appliance verify``, the site-models commands)
imports the same two files from here, so there is one implementation, tested once. Read
``appliance_store``'s docstring for the layout and the interface:

    from appliance.store import load_config, open_store, publish, audit, DEFAULT_CONFIG
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from appliance.roles import ROLES_DIR

MODULE_UTILS = ROLES_DIR / "object_store" / "module_utils"
# Where the object_store role writes the store's client configuration (root, 0600) on the
# store host, and the default root of the directory store (object_store: filesystem).
DEFAULT_CONFIG = "/etc/appliance/object-store/store.json"
DEFAULT_DIRECTORY = "/var/lib/appliance/store"


def _load(name: str) -> ModuleType:
    # Registered under its own top-level name: appliance_store imports appliance_s3 that way
    # outside Ansible (on a host it is ansible.module_utils.appliance_s3).
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODULE_UTILS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load("appliance_s3")
_store = _load("appliance_store")

if TYPE_CHECKING:
    from appliance_store import (
        BLOB_PREFIX,
        DirectoryStore,
        ObjectInfo,
        PublishReport,
        S3Store,
        StoreError,
        audit,
        blob_key,
        file_sha256,
        load_config,
        open_store,
        publish,
    )
else:
    globals().update({name: getattr(_store, name) for name in _store.__all__})

__all__ = [
    "BLOB_PREFIX",
    "DEFAULT_CONFIG",
    "DEFAULT_DIRECTORY",
    "DirectoryStore",
    "ObjectInfo",
    "PublishReport",
    "S3Store",
    "StoreError",
    "audit",
    "blob_key",
    "file_sha256",
    "load_config",
    "open_store",
    "publish",
]
