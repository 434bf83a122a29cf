"""Where the models and GPUs to size come from: a spec, a bundle, a path on disk.

A spec's local models are sized from their files; its hub and Ollama models exist only once a
bundle is built, so they are listed as not sized, with what to do. A bundle's models are read
from its blob store through its manifest (the same files install lays out), without checking
the signature: sizing only reads headers, and ``verify-bundle`` is the check for trust.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from appliance.errors import SizingError
from appliance.sizing.gpus import GpuSet, custom_gpu, parse_gpu
from appliance.sizing.model import ModelFacts, model_facts, model_files


@dataclass
class Models:
    sized: list[ModelFacts] = field(default_factory=list)
    # Models that could not be sized here: (name, why).
    unsized: list[tuple[str, str]] = field(default_factory=list)
    gpus: list[GpuSet] = field(default_factory=list)

    def extend(self, other: Models) -> None:
        self.sized += other.sized
        self.unsized += other.unsized
        self.gpus += other.gpus


def from_path(path: Path) -> Models:
    name = path.name.removesuffix(".gguf") if path.is_file() else path.resolve().name
    return Models(sized=[model_facts(name, model_files(path))])


def from_spec(path: Path) -> Models:
    """The spec's local models, sized; its other models, listed; its GPUs."""
    from appliance.spec import load_spec
    from appliance.spec.models import LocalModel

    spec = load_spec(path)
    found = Models(gpus=spec_gpus(spec.gpus))
    for model in spec.models:
        if isinstance(model, LocalModel):
            source = Path(unquote(urlsplit(model.source).path)) if "://" in model.source else None
            location = source or Path(model.source)
            location = location if location.is_absolute() else path.parent / location
            _size(found, model.name, partial(model_files, location))
        else:
            found.unsized.append(
                (model.name, "fetched when the bundle is built: size the bundle with --bundle")
            )
    return found


def spec_gpus(entries: list[Any]) -> list[GpuSet]:
    """The spec's ``gpus:`` entries (validated already) as GPU sets."""
    return [
        parse_gpu(f"{entry.type}x{entry.count}")
        if entry.type is not None
        else custom_gpu(entry.memory_gib, entry.count)
        for entry in entries
    ]


def from_bundle(root: Path) -> Models:
    """A bundle directory's models, from the files its manifest lists."""
    from appliance.bundle.manifest import parse_manifest

    manifest_path = root / "manifest.json"
    try:
        manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    except OSError as exc:
        raise SizingError(
            f"{root} is not a bundle directory: {manifest_path} cannot be read ({exc.strerror})",
            hint="pass the directory build-bundle or unpack wrote",
        ) from exc
    return from_manifest_models(root, manifest.models())


def from_manifest_models(root: Path, models: list[dict[str, Any]]) -> Models:
    """Manifest.models() entries whose files lie under ``root`` (a bundle or a staged release)."""
    found = Models()
    for model in models:
        files = {entry["name"]: root / entry["path"] for entry in model["files"]}
        absent = sorted(name for name, path in files.items() if not path.is_file())
        if absent:
            found.unsized.append(
                (model["name"], f"its files are not in {root} ({', '.join(absent[:3])})")
            )
            continue
        _size(found, model["name"], partial(dict, files))
    return found


def _size(found: Models, name: str, files: Callable[[], Mapping[str, Path]]) -> None:
    """Size one model of many: one that cannot be sized is listed with the reason."""
    try:
        found.sized.append(model_facts(name, files()))
    except SizingError as error:
        found.unsized.append((name, error.message))
