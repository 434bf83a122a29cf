"""Harbor's API client, from the installer's side: the very file the harbor role's module runs
on the depot (roles/harbor/module_utils/appliance_harbor_api.py), loaded here for tests and
tools so there is one implementation."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from appliance.roles import ROLES_DIR

MODULE = ROLES_DIR / "harbor" / "module_utils" / "appliance_harbor_api.py"


def _load() -> ModuleType:
    name = "appliance_harbor_api"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes
    return module


if TYPE_CHECKING:
    HarborAPI = object
    HarborError = Exception
    PULL: tuple[str, ...]
    PUSH: tuple[str, ...]
else:
    _api = _load()
    HarborAPI, HarborError, PULL, PUSH = _api.HarborAPI, _api.HarborError, _api.PULL, _api.PUSH
