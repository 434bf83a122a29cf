"""build-bundle: from a validated spec to a signed bundle directory.

The bundle is assembled in a staging directory next to the output and renamed into place only
when complete and signed, so an interrupted or failed build never leaves a half bundle.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from appliance import __version__
from appliance.bundle import layout
from appliance.bundle.content import ansible_content_tar, sbom
from appliance.bundle.manifest import (
    BaseRef,
    Component,
    FileEntry,
    Manifest,
    RepoInfo,
    Target,
    canonical_json,
    parse_manifest,
)
from appliance.bundle.signing import sign
from appliance.bundle.store import BlobStore
from appliance.errors import BuildError, KeyFileError
from appliance.fetchers.files import Fetched, Fetcher, Wanted, url_basename
from appliance.fetchers.images import fetch_images, write_layout
from appliance.fetchers.local_models import add_local_model, check_local_model
from appliance.fetchers.wheels import Wheel, build_own_wheel, fetch_pinned_wheel, resolve_wheels
from appliance.progress import NullProgress, Progress
from appliance.roles import ANSIBLE_DIR
from appliance.spec import Spec, load_spec
from appliance.spec.models import HuggingFaceModel, LocalModel, OllamaModel

SOURCE_ROOT = Path(__file__).resolve().parents[2]


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
    source_root: Path = SOURCE_ROOT


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


class _Assembly:
    """What the build has put in the bundle so far."""

    def __init__(self) -> None:
        self.files: list[FileEntry] = []
        self.components: list[Component] = []
        self.repo: RepoInfo | None = None

    def add(self, component: Component, *entries: FileEntry) -> None:
        self.components.append(component)
        self.files.extend(entries)


def build_bundle(options: BuildOptions, progress: Progress | None = None) -> BuildReport:
    started = time.monotonic()
    progress = progress or NullProgress()
    spec_bytes = _read(options.spec_path)
    spec = load_spec(options.spec_path)
    target = _pick_target(spec, options.target)
    _check_before_fetching(spec, options)

    report = BuildReport(options.output, spec.name, spec.release)
    with _staging(options) as staging:
        store = BlobStore(staging)
        cache = BlobStore(options.cache) if options.cache else None
        fetcher = Fetcher(store, cache, progress, jobs=options.jobs)
        parts = _Assembly()

        _files(spec, fetcher, parts, report)
        if spec.packages is not None:
            _packages(spec, target, staging, fetcher, parts, report, options)
        if spec.images:
            progress.note("fetching container images")
            _images(spec, target, staging, store, options, parts)
        progress.note("resolving wheels")
        _wheels(spec, target, store, options, parts)
        _models(spec, options.spec_path.parent, fetcher, parts, report)
        _ansible(store, options, parts)
        _installer(staging, parts)

        spec_sha256 = hashlib.sha256(spec_bytes).hexdigest()
        document = sbom(spec.name, spec.release, spec_sha256, parts.components, parts.files)
        sbom_bytes = canonical_json(document)
        (staging / layout.SBOM).write_bytes(sbom_bytes)
        parts.add(
            Component(name="sbom", kind="sbom", version="cyclonedx-1.5"),
            _entry(layout.SBOM, sbom_bytes, "sbom", "sbom"),
        )

        files, base = _delta(staging, parts.files, options.base)
        manifest = Manifest(
            name=spec.name,
            release=spec.release,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            appliance_version=__version__,
            spec_sha256=spec_sha256,
            target=target,
            stack=spec.stack.model_dump(),
            components=sorted(parts.components, key=lambda c: (c.kind, c.name)),
            files=sorted(files, key=lambda f: (f.path, f.component)),
            base=base,
            repo=parts.repo,
            packages=[p.partition("=")[0] for p in spec.packages.install] if spec.packages else [],
        )
        write_trust_files(staging, manifest, options.sign_key)
        report.files = len(manifest.shipped())
        report.bytes = sum(entry.size for entry in manifest.shipped().values())
        for entry in manifest.files:
            report.by_kind[entry.kind] = report.by_kind.get(entry.kind, 0) + 1
    report.seconds = time.monotonic() - started
    return report


def write_trust_files(bundle: Path, manifest: Manifest, sign_key: Path) -> None:
    """manifest.json, SHA256SUMS (every shipped file, manifest included), both signatures."""
    data = manifest.canonical()
    (bundle / layout.MANIFEST).write_bytes(data)
    lines = {path: entry.sha256 for path, entry in manifest.shipped().items()}
    lines[layout.MANIFEST] = hashlib.sha256(data).hexdigest()
    sums = "".join(f"{digest}  {path}\n" for path, digest in sorted(lines.items()))
    (bundle / layout.SHA256SUMS).write_text(sums)
    sign(sign_key, bundle / layout.MANIFEST)
    sign(sign_key, bundle / layout.SHA256SUMS)


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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""  # load_spec reports the problem with its own message


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


def _check_before_fetching(spec: Spec, options: BuildOptions) -> None:
    """Everything that can be known without the network, checked before the first byte."""
    if not options.sign_key.is_file():
        raise KeyFileError(
            f"signing key {options.sign_key} does not exist",
            hint="create one with `appliance keygen -o KEY` and pass --sign-key KEY",
        )
    for model in spec.models:
        if isinstance(model, LocalModel):
            check_local_model(model, options.spec_path.parent)
        elif isinstance(model, OllamaModel):
            from appliance.fetchers.ollama import parse_ref

            parse_ref(model)
        elif importlib.util.find_spec("huggingface_hub") is None:
            raise BuildError(
                f"model {model.name}: huggingface_hub is not installed; it lists the files of "
                "hf:// models",
                hint="install appliance with its build extra: pip install 'appliance[build]'",
            )
    if spec.packages is not None:
        for index, source in enumerate(spec.packages.sources):
            keyring = _spec_relative(options.spec_path, source.keyring)
            if not keyring.is_file():
                raise BuildError(
                    f"packages.sources[{index}].keyring: {keyring} does not exist",
                    hint="on Debian the archive keyring comes with debian-archive-keyring",
                )
    if options.output.exists() and not options.force:
        raise BuildError(
            f"{options.output} already exists",
            hint="choose another --output, or pass --force to replace it once the new bundle "
            "is complete",
        )


def _spec_relative(spec_path: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (spec_path.parent / path).resolve()


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


def _entry(path: str, data: bytes, kind: str, component: str) -> FileEntry:
    return FileEntry(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        kind=kind,
        component=component,
    )


def _blob_entry(sha256: str, size: int, kind: str, component: str, name: str) -> FileEntry:
    return FileEntry(
        path=layout.blob_path(sha256),
        sha256=sha256,
        size=size,
        kind=kind,
        component=component,
        name=name,
    )


def _tally(report: BuildReport, fetched: list[Fetched]) -> None:
    for item in fetched:
        if item.from_cache:
            report.cached_count += 1
            report.cached_bytes += item.size
        else:
            report.fetched_count += 1
            report.fetched_bytes += item.size


def _files(spec: Spec, fetcher: Fetcher, parts: _Assembly, report: BuildReport) -> None:
    wanted = [Wanted(f"file {f.name}", f.url, f.sha256) for f in spec.files]
    fetched = fetcher.fetch_all(wanted)
    _tally(report, fetched)
    for artifact, item in zip(spec.files, fetched, strict=True):
        parts.add(
            Component(
                name=artifact.name, kind="file", version=artifact.version, source=artifact.url
            ),
            _blob_entry(
                artifact.sha256, item.size, "file", artifact.name, url_basename(artifact.url)
            ),
        )


def _packages(
    spec: Spec,
    target: Target,
    staging: Path,
    fetcher: Fetcher,
    parts: _Assembly,
    report: BuildReport,
    options: BuildOptions,
) -> None:
    from appliance.fetchers import apt

    assert spec.packages is not None
    apt_dir = (options.cache / "apt") if options.cache else staging / ".apt"
    apt_dir.mkdir(parents=True, exist_ok=True)
    fetcher.progress.note("resolving OS packages")
    # Keyring paths in a spec are relative to the spec file, not to where appliance runs.
    sources = [
        source.model_copy(
            update={"keyring": str(_spec_relative(options.spec_path, source.keyring))}
        )
        for source in spec.packages.sources
    ]
    packages = spec.packages.model_copy(update={"sources": sources})
    debs = apt.resolve(packages, target.arch, apt_dir)
    wanted = [Wanted(f"deb {d.name}", d.url, d.sha256, d.size) for d in debs]
    fetched = fetcher.fetch_all(wanted)
    _tally(report, fetched)
    for deb in debs:
        parts.add(
            Component(
                name=f"{deb.name}:{deb.arch}", kind="deb", version=deb.version, source=deb.url
            ),
            _blob_entry(
                deb.sha256,
                deb.size,
                "deb",
                f"{deb.name}:{deb.arch}",
                f"{deb.name}_{deb.version.split(':')[-1]}_{deb.arch}.deb",
            ),
        )
    with tempfile.TemporaryDirectory(prefix="appliance-repo-") as work:
        index = apt.write_repo(
            [(deb, layout.blob_path(deb.sha256)) for deb in debs],
            staging / layout.REPO,
            label=f"appliance {spec.name} {spec.release}",
            workdir=Path(work),
        )
    entries = [
        _entry(path, (staging / path).read_bytes(), "repo-index", "repo") for path in index.files
    ]
    parts.add(Component(name="repo", kind="repo-index", version=spec.release), *entries)
    parts.repo = RepoInfo(path=layout.REPO, key=index.key_path, fingerprint=index.fingerprint)


def _images(
    spec: Spec,
    target: Target,
    staging: Path,
    store: BlobStore,
    options: BuildOptions,
    parts: _Assembly,
) -> None:
    with tempfile.TemporaryDirectory(prefix="appliance-oci-") as tmp:
        # The cache keeps skopeo's layout: a rebuild finds every blob already there.
        work = options.cache / "oci" if options.cache else Path(tmp)
        fetched = fetch_images(list(spec.images), target.arch, store, work)
    for image in fetched:
        parts.add(
            Component(
                name=image.ref, kind="image", version=image.manifest_digest, source=image.ref
            ),
            *(
                _blob_entry(digest, size, "image", image.ref, image.ref)
                for digest, size in image.blobs
            ),
        )
    entries = [
        _entry(name, (staging / name).read_bytes(), "image-index", "images")
        for name in write_layout(staging, fetched)
    ]
    parts.add(Component(name="images", kind="image-index", version="oci-1.0.0"), *entries)


def _wheel_component(wheel: Wheel, wheel_set: str) -> tuple[Component, str]:
    project, version = wheel.filename.split("-")[:2]
    name = f"{project.lower().replace('_', '-')}:{wheel_set}"
    return Component(name=name, kind="wheel", version=version, source="pypi"), name


def _wheels(
    spec: Spec, target: Target, store: BlobStore, options: BuildOptions, parts: _Assembly
) -> None:
    constraints = options.source_root / "requirements" / "constraints.txt"
    own = build_own_wheel(options.source_root, store)
    runtime = [r for r in importlib.metadata.requires("appliance") or [] if "extra ==" not in r]
    sets = [
        ("installer", [*runtime, "pip"], "3.11", constraints if constraints.is_file() else None)
    ]
    sets += [(w.name, list(w.requirements), w.python, None) for w in spec.wheels]
    cache = BlobStore(options.cache) if options.cache else None
    for set_name, requirements, python, pins in sets:
        wheels = resolve_wheels(
            requirements,
            python=python,
            os_name=target.os,
            arch=target.arch,
            store=cache or store,
            cache_dir=options.cache,
            constraints=pins,
            what=f"wheels {set_name}",
        )
        if cache is not None:
            for wheel in wheels:
                store.link_from(cache, wheel.sha256)
        if set_name == "installer":
            wheels = [own, *wheels]
        for wheel in wheels:
            component, name = _wheel_component(wheel, set_name)
            parts.add(
                component,
                _blob_entry(wheel.sha256, wheel.size, "wheel", name, wheel.filename),
            )


def _models(
    spec: Spec, spec_dir: Path, fetcher: Fetcher, parts: _Assembly, report: BuildReport
) -> None:
    """Each model is one component; each of its files a blob named by its path inside the
    model (for Ollama, its place under OLLAMA_MODELS)."""
    for model in spec.models:
        version: str | None
        if isinstance(model, LocalModel):
            files = add_local_model(model, spec_dir, fetcher.store, fetcher.jobs)
            version = model.format
        elif isinstance(model, HuggingFaceModel):
            # Imported here: huggingface_hub is a build-machine dependency, not an installer one.
            from appliance.fetchers.hf import fetch_hf_model

            files, fetched = fetch_hf_model(model, fetcher)
            _tally(report, fetched)
            version = model.revision
        else:
            from appliance.fetchers.ollama import fetch_ollama_model

            files, fetched = fetch_ollama_model(model, fetcher)
            _tally(report, fetched)
            version = model.digest
        parts.add(
            Component(name=model.name, kind="model", version=version, source=model.source),
            *(_blob_entry(f.sha256, f.size, "model", model.name, f.relative) for f in files),
        )


def _ansible(store: BlobStore, options: BuildOptions, parts: _Assembly) -> None:
    pins = options.source_root / "requirements" / "collections.txt"
    with tempfile.TemporaryDirectory(prefix="appliance-collections-") as tmp:
        where = options.cache / "collections-wheel" if options.cache else Path(tmp)
        wheel = fetch_pinned_wheel(pins, where) if pins.is_file() else None
        data = ansible_content_tar(ANSIBLE_DIR, wheel)
    blob = store.add_bytes(data)
    parts.add(
        Component(name="ansible-content", kind="ansible-content", version=__version__),
        _blob_entry(
            blob.sha256, blob.size, "ansible-content", "ansible-content", "ansible-content.tar"
        ),
    )


def _installer(staging: Path, parts: _Assembly) -> None:
    script = resources.files("appliance.bundle").joinpath("install.sh").read_bytes()
    path = staging / layout.INSTALL_SH
    path.write_bytes(script)
    path.chmod(0o755)
    parts.add(
        Component(name="install.sh", kind="installer", version=__version__),
        _entry(layout.INSTALL_SH, script, "installer", "install.sh"),
    )
