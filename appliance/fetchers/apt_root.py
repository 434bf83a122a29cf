"""apt in a root of its own: configuration, state and cache under one directory.

Nothing of the build machine's apt set-up is read (``APT_CONFIG`` points at a file written
here), so what apt answers depends only on the sources, pins and status given.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import PackageResolveError
from appliance.fetchers.apt_repo import parse_field
from appliance.spec.models import AptSource, Packages
from appliance.spec.nvidia import NvidiaAptSource

Source = AptSource | NvidiaAptSource
# Called with each watched package's candidate version (None: no source has it), before apt
# solves: it may refuse the plan with a clearer message than apt's unmet dependencies.
CandidateCheck = Callable[[Mapping[str, "Candidate"]], None]
# A version row of `apt-cache policy`: "     VERSION PRIORITY", the installed one starred.
_VERSION_ROW_RE = re.compile(r"^ {5}(?:\*\*\* )?(\S+) -?[0-9]+$")
# `Inst NAME [OLD] (VERSION RELEASE[, RELEASE...] [ARCH])`, as `apt-get -s` prints it.
_INST_RE = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([^\]]+)\]\)", re.MULTILINE)
# apt's progress lines, noise in an error report.
_PROGRESS = ("Reading package lists", "Building dependency tree", "Reading state information")
# Fields of an index entry that describe the .deb file, not the installed package.
_FILE_FIELDS = ("Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512", "Description-md5")


@dataclass(frozen=True)
class Candidate:
    """What apt would install of a package (None: nothing), and every version it could."""

    version: str | None
    available: list[str]


@dataclass(frozen=True)
class Entry:
    """One paragraph of a fetched Packages index, with the source that serves it."""

    control: str
    source: Source


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


def _describe(source: Source) -> str:
    if isinstance(source, NvidiaAptSource):
        return f"{source.url} (NVIDIA, flat)"
    return f"{source.url} ({' '.join(source.suites)}; {' '.join(source.components)})"


class AptRoot:
    """An apt configuration, state and cache of its own, under one directory."""

    def __init__(
        self, root: Path, arch: str, sources: Sequence[Source], preferences: str = ""
    ) -> None:
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
        (self.root / "etc/preferences").write_text(preferences)
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
            # NVIDIA's repositories are flat: the suite is the path "/", with no components.
            if isinstance(source, NvidiaAptSource):
                where = "Suites: /\n"
            else:
                suites, components = " ".join(source.suites), " ".join(source.components)
                where = f"Suites: {suites}\nComponents: {components}\n"
            stanzas.append(f"Types: deb\nURIs: {source.url}\n{where}Signed-By: {copy}\n")
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
        return self._run_tool(str(self.apt_get), *args)

    def _run_tool(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if key != "LANGUAGE"}
        # apt's messages are parsed below, so they must not be translated.
        env.update(APT_CONFIG=str(self.config), LC_ALL="C.UTF-8")
        return subprocess.run(  # noqa: S603 - fixed executable, arguments validated by the spec
            [tool, *args], capture_output=True, text=True, env=env, check=False
        )

    def fingerprint(self, packages: Packages, preferences: str) -> str:
        """Digest of the signed Release files apt now holds and of the request."""
        digest = hashlib.sha256(packages.model_dump_json().encode() + preferences.encode())
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

    def read_index(self) -> dict[tuple[str, str, str], Entry]:
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
        index: dict[tuple[str, str, str], Entry] = {}
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
                    index.setdefault((key[0], key[1], key[2]), Entry(control, source))
        return index

    def candidates(self, names: Sequence[str]) -> dict[str, Candidate]:
        """What apt would install of each of ``names`` (pins obeyed), and every version the
        sources carry of it."""
        apt_cache = Path(str(self.apt_get)).with_name("apt-cache")
        result = self._run_tool(str(apt_cache), "policy", "--", *names)
        found = {name: Candidate(None, []) for name in names}
        current: str | None = None
        for line in result.stdout.splitlines():
            if line and not line[0].isspace() and line.endswith(":"):
                current = line[:-1].partition(":")[0]
            elif current not in found:
                continue
            elif line.strip().startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
                found[current] = Candidate(None if version == "(none)" else version, [])
            elif match := _VERSION_ROW_RE.match(line):
                found[current].available.append(match[1])
        return found

    def write_status(self, controls: list[str]) -> None:
        self.status.write_text("".join(_status_paragraph(c) + "\n\n" for c in controls))

    def simulate(
        self, requested: Sequence[str], index: dict[tuple[str, str, str], Entry]
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
        self, output: str, index: dict[tuple[str, str, str], Entry]
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
