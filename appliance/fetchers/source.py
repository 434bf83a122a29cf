"""The one interface every source kind implements, and what build-bundle hands it.

A source kind is one kind of thing a bundle carries: files, OS packages, container images,
wheel sets, each kind of model, the installer, the Ansible content. build-bundle
(``appliance/build``) drives every kind the same way, from one table
(``appliance.build.registry.SOURCES``), in three steps:

1. ``check(request)``: everything that can be known without the network (paths exist, tools are
   installed, references parse), returning the kind's plan, or None when the spec asks nothing
   of this kind. Every kind's check runs before any kind fetches a byte, so a bad spec fails
   before anything is downloaded.
2. ``fetch(job, plan)``: bring the artifacts into ``job.store`` (through ``job.cache`` when
   there is one), each checked against its pinned digest on the way in.
3. ``describe(job, fetched)``: what the manifest and the SBOM say about them: components, file
   entries, and any manifest field the kind owns (``Part.fields``).

Adding a source kind (k3s artifacts; an apt repository such as NVIDIA's is instead a kind of
apt source, resolved with the others into one repository: see ``appliance/spec/nvidia.py``):

1. Write ``appliance/fetchers/<kind>.py`` with a class that has these three methods (see
   ``files.py``, the smallest). Download through ``job.fetcher`` (hashing, resume, retries,
   cache and progress come with it; a protocol other than HTTP gives each ``Wanted`` an
   ``opener``, as ``s3.py`` does) or file bytes with ``job.store``; put offline checks in
   ``check``, not in ``fetch``. Raise the ``ApplianceError`` class that fits (``BuildError``
   for a spec the kind cannot serve, ``FetchError`` for the network, ``ChecksumMismatchError``
   for a digest), with a hint.
2. Add one entry to ``SOURCES`` in ``appliance/build/registry.py``.
3. Add its spec section in ``appliance/spec/models.py`` and unit tests under
   ``tests/unit/fetchers/``.

A kind imports the bundle's leaf modules (store, layout, manifest), the spec, errors, progress
and other fetchers, never ``appliance.build``: the build depends on the kinds, not back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from appliance.bundle import layout
from appliance.bundle.manifest import Component, FileEntry, FileKind, Target
from appliance.bundle.store import BlobStore

if TYPE_CHECKING:  # download.py is below the kinds; imported for types only
    from appliance.fetchers.download import Fetcher
    from appliance.fetchers.gnupg import RepoKey
    from appliance.progress import Progress
    from appliance.spec import Spec

PlanT = TypeVar("PlanT")


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org) when it is set to a number of seconds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(epoch) if epoch.isdigit() else None


FetchedT = TypeVar("FetchedT")


@dataclass
class Request:
    """What a check may look at: the spec and the build's settings, nothing fetched yet."""

    spec: Spec
    spec_path: Path
    target: Target
    cache_dir: Path | None
    warnings: list[str] = field(default_factory=list)
    repo_key: RepoKey | None = None  # the operator's apt repository key (--repo-key), checked
    epoch: int | None = None  # SOURCE_DATE_EPOCH: the time every dated thing in the bundle says

    @property
    def spec_dir(self) -> Path:
        return self.spec_path.parent

    def spec_relative(self, value: str) -> Path:
        """A path the spec names: relative ones are relative to the spec file."""
        path = Path(value)
        return path if path.is_absolute() else (self.spec_dir / path).resolve()

    def warn(self, message: str) -> None:
        """Something the bundle's users must know, though the build goes on."""
        self.warnings.append(message)


@dataclass(kw_only=True)
class Job(Request):
    """What fetch and describe work with: the bundle being assembled and the stores."""

    staging: Path
    store: BlobStore  # the bundle's own blobs
    fetcher: Fetcher
    scratch: Path  # a directory for this build only, deleted afterwards

    @property
    def cache(self) -> BlobStore | None:
        return self.fetcher.cache

    @property
    def landing(self) -> BlobStore:
        """Where new blobs go first: the cache when there is one, else the bundle."""
        return self.fetcher.cache or self.store

    @property
    def progress(self) -> Progress:
        return self.fetcher.progress

    def take(self, sha256: str) -> None:
        """Make a blob that landed in the cache part of the bundle (a hard link)."""
        if self.fetcher.cache is not None:
            self.store.link_from(self.fetcher.cache, sha256)

    def work_dir(self, name: str) -> Path:
        """A directory kept between builds in the cache (apt's indexes, skopeo's layout), or
        one for this build only without a cache."""
        path = (self.cache_dir or self.scratch) / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Part:
    """What one source kind adds to the manifest and the SBOM."""

    components: list[Component] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    # Manifest fields this kind owns (e.g. the packages kind's ``repo``); two kinds never
    # set the same field.
    fields: dict[str, Any] = field(default_factory=dict)

    def add(self, component: Component, *entries: FileEntry) -> None:
        self.components.append(component)
        self.files.extend(entries)


class SourceKind(Protocol[PlanT, FetchedT]):
    """One kind of thing a bundle carries. See the module's docstring for the contract."""

    def check(self, request: Request) -> PlanT | None: ...

    def fetch(self, job: Job, plan: PlanT) -> FetchedT: ...

    def describe(self, job: Job, fetched: FetchedT) -> Part: ...


def blob_entry(sha256: str, size: int, kind: FileKind, component: str, name: str) -> FileEntry:
    """The manifest entry of a blob; ``name`` is the artifact's own file name."""
    return FileEntry(
        path=layout.blob_path(sha256),
        sha256=sha256,
        size=size,
        kind=kind,
        component=component,
        name=name,
    )


def file_entry(path: str, data: bytes, kind: FileKind, component: str) -> FileEntry:
    """The manifest entry of a file at ``path`` in the bundle, holding ``data``."""
    return FileEntry(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        kind=kind,
        component=component,
    )
