"""build-bundle: from a validated spec to a signed bundle directory.

Every source kind in ``registry.SOURCES`` checks the spec first, all of them before any fetches
a byte; then each fetches into the bundle's blob store and describes what it added, and the
build writes the SBOM, the manifest and the signatures. The bundle is assembled in a staging
directory next to the output and renamed into place only when complete and signed, so an
interrupted or failed build never leaves a half bundle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.build.sizing import gpu_warnings
from appliance.bundle import layout
from appliance.bundle.content import public_source, sbom
from appliance.bundle.inspect import stack_notes
from appliance.bundle.manifest import (
    BaseRef,
    Component,
    FileEntry,
    Manifest,
    Target,
    canonical_json,
    parse_manifest,
)
from appliance.bundle.signing import write_trust_files
from appliance.bundle.store import BlobStore
from appliance.errors import BuildError, KeyFileError
from appliance.fetchers.download import Fetcher
from appliance.fetchers.gnupg import load_repo_key
from appliance.fetchers.source import (
    Job,
    Part,
    Request,
    SourceKind,
    file_entry,
    source_date_epoch,
)
from appliance.progress import NullProgress, Progress
from appliance.spec import Spec, load_spec_bytes


@dataclass
class BuildOptions:
    spec_path: Path
    output: Path
    sign_key: Path
    cache: Path | None = None
    jobs: int = 4
    target: str | None = None  # "os/arch"; required when the spec names several
    force: bool = False
    base: Path | None = None  # a base bundle's manifest.json: build a delta on top of it
    repo_key: Path | None = None  # an armored secret key that signs the apt repository


@dataclass
class BuildReport:
    output: Path
    name: str
    release: str
    files: int = 0
    bytes: int = 0
    fetched_bytes: int = 0
    fetched_count: int = 0
    cached_bytes: int = 0
    cached_count: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    # What the bundle's users must know though the build succeeded (e.g. packages the hosts
    # must already have).
    warnings: list[str] = field(default_factory=list)


def build_bundle(
    options: BuildOptions,
    progress: Progress | None = None,
    sources: Mapping[str, SourceKind[Any, Any]] | None = None,
) -> BuildReport:
    """Build the bundle ``options`` describe with ``sources`` (default: every kind)."""
    if sources is None:
        from appliance.build.registry import SOURCES

        sources = SOURCES
    started = time.monotonic()
    progress = progress or NullProgress()
    spec, spec_bytes = load_spec_bytes(options.spec_path)
    target = _pick_target(spec, options.target)
    _check_options(options)
    epoch = source_date_epoch()
    repo_key = (
        None
        if options.repo_key is None
        else load_repo_key(options.repo_key, Path(tempfile.gettempdir()), epoch)
    )
    request = Request(
        spec, options.spec_path, target, options.cache, repo_key=repo_key, epoch=epoch
    )
    # Every kind's check before any kind's fetch: a bad spec costs no download.
    plans = {name: kind.check(request) for name, kind in sources.items()}

    report = BuildReport(options.output, spec.name, spec.release, warnings=request.warnings)
    with _staging(options) as staging, tempfile.TemporaryDirectory(prefix="appliance-") as tmp:
        store = BlobStore(staging)
        cache = BlobStore(options.cache) if options.cache else None
        fetcher = Fetcher(store, cache, progress, jobs=options.jobs)
        job = Job(
            spec=spec,
            spec_path=options.spec_path,
            target=target,
            cache_dir=options.cache,
            warnings=request.warnings,
            repo_key=repo_key,
            epoch=epoch,
            staging=staging,
            store=store,
            fetcher=fetcher,
            scratch=Path(tmp),
        )
        parts = [
            kind.describe(job, kind.fetch(job, plans[name]))
            for name, kind in sources.items()
            if plans[name] is not None
        ]
        spec_sha256 = hashlib.sha256(spec_bytes).hexdigest()
        for part in parts:
            part.components = [_public(c) for c in part.components]
        parts.append(_sbom(staging, spec, spec_sha256, parts))
        components = [c for part in parts for c in part.components]
        # Sized from the fetched files, before a delta drops those its base holds.
        report.warnings += gpu_warnings(list(spec.gpus), _models(components, parts), staging)
        report.warnings += stack_notes(
            spec.stack.model_dump(), {f.name: f.version for f in spec.files}
        )
        files, base = _delta(staging, [f for part in parts for f in part.files], options.base)
        manifest = Manifest(
            name=spec.name,
            release=spec.release,
            created=_created(epoch),
            appliance_version=__version__,
            spec_sha256=spec_sha256,
            target=target,
            stack=spec.stack.model_dump(),
            components=sorted(components, key=lambda c: (c.kind, c.name)),
            files=sorted(files, key=lambda f: (f.path, f.component)),
            base=base,
            sequence=spec.sequence,
            upgrades_from=list(spec.upgrades_from),
            **_fields(parts),
        )
        write_trust_files(staging, manifest, options.sign_key)
        report.files = len(manifest.shipped())
        report.bytes = sum(entry.size for entry in manifest.shipped().values())
        for entry in manifest.files:
            report.by_kind[entry.kind] = report.by_kind.get(entry.kind, 0) + 1
    report.fetched_count, report.fetched_bytes = fetcher.fetched.count, fetcher.fetched.bytes
    report.cached_count, report.cached_bytes = fetcher.cached.count, fetcher.cached.bytes
    report.seconds = time.monotonic() - started
    return report


def _public(component: Component) -> Component:
    """The component as a bundle may record it: see ``content.public_source``."""
    source = public_source(component.kind, component.source)
    return (
        component if source == component.source else component.model_copy(update={"source": source})
    )


def _created(epoch: int | None) -> str:
    """The build time, or SOURCE_DATE_EPOCH's (reproducible-builds.org) when it is set, so two
    builds of one spec can be compared byte for byte."""
    when = datetime.fromtimestamp(epoch, UTC) if epoch is not None else datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _models(components: list[Component], parts: list[Part]) -> list[dict[str, Any]]:
    """The models as Manifest.models() lists them, from the parts before the manifest exists."""
    files = [f for part in parts for f in part.files if f.kind == "model"]
    models = [c for c in components if c.kind == "model"]
    if not models:
        return []
    # Only the two fields models() reads: the manifest itself is written later.
    partial: dict[str, Any] = {"components": models, "files": files}
    return Manifest.model_construct(**partial).models()


def _sbom(staging: Path, spec: Spec, spec_sha256: str, parts: list[Part]) -> Part:
    components = [c for part in parts for c in part.components]
    entries = [f for part in parts for f in part.files]
    nvidia = next((part.fields["nvidia"] for part in parts if "nvidia" in part.fields), None)
    data = canonical_json(
        sbom(spec.name, spec.release, spec_sha256, components, entries, nvidia=nvidia)
    )
    (staging / layout.SBOM).write_bytes(data)
    part = Part()
    part.add(
        Component(name="sbom", kind="sbom", version="cyclonedx-1.5"),
        file_entry(layout.SBOM, data, "sbom", "sbom"),
    )
    return part


def _fields(parts: list[Part]) -> dict[str, Any]:
    """The manifest fields the kinds own; two kinds claiming one field is a bug."""
    fields: dict[str, Any] = {}
    for part in parts:
        for name, value in part.fields.items():
            assert name not in fields, f"two source kinds set the manifest field {name}"
            fields[name] = value
    return fields


def _delta(
    staging: Path, files: list[FileEntry], base_manifest: Path | None
) -> tuple[list[FileEntry], BaseRef | None]:
    """For a delta: drop every blob the base already holds, and mark it as the base's."""
    if base_manifest is None:
        return files, None
    try:
        data = base_manifest.read_bytes()
    except OSError as exc:
        raise BuildError(
            f"cannot read the base manifest {base_manifest}: {exc.strerror}",
            hint="pass --base PATH/manifest.json of the bundle the hosts already hold",
        ) from exc
    base = parse_manifest(data, str(base_manifest))
    held = {entry.path for entry in base.shipped().values() if entry.path.startswith(layout.BLOBS)}
    held |= {e.path for e in base.files if e.from_base}  # a delta on a delta: the chain holds it
    marked = []
    for entry in files:
        if entry.path in held:
            (staging / entry.path).unlink(missing_ok=True)
            entry = entry.model_copy(update={"from_base": True})
        marked.append(entry)
    reference = BaseRef(
        sha256=hashlib.sha256(data).hexdigest(), name=base.name, release=base.release
    )
    return marked, reference


def _pick_target(spec: Spec, wanted: str | None) -> Target:
    names = [f"{t.os}/{t.arch}" for t in spec.targets]
    if wanted is None and len(names) == 1:
        wanted = names[0]
    if wanted not in names:
        raise BuildError(
            f"choose the target to build for: one bundle holds one target ({', '.join(names)})"
            if wanted is None
            else f"target {wanted} is not in the spec ({', '.join(names)})",
            hint="pass --target OS/ARCH",
        )
    os_name, arch = wanted.split("/")
    return Target(os=os_name, arch=arch)


def _check_options(options: BuildOptions) -> None:
    """What the build itself needs, checked with the kinds' checks, before the first byte."""
    if not options.sign_key.is_file():
        raise KeyFileError(
            f"signing key {options.sign_key} does not exist",
            hint="create one with `appliance keygen -o KEY` and pass --sign-key KEY",
        )
    if options.output.exists() and not options.force:
        raise BuildError(
            f"{options.output} already exists",
            hint="choose another --output, or pass --force to replace it once the new bundle "
            "is complete",
        )


@contextmanager
def _staging(options: BuildOptions) -> Iterator[Path]:
    options.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{options.output.name}.partial-", dir=options.output.parent)
    )
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be read
    try:
        yield staging
        old = None
        if options.output.exists():
            old = options.output.with_name(f".{options.output.name}.old-{os.getpid()}")
            options.output.rename(old)
        staging.rename(options.output)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
