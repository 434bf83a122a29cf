"""The appliance spec, format version 1, as pydantic models.

Every model forbids unknown fields. Validators raise ``PydanticCustomError`` with messages that
say what is wrong and how to fix it, because these strings are what users read. Validation is
pure: it touches neither the network nor the file system, so it can run first, always.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance.names import RELEASE_RE
from appliance.sizing.gpus import GPU_TYPES
from appliance.spec.checks import (
    GIT_COMMIT_RE,
    check_digest,
    check_image_ref,
    check_requirement,
    check_unique,
    check_url,
    err,
)
from appliance.spec.common import ModelTask, Name, Sha256, StrictModel
from appliance.spec.images import check_registry_images
from appliance.spec.k3s import (
    check_k3s_registry,
    check_k3s_runtime_image,
    k3s_gpu_problem,
)
from appliance.spec.nvidia import Nvidia, NvidiaAptSource, NvidiaDriver, check_nvidia

# Re-exported: the fetchers and tests import the packages models from here.
from appliance.spec.packages import AptSource as AptSource
from appliance.spec.packages import Packages as Packages
from appliance.spec.s3_model import S3Model, Sha256Sums

# Re-exported: the stack's models and constants live in stack.py, their users import them here.
from appliance.spec.stack import EMBEDDING_RUNTIMES as EMBEDDING_RUNTIMES
from appliance.spec.stack import HARBOR_FILE as HARBOR_FILE
from appliance.spec.stack import INSTALLABLE as INSTALLABLE
from appliance.spec.stack import MINIO_FILE as MINIO_FILE
from appliance.spec.stack import Stack as Stack
from appliance.spec.stack import Target as Target
from appliance.spec.stack import stack_files_missing

SPEC_VERSION = 1


class FileArtifact(StrictModel):
    """A single file fetched over http(s) or from a local path, pinned by sha256."""

    name: Name
    url: str = Field(description="http://, https:// or file:// URL")
    sha256: Sha256
    version: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, ("https", "http", "file"))


class Image(StrictModel):
    """A container image, pinned by manifest digest."""

    ref: Annotated[str, AfterValidator(check_image_ref)] = Field(
        description="[registry/]repository[:tag]@sha256:<64 hex>"
    )
    platforms: Literal["target", "all"] = Field(
        default="target",
        description="for a ref pinned to a multi-platform index: 'target' keeps the target's "
        "platform alone (its manifest digest, not the index's, is what engines can pull); "
        "'all' keeps the index and every platform, so engines pull by the index digest",
    )


class HuggingFaceModel(StrictModel):
    """Model files from a Hugging Face repository at a pinned commit."""

    name: Name
    source: str = Field(description="hf://ORG/REPO")
    task: ModelTask = "chat"
    revision: str = Field(description="the repository commit (40 hex characters)")
    include: list[str] = Field(default_factory=list, description="glob patterns to fetch")
    exclude: list[str] = Field(default_factory=list, description="glob patterns to skip")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        repo = value.removeprefix("hf://")
        parts = repo.split("/")
        if len(parts) != 2 or not all(parts):
            raise err("bad_hf_repo", "expected hf://ORG/REPO, got '{value}'", value=value)
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        if not GIT_COMMIT_RE.match(value):
            raise err(
                "unpinned_revision",
                "revision '{value}' is not a commit: branches and tags move, pin the "
                "40-character commit sha",
                value=value,
            )
        return value


class OllamaModel(StrictModel):
    """An Ollama model from a registry that speaks the OCI distribution API."""

    name: Name
    source: str = Field(description="ollama://[REGISTRY/]NAMESPACE/MODEL:TAG")
    task: ModelTask = "chat"
    digest: Annotated[str, AfterValidator(check_digest)] = Field(
        description="sha256:<64 hex> of the model manifest"
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        ref = value.removeprefix("ollama://")
        if ":" not in ref.rsplit("/", 1)[-1]:
            raise err(
                "ollama_tag_missing",
                "ollama model '{value}' has no tag: write ollama://NAMESPACE/MODEL:TAG",
                value=value,
            )
        return value


class LocalModel(StrictModel):
    """A model file or directory made in-house; hashed when the bundle is built."""

    name: Name
    source: str = Field(description="a path (relative to the spec) or file:// URL")
    task: ModelTask = "chat"
    format: Literal["gguf", "safetensors"] | None = None


_MODEL_SCHEMES = {"hf": "hf", "ollama": "ollama", "s3": "s3", "file": "local", "": "local"}


def _model_kind(value: Any) -> str | None:
    source = value.get("source") if isinstance(value, dict) else getattr(value, "source", None)
    if not isinstance(source, str):
        return None
    scheme = source.split("://", 1)[0] if "://" in source else ""
    return _MODEL_SCHEMES.get(scheme)


Model = Annotated[
    Annotated[HuggingFaceModel, Tag("hf")]
    | Annotated[OllamaModel, Tag("ollama")]
    | Annotated[S3Model, Tag("s3")]
    | Annotated[LocalModel, Tag("local")],
    Discriminator(
        _model_kind,
        custom_error_type="bad_model_source",
        custom_error_message=(
            "source must be hf://ORG/REPO, ollama://NAMESPACE/MODEL:TAG, s3://BUCKET/PREFIX, "
            "or a local path"
        ),
    ),
]

# Tags pydantic inserts into error locations for the model union; not part of the user's path.
UNION_TAGS = frozenset({"hf", "ollama", "s3", "local", "kind=apt", "kind=nvidia"})


class Gpus(StrictModel):
    """GPUs the appliance's GPU nodes have: one kind, ``count`` per node. Sizing checks each
    model against them (build-bundle warns when a model fits none); a kind not in the table is
    named by the memory CUDA reports instead."""

    type: str | None = Field(default=None, description="a GPU type: " + ", ".join(GPU_TYPES))
    memory_gib: float | None = Field(
        default=None, gt=0, le=4096, description="instead of type: GiB per GPU as CUDA reports it"
    )
    count: int = Field(default=1, ge=1, le=64, description="GPUs per node")

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in GPU_TYPES:
            raise err(
                "unknown_gpu",
                "unknown GPU type '{value}': use one of {known}, or memory_gib",
                value=value,
                known=", ".join(GPU_TYPES),
            )
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one_of(self) -> Gpus:
        if (self.type is None) == (self.memory_gib is None):
            raise err("gpu_kind", "name the GPUs by type or by memory_gib (one of the two)")
        return self


class WheelSet(StrictModel):
    """Python wheels for the target, e.g. a runtime. Every requirement pinned with '=='."""

    name: Name
    requirements: list[Annotated[str, AfterValidator(check_requirement)]] = Field(min_length=1)
    python: str = Field(default="3.11", description="target Python version, MAJOR.MINOR")

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        if not re.fullmatch(r"3\.\d{1,2}", value):
            raise err("bad_python", "python must be MAJOR.MINOR, e.g. '3.11'")
        return value


class Spec(StrictModel):
    """An appliance spec: everything one bundle holds, declared and pinned.

    Any string value may name environment variables of the machine that reads the spec:
    ${NAME} is replaced by the variable's value (an unset or empty variable is an error at that
    value's path), $$ is a literal $. There are no defaults and no nesting. The shipped specs
    write the Debian mirror as url: ${DEBIAN_MIRROR}.
    """

    version: Literal[1]
    name: Name
    release: str = Field(description="release label, e.g. 2026.11.0")
    sequence: int | None = Field(
        default=None,
        ge=1,
        description="build sequence: a whole number that grows with every release of this "
        "appliance; install refuses a release with a lower one than the installed release",
    )
    upgrades_from: list[str] = Field(
        default_factory=list,
        description="the releases an installed appliance may upgrade from to this one (empty: any)",
    )
    description: str | None = None
    targets: list[Target] = Field(min_length=1)
    stack: Stack = Field(default_factory=Stack)
    # Checked even when absent: a stack choice may need a file (object_store: minio).
    files: list[FileArtifact] = Field(default_factory=list, validate_default=True)
    packages: Packages | None = None
    # Checked even when absent: a registry needs images to serve.
    images: list[Image] = Field(default_factory=list, validate_default=True)
    models: list[Model] = Field(default_factory=list)
    wheels: list[WheelSet] = Field(default_factory=list)
    gpus: list[Gpus] = Field(
        default_factory=list,
        description="the GPUs of the GPU nodes, for sizing: build-bundle warns when a model "
        "fits none of them",
    )
    # After packages and targets, which its validator reads.
    nvidia: Nvidia | None = Field(
        default=None,
        description="the NVIDIA driver of the GPU hosts, carried headless in the bundle's "
        "repository",
    )

    @field_validator("release")
    @classmethod
    def _release(cls, value: str) -> str:
        if not RELEASE_RE.match(value):
            raise err(
                "bad_release",
                "invalid release '{value}': use letters, digits, '.', '_', '+' or '-' "
                "(it becomes a directory name on every host)",
                value=value,
            )
        return value

    @field_validator("upgrades_from")
    @classmethod
    def _upgrades_from(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for index, label in enumerate(value):
            cls._release(label)
            if label in value[:index]:
                raise err("duplicate", "upgrades_from lists release '{value}' twice", value=label)
            if label == info.data.get("release"):
                raise err(
                    "bad_upgrades_from",
                    "upgrades_from names this spec's own release '{value}': a release upgrades "
                    "from older ones",
                    value=label,
                )
        return value

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[Target]) -> list[Target]:
        seen: set[tuple[str, str]] = set()
        for target in value:
            key = (target.os, target.arch)
            if key in seen:
                raise err("duplicate", "target {os}/{arch} is listed twice", os=key[0], arch=key[1])
            seen.add(key)
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: list[FileArtifact], info: ValidationInfo) -> list[FileArtifact]:
        check_unique(value, "name", "file name")
        stack = info.data.get("stack")
        if stack is not None and (missing := stack_files_missing(stack, {f.name for f in value})):
            # Formatted there: err() shortens long values, and the user needs each one whole.
            raise err("files_missing", missing)
        return value

    @field_validator("images")
    @classmethod
    def _images(cls, value: list[Image], info: ValidationInfo) -> list[Image]:
        check_unique(value, "ref", "image")
        stack = info.data.get("stack")
        if stack is not None and stack.registry in ("distribution", "harbor"):
            check_registry_images([image.ref for image in value], stack.registry)
        if stack is not None and stack.orchestrator == "k3s":
            check_k3s_registry(stack.registry)
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        check_unique(value, "name", "model name")
        stack = info.data.get("stack")
        runtime = stack.runtime if stack is not None else None
        # Only once the images validated (a bad one is reported on its own).
        if value and stack is not None and stack.orchestrator == "k3s" and "images" in info.data:
            check_k3s_runtime_image(stack.runtime, [image.ref for image in info.data["images"]])
        for model in value:
            if model.task == "embedding" and runtime not in EMBEDDING_RUNTIMES:
                raise err(
                    "task_unsupported",
                    "model '{name}' has task: embedding, which the {runtime} runtime role does "
                    "not serve (embedding models run on: {runtimes}); set stack.runtime to one "
                    "of them or remove the model",
                    name=model.name,
                    runtime=runtime,
                    runtimes=", ".join(EMBEDDING_RUNTIMES),
                )
        return value

    @field_validator("nvidia")
    @classmethod
    def _nvidia(cls, value: Nvidia | None, info: ValidationInfo) -> Nvidia | None:
        # A packages or targets section that failed validation has its own report.
        if value is not None and "packages" in info.data and "targets" in info.data:
            check_nvidia(value, info.data["packages"], info.data["targets"])
        stack, images = info.data.get("stack"), info.data.get("images") or []
        if value is not None and stack is not None and stack.orchestrator == "k3s":
            problem = k3s_gpu_problem(value.container_toolkit, [i.ref for i in images])
            if problem:
                raise err("k3s_needs_toolkit", problem)
        return value

    @field_validator("wheels")
    @classmethod
    def _wheels(cls, value: list[WheelSet]) -> list[WheelSet]:
        check_unique(value, "name", "wheel set name")
        return value


def all_field_names() -> frozenset[str]:
    """Every field name any spec model accepts; used to suggest fixes for typos."""
    models: list[type[BaseModel]] = [
        Spec,
        Target,
        Stack,
        FileArtifact,
        AptSource,
        Packages,
        Image,
        HuggingFaceModel,
        OllamaModel,
        S3Model,
        Sha256Sums,
        LocalModel,
        WheelSet,
        Gpus,
        Nvidia,
        NvidiaDriver,
        NvidiaAptSource,
    ]
    return frozenset(name for model in models for name in model.model_fields)
