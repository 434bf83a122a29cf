"""Debian packages: resolve a closure with apt, and write a signed flat repository for it.

``resolve`` asks apt itself, in an isolated root under a work directory, which packages a
minimal Debian target is missing; nothing of the build machine's own apt set-up is read, so the
answer depends only on the spec's sources and their signed indexes. ``write_repo`` turns the
fetched packages into a flat repository that the target's apt trusts through a key made for it.
Neither downloads a .deb: fetching and checksumming live with the bundle builder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import PackageResolveError
from appliance.fetchers.apt_repo import parse_field, replace_field, sign_repo, write_indexes
from appliance.spec.models import AptSource, Packages

_ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# `Inst NAME [OLD] (VERSION RELEASE[, RELEASE...] [ARCH])`, as `apt-get -s` prints it.
_INST_RE = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([^\]]+)\]\)", re.MULTILINE)
# apt's progress lines, noise in an error report.
_PROGRESS = ("Reading package lists", "Building dependency tree", "Reading state information")
# Fields of an index entry that describe the .deb file, not the installed package.
_FILE_FIELDS = ("Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512", "Description-md5")


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


@dataclass(frozen=True)
class _Entry:
    control: str
    source: AptSource


def resolve(packages: Packages, arch: str, workdir: Path) -> list[DebPackage]:
    """Every package a minbase Debian target of ``arch`` lacks to install ``packages.install``.

    The target is assumed to hold what debootstrap --variant=minbase installs from these same
    sources, at the versions apt would pick today; recommends are not followed. Raises
    ``PackageResolveError`` when apt is missing, an index is not signed by its source's keyring,
    or a package is unknown or cannot be installed. A relative keyring path is taken relative to
    the current directory, so callers pass the spec's keyrings made absolute.
    """
    if not _ARCH_RE.match(arch):
        raise PackageResolveError(
            f"'{arch}' is not a Debian architecture name", hint="use e.g. amd64 or arm64"
        )
    apt = _AptRoot(workdir / f"apt-{arch}", arch, packages.sources)
    apt.update()
    # The closure depends only on the signed indexes and the request: when neither changed
    # since the last build, reuse it instead of asking apt again.
    remembered = workdir / f"closure-{arch}-{apt.fingerprint(packages)}.json"
    if remembered.is_file():
        return [DebPackage(**item) for item in json.loads(remembered.read_text())]
    index = apt.read_index()
    baseline = apt.simulate(_minbase_names(index), index)
    apt.write_status([index[key].control for key in baseline])
    closure = apt.simulate(packages.install, index)
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


def _minbase_names(index: dict[tuple[str, str, str], _Entry]) -> list[str]:
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


def _package_name(control: str) -> str:
    return parse_field(control, "Package") or ""


def _deb_package(entry: _Entry) -> DebPackage:
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
        url=f"{entry.source.url.rstrip('/')}/{filename}",
        sha256=sha256,
        size=int(parse_field(control, "Size") or 0),
        control=control,
    )


def _status_paragraph(control: str) -> str:
    lines: list[str] = []
    keep = True
    for line in control.split("\n"):
        if not line[:1].isspace():
            keep = line.partition(":")[0] not in _FILE_FIELDS
        if keep:
            lines.append(line)
    lines.insert(1, "Status: install ok installed")
    return "\n".join(lines)


def _describe(source: AptSource) -> str:
    return f"{source.url} ({' '.join(source.suites)}; {' '.join(source.components)})"


class _AptRoot:
    """An apt configuration, state and cache of its own, under one directory."""

    def __init__(self, root: Path, arch: str, sources: Sequence[AptSource]) -> None:
        self.apt_get = shutil.which("apt-get")
        if self.apt_get is None:
            raise PackageResolveError(
                "apt-get is not installed on this build machine; it resolves Debian packages",
                hint="install apt (on Debian or Ubuntu it is always there; elsewhere install "
                "your distribution's 'apt' package)",
            )
        self.root = root.resolve()
        if re.search(r'[\s"]', str(self.root)):
            raise PackageResolveError(
                f"work directory '{self.root}' contains whitespace or a quote, which apt's "
                "configuration syntax cannot hold",
                hint="choose a work directory whose path has neither",
            )
        self.sources = list(sources)
        # Indexes from an earlier run stay (apt then fetches only what changed, which keeps
        # rebuilds fast); everything else is written afresh. A failed update deletes them, so
        # a stale index never stands in for one that failed to update.
        self.lists = self.root / "state/lists"
        if self.root.exists():
            for child in self.root.iterdir():
                if child.name != "state":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            for child in (self.root / "state").iterdir():
                if child != self.lists:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        for sub in (
            "etc/apt.conf.d", "etc/sources.list.d", "etc/preferences.d", "etc/trusted.gpg.d",
            "keyrings", "state/lists/partial", "cache/archives/partial",
        ):  # fmt: skip
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.status = self.root / "state/status"
        self.status.write_text("")
        (self.root / "etc/sources.sources").write_text(self._sources_text())
        self.config = self.root / "apt.conf"
        self.config.write_text(self._config_text(arch))

    def _sources_text(self) -> str:
        stanzas = []
        for number, source in enumerate(self.sources, start=1):
            keyring = Path(source.keyring)
            if not keyring.is_file():
                raise PackageResolveError(
                    f"keyring '{source.keyring}' of apt source {source.url} does not exist",
                    hint="point keyring at the OpenPGP key file that signs the archive, e.g. "
                    "/usr/share/keyrings/debian-archive-keyring.gpg for Debian",
                )
            # A copy under the root keeps the path free of characters that Signed-By cannot
            # hold; apt tells armored from binary keys by the .asc extension alone.
            suffix = ".asc" if keyring.suffix == ".asc" else ".gpg"
            copy = self.root / "keyrings" / f"source-{number}{suffix}"
            shutil.copyfile(keyring, copy)
            stanzas.append(
                f"Types: deb\nURIs: {source.url}\nSuites: {' '.join(source.suites)}\n"
                f"Components: {' '.join(source.components)}\nSigned-By: {copy}\n"
            )
        return "\n".join(stanzas)

    def _config_text(self, arch: str) -> str:
        # Read through APT_CONFIG, before apt would read /etc/apt/apt.conf.d: an -o option comes
        # too late to keep the build machine's own settings (proxies, pins, hooks) out.
        etc, state, cache = self.root / "etc", self.root / "state", self.root / "cache"
        settings = {
            "Dir::Etc::main": "/dev/null",
            "Dir::Etc::parts": etc / "apt.conf.d",
            "Dir::Etc::sourcelist": etc / "sources.sources",
            "Dir::Etc::sourceparts": etc / "sources.list.d",
            "Dir::Etc::trusted": etc / "trusted.gpg",
            "Dir::Etc::trustedparts": etc / "trusted.gpg.d",
            "Dir::Etc::preferences": etc / "preferences",
            "Dir::Etc::preferencesparts": etc / "preferences.d",
            "Dir::State": state,
            "Dir::State::lists": state / "lists",
            "Dir::State::status": self.status,
            "Dir::Cache": cache,
            "Dir::Cache::archives": cache / "archives",
            "APT::Architecture": arch,
            "Acquire::Languages": "none",
            "APT::Install-Recommends": "false",
            "APT::Install-Suggests": "false",
        }
        lines = [f'{key} "{value}";' for key, value in settings.items()]
        lines.append(f'APT::Architectures {{ "{arch}"; }};')
        return "\n".join(lines) + "\n"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if key != "LANGUAGE"}
        # apt's messages are parsed below, so they must not be translated.
        env.update(APT_CONFIG=str(self.config), LC_ALL="C.UTF-8")
        return subprocess.run(  # noqa: S603 - fixed executable, arguments validated by the spec
            [str(self.apt_get), *args], capture_output=True, text=True, env=env, check=False
        )

    def fingerprint(self, packages: Packages) -> str:
        """Digest of the signed Release files apt now holds and of the request."""
        digest = hashlib.sha256(packages.model_dump_json().encode())
        for release in sorted(self.lists.glob("*Release")):
            digest.update(release.name.encode() + b"\0" + release.read_bytes())
        return digest.hexdigest()[:32]

    def update(self) -> None:
        result = self._run("update", "--error-on=any")
        output = result.stdout + result.stderr
        # A misspelt component or a missing architecture is only a warning to apt; it would
        # leave the closure silently short of that component's packages.
        skipped = [line for line in output.splitlines() if "Skipping acquire" in line]
        if result.returncode == 0 and not skipped:
            return
        shutil.rmtree(self.lists)
        failing = [s for s in self.sources if s.url.rstrip("/") in output] or self.sources
        errors = "\n".join(line for line in output.splitlines() if line.startswith(("E:", "W:")))
        where = ", ".join(_describe(s) for s in failing)
        if re.search(r"NO_PUBKEY|BADSIG|EXPKEYSIG|signatures were invalid|is not signed", output):
            keyrings = ", ".join(f"'{s.keyring}'" for s in failing)
            raise PackageResolveError(
                f"the index of apt source {where} is not signed by a key in keyring "
                f"{keyrings}:\n{errors}",
                hint="set keyring to the archive's own signing key (for Debian: "
                "/usr/share/keyrings/debian-archive-keyring.gpg) and check that nothing "
                "between this machine and the archive rewrites its files",
            )
        if skipped:
            raise PackageResolveError(
                f"apt source {where} lacks a component or architecture the spec asks for:\n"
                + "\n".join(skipped),
                hint="check the spelling of the components and that the suite has them for "
                "this architecture",
            )
        raise PackageResolveError(
            f"apt-get update failed for apt source {where}:\n{errors}",
            hint="check the URL and suite names, and that this machine reaches the archive",
        )

    def read_index(self) -> dict[tuple[str, str, str], _Entry]:
        """Every entry of the fetched Packages indexes by (name, version, arch)."""
        result = self._run(
            "indextargets", "--format", "$(FILENAME)\t$(SOURCESENTRY)", "Identifier: Packages"
        )
        if result.returncode != 0 or not result.stdout.strip():
            raise PackageResolveError(
                "apt-get indextargets lists no Packages index after a successful update:\n"
                + result.stderr.strip(),
                hint="this is a bug in appliance or an unusual apt; please report it",
            )
        index: dict[tuple[str, str, str], _Entry] = {}
        for line in result.stdout.splitlines():
            filename, _, entry = line.partition("\t")
            # SOURCESENTRY is "FILE:N", N counting the stanzas of the sources file from 1.
            source = self.sources[int(entry.rpartition(":")[2]) - 1]
            text = Path(filename).read_text(encoding="utf-8")
            for control in text.split("\n\n"):
                control = control.strip("\n")
                key = (
                    parse_field(control, "Package"),
                    parse_field(control, "Version"),
                    parse_field(control, "Architecture"),
                )
                if key[0] and key[1] and key[2]:
                    # One version in two sources is one file (apt checks it against either
                    # index); the source listed first serves it.
                    index.setdefault((key[0], key[1], key[2]), _Entry(control, source))
        return index

    def write_status(self, controls: list[str]) -> None:
        self.status.write_text("".join(_status_paragraph(c) + "\n\n" for c in controls))

    def simulate(
        self, requested: Sequence[str], index: dict[tuple[str, str, str], _Entry]
    ) -> list[tuple[str, str, str]]:
        """(name, version, arch) of every package apt would install for ``requested``."""
        result = self._run("-s", "install", "--no-install-recommends", "--", *requested)
        if result.returncode != 0:
            raise self._install_error(result.stdout + result.stderr, index)
        planned = [
            (name.partition(":")[0], version, arch)
            for name, version, arch in _INST_RE.findall(result.stdout)
        ]
        missing = [key for key in planned if key not in index]
        if missing:
            raise PackageResolveError(
                f"apt plans to install {missing[0][0]} {missing[0][1]}, which no fetched "
                "index lists",
                hint="this is a bug in appliance; please report it with the spec",
            )
        return planned

    def _install_error(
        self, output: str, index: dict[tuple[str, str, str], _Entry]
    ) -> PackageResolveError:
        where = ", ".join(_describe(s) for s in self.sources)
        if unknown := re.search(r"^E: Unable to locate package (\S+)", output, re.MULTILINE):
            return PackageResolveError(
                f"package '{unknown[1]}' is not in any apt source ({where})",
                hint="check the name's spelling, or add the suite or component that carries it "
                "(e.g. contrib, non-free, non-free-firmware)",
            )
        if version := re.search(r"^E: Version '(.+)' for '(.+)' was not found", output, re.M):
            available = sorted({v for n, v, _ in index if n == version[2]})
            return PackageResolveError(
                f"package '{version[2]}' has no version '{version[1]}' in the apt sources "
                f"(available: {', '.join(available) or 'none'})",
                hint="pin a version the sources carry, or add the suite that has this one",
            )
        start = output.find("The following packages have unmet dependencies:")
        details = output[start:] if start >= 0 else output
        explanation = "\n".join(
            line
            for line in details.splitlines()
            if line.strip() and not line.startswith(("Inst ", "Conf ", *_PROGRESS))
        )
        return PackageResolveError(
            f"apt cannot install the requested packages from {where}:\n{explanation}",
            hint="add the source or component that provides the missing dependency, pin other "
            "versions, or drop one of the conflicting packages",
        )
