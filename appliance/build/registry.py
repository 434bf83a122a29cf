"""The one table of source kinds build-bundle knows, in the order it fetches them.

Each entry maps a kind's name to its handler (``appliance.fetchers.source.SourceKind``: check,
fetch, describe), as hermeto's resolver maps package managers to their fetchers. To add a
source kind, write its module under ``appliance/fetchers/`` (the contract and the steps are in
``appliance/fetchers/source.py``) and add one line here; nothing else in the build changes.
"""

from __future__ import annotations

from typing import Any

from appliance.fetchers.ansible import AnsibleSource
from appliance.fetchers.files import FilesSource
from appliance.fetchers.hf import HfModelsSource
from appliance.fetchers.images import ImagesSource
from appliance.fetchers.installer import InstallerSource
from appliance.fetchers.local_models import LocalModelsSource
from appliance.fetchers.ollama import OllamaModelsSource
from appliance.fetchers.packages import PackagesSource
from appliance.fetchers.s3 import S3ModelsSource
from appliance.fetchers.source import SourceKind
from appliance.fetchers.wheels import WheelsSource

SOURCES: dict[str, SourceKind[Any, Any]] = {
    "files": FilesSource(),
    "packages": PackagesSource(),
    "images": ImagesSource(),
    "wheels": WheelsSource(),
    "models-local": LocalModelsSource(),
    "models-hf": HfModelsSource(),
    "models-ollama": OllamaModelsSource(),
    "models-s3": S3ModelsSource(),
    "installer": InstallerSource(),
    "ansible-content": AnsibleSource(),
}
