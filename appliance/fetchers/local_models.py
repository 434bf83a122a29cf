"""Local models: a file or directory made in-house, hashed while copied into the store.

Also what every model kind shares: a model is one component, each of its files a blob named by
its path inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from appliance.bundle.manifest import Component
from appliance.bundle.store import BlobStore
from appliance.errors import BuildError
from appliance.fetchers.source import Job, Part, Request, blob_entry
from appliance.spec.models import HuggingFaceModel, LocalModel, OllamaModel
from appliance.spec.s3_model import S3Model

AnyModel = HuggingFaceModel | OllamaModel | S3Model | LocalModel


@dataclass(frozen=True)
class ModelFile:
    relative: str  # path inside the model (the file name, for a single-file model)
    sha256: str
    size: int


def model_path(model: LocalModel, spec_dir: Path) -> Path:
    source = model.source
    path = Path(unquote(urlsplit(source).path)) if source.startswith("file://") else Path(source)
    return path if path.is_absolute() else spec_dir / path


def check_local_model(model: LocalModel, spec_dir: Path) -> Path:
    path = model_path(model, spec_dir)
    if not path.exists():
        raise BuildError(
            f"model {model.name}: {path} does not exist",
            hint="create the model file first, or fix models[].source (relative paths are "
            "relative to the spec file)",
        )
    return path


def add_local_model(
    model: LocalModel, spec_dir: Path, store: BlobStore, jobs: int = 1
) -> list[ModelFile]:
    """Copy the model's files into the store, hashing while copying; a directory's files are
    hashed ``jobs`` at a time (sha256 releases the GIL, so the cores share the work)."""
    root = check_local_model(model, spec_dir)
    if root.is_file():
        blob = store.add_file(root, what=f"model {model.name}")
        return [ModelFile(root.name, blob.sha256, blob.size)]
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        if path.is_symlink():
            raise BuildError(
                f"model {model.name}: {path} is a symlink",
                hint="copy the real file into the model directory; bundles hold no links",
            )

    def add(path: Path) -> ModelFile:
        blob = store.add_file(path, what=f"model {model.name}")
        return ModelFile(path.relative_to(root).as_posix(), blob.sha256, blob.size)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="model") as pool:
        return list(pool.map(add, paths))


def models_part(fetched: Sequence[tuple[AnyModel, str | None, list[ModelFile]]]) -> Part:
    """Each model (with its version: format, revision or digest) as one component, each of its
    files a blob named by its path inside the model (for Ollama, its place in OLLAMA_MODELS)."""
    part = Part()
    for model, version, files in fetched:
        part.add(
            Component(
                name=model.name,
                kind="model",
                version=version,
                source=model.source,
                task=None if model.task == "chat" else model.task,
            ),
            *(blob_entry(f.sha256, f.size, "model", model.name, f.relative) for f in files),
        )
    return part


ModelsFetched = list[tuple[AnyModel, str | None, list[ModelFile]]]


class LocalModelsSource:
    """Models the spec names by a path: hashed while copied into the bundle."""

    def check(self, request: Request) -> list[LocalModel] | None:
        models = [m for m in request.spec.models if isinstance(m, LocalModel)]
        for model in models:
            check_local_model(model, request.spec_dir)
        return models or None

    def fetch(self, job: Job, plan: list[LocalModel]) -> ModelsFetched:
        return [
            (model, model.format, add_local_model(model, job.spec_dir, job.store, job.fetcher.jobs))
            for model in plan
        ]

    def describe(self, job: Job, fetched: ModelsFetched) -> Part:
        return models_part(fetched)
