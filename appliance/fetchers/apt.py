"""Debian packages: resolve a closure with apt, and write a signed flat repository for it.

``resolve`` asks apt itself, in an isolated root under a work directory, which packages a
minimal Debian target is missing; nothing of the build machine's own apt set-up is read, so the
answer depends only on the spec's sources and their signed indexes. ``write_repo`` turns the
fetched packages into a flat repository that the target's apt trusts through a key made for it.
Neither downloads a .deb: fetching and checksumming live with the bundle builder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import PackageResolveError
from appliance.fetchers.apt_repo import parse_field, replace_field, sign_repo, write_indexes
from appliance.fetchers.apt_root import AptRoot, CandidateCheck, Entry
from appliance.spec.models import Packages

_ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class DebPackage:
    """One binary package of a closure, as its source's signed index describes it."""

    name: str
    version: str
    arch: str
    filename: str
    url: str
    sha256: str
    size: int
    control: str


@dataclass(frozen=True)
class RepoIndex:
    """What ``write_repo`` wrote; every path is relative to the bundle root."""

    files: list[str]
    fingerprint: str
    key_path: str


def resolve(
    packages: Packages,
    arch: str,
    workdir: Path,
    *,
    preferences: str = "",
    watch: tuple[Sequence[str], CandidateCheck] | None = None,
    siblings: bool = False,
) -> list[DebPackage]:
    """Every package a minbase Debian target of ``arch`` lacks to install ``packages.install``.

    The target is assumed to hold what debootstrap --variant=minbase installs from these same
    sources, at the versions apt would pick today; recommends are not followed. Raises
    ``PackageResolveError`` when apt is missing, an index is not signed by its source's keyring,
    or a package is unknown or cannot be installed. A relative keyring path is taken relative to
    the current directory, so callers pass the spec's keyrings made absolute. ``preferences`` is
    an apt_preferences(5) text (pins) that the resolution obeys; ``watch`` names packages whose
    candidate versions go to a check before apt solves. With ``siblings``, the closure also
    carries each minbase package built from the same source as a closure package, at the same
    version: a host installed from an older point release lacks them (perl needs perl-base of
    its own version, gcc-12 its libgcc-s1), and apt there finds them nowhere else.
    """
    if not _ARCH_RE.match(arch):
        raise PackageResolveError(
            f"'{arch}' is not a Debian architecture name", hint="use e.g. amd64 or arm64"
        )
    with _exclusive(workdir / f"apt-{arch}.lock"):
        return _resolve(packages, arch, workdir, preferences, watch, siblings)


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold ``lock`` exclusively: the apt root under the build cache is one per architecture,
    shared by every build on the machine, and two builds updating it at once corrupt its lists
    (apt's srcpkgcache rename fails, or one build reads the other's sources)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _resolve(
    packages: Packages,
    arch: str,
    workdir: Path,
    preferences: str,
    watch: tuple[Sequence[str], CandidateCheck] | None,
    siblings: bool,
) -> list[DebPackage]:
    apt = AptRoot(workdir / f"apt-{arch}", arch, packages.sources, preferences)
    apt.update()
    # The closure depends only on the signed indexes and the request: when neither changed
    # since the last build, reuse it instead of asking apt again.
    request = preferences + ("\nsiblings" if siblings else "")
    remembered = workdir / f"closure-{arch}-{apt.fingerprint(packages, request)}.json"
    if remembered.is_file():
        return [DebPackage(**item) for item in json.loads(remembered.read_text())]
    if watch is not None:
        watch[1](apt.candidates(watch[0]))
    index = apt.read_index()
    baseline = apt.simulate(_minbase_names(index), index)
    apt.write_status([index[key].control for key in baseline])
    closure = apt.simulate(packages.install, index)
    if siblings:
        sources = {_source_name(index[key].control) for key in closure}
        closure += [key for key in baseline if _source_name(index[key].control) in sources]
    result = sorted((_deb_package(index[key]) for key in closure), key=lambda p: p.name)
    for stale in workdir.glob(f"closure-{arch}-*.json"):
        stale.unlink()
    remembered.write_text(json.dumps([dataclasses.asdict(p) for p in result]))
    return result


def write_repo(
    entries: list[tuple[DebPackage, str]], repo_dir: Path, *, label: str, workdir: Path
) -> RepoIndex:
    """Write a signed flat apt repository at ``repo_dir`` for ``entries``.

    Each entry pairs a package with where its .deb lies, relative to the bundle root
    (``repo_dir.parent``): the target's apt uses the bundle root as the source URI and
    ``repo/`` as the flat suite, so that path is what ``Filename:`` must say.
    """
    ordered = sorted(entries, key=lambda entry: (entry[0].name, entry[0].version))
    paragraphs = [replace_field(pkg.control, "Filename", path) for pkg, path in ordered]
    arches = sorted({pkg.arch for pkg, _ in ordered} - {"all"}) or ["all"]
    repo_dir.mkdir(parents=True, exist_ok=True)
    written = write_indexes(paragraphs, repo_dir, label=label, architectures=arches)
    fingerprint, signed, key = sign_repo(repo_dir, label=label, workdir=workdir)
    root = repo_dir.parent
    return RepoIndex(
        files=[path.relative_to(root).as_posix() for path in [*written, *signed, key]],
        fingerprint=fingerprint,
        key_path=key.relative_to(root).as_posix(),
    )


def _minbase_names(index: dict[tuple[str, str, str], Entry]) -> list[str]:
    # What debootstrap --variant=minbase asks for: every required (and so every Essential)
    # package, plus apt. For bookworm it also installs usr-is-merged, because it merges /usr
    # itself; without it apt would satisfy "usrmerge | usr-is-merged" with usrmerge and count
    # perl as present on a target that lacks it.
    names = {"apt", "usr-is-merged"}
    for entry in index.values():
        if (
            parse_field(entry.control, "Priority") == "required"
            or parse_field(entry.control, "Essential") == "yes"
        ):
            names.add(_package_name(entry.control))
    known = {name for name, _, _ in index}
    return sorted(names & known)


def _source_name(control: str) -> str:
    """The source package a binary is built from (``Source: NAME (VERSION)``, or its own)."""
    return (parse_field(control, "Source") or _package_name(control)).split()[0]


def _package_name(control: str) -> str:
    return parse_field(control, "Package") or ""


def _deb_package(entry: Entry) -> DebPackage:
    control = entry.control
    filename = parse_field(control, "Filename") or ""
    sha256 = parse_field(control, "SHA256")
    if not sha256:
        raise PackageResolveError(
            f"the index of apt source {entry.source.url} gives no SHA256 for {filename}",
            hint="use an archive whose Packages files carry SHA256 (every Debian archive does)",
        )
    return DebPackage(
        name=_package_name(control),
        version=parse_field(control, "Version") or "",
        arch=parse_field(control, "Architecture") or "",
        filename=filename,
        # A flat repository (NVIDIA's) may write "./NAME.deb".
        url=f"{entry.source.url.rstrip('/')}/{filename.removeprefix('./')}",
        sha256=sha256,
        size=int(parse_field(control, "Size") or 0),
        control=control,
    )
