"""Bundle commands: keygen, build-bundle, verify-bundle, inspect, pack, unpack."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from appliance.cli.output import Output, human_bytes
from appliance.progress import BarProgress, NullProgress, Progress

# The bundle modules each command needs are imported in that command: build-bundle, run often
# on an unchanged spec, does not pay for pack's or verify's imports.

_PATH = click.Path(path_type=Path)
_PUBKEY = click.option(
    "--pubkey",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The publisher's public key (KEY.pub from `appliance keygen`), carried separately.",
)


@contextmanager
def progress_for(output: Output) -> Iterator[Progress]:
    if output.json_mode or output.verbosity < 0 or not output.console.is_terminal:
        yield NullProgress()
        return
    bars = BarProgress(output.console)
    with bars.running():
        yield bars


@click.command("keygen")
@click.option("-o", "--output", "private", type=_PATH, required=True, help="Private key path.")
@click.option("--comment", default="appliance bundle signing key", show_default=True)
@click.pass_obj
def keygen(output: Output, private: Path, comment: str) -> None:
    """Create a key pair for signing bundles (OpenSSH ed25519).

    Writes the private key to PATH (mode 0600) and the public key to
    PATH.pub. Keep the private key on the build side; carry the .pub to the
    isolated network by a separate, trusted channel. Never overwrites.

    \b
    Example:
      appliance keygen -o ~/.appliance/signing-key
    """
    from appliance.bundle.signing import keygen as make_key

    public = make_key(private, comment)
    output.result(
        {"ok": True, "private_key": str(private), "public_key": str(public)},
        human=f"private key: {private} (keep it secret)\npublic key:  {public} (give it to "
        "the installers)",
    )


@click.command("build-bundle")
# No dir_okay=False: the loader says what is wrong with a directory, --json included.
@click.argument("spec", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", "out", type=_PATH, required=True, help="Bundle directory to create."
)
@click.option("--sign-key", type=_PATH, required=True, help="Private key from `appliance keygen`.")
@click.option(
    "--cache",
    type=_PATH,
    default=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "appliance",
    show_default="~/.cache/appliance",
    help="Download cache keyed by sha256; a rebuild of an unchanged spec downloads nothing.",
)
@click.option("--no-cache", is_flag=True, help="Fetch everything straight into the bundle.")
@click.option("-j", "--jobs", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--target", help="OS/ARCH to build for, when the spec names several.")
@click.option("--force", is_flag=True, help="Replace OUTPUT once the new bundle is complete.")
@click.option(
    "--base",
    type=click.Path(path_type=Path, exists=True),
    help="Build a delta: ship only what this base bundle (its directory or manifest.json) lacks.",
)
@click.option(
    "--repo-key",
    type=_PATH,
    envvar="APPLIANCE_REPO_KEY",
    show_envvar=True,
    help="Armored OpenPGP secret key (no passphrase) that signs the bundle's apt repository. "
    "Default: a key made for this build and thrown away, which nobody holds and so nobody can "
    "steal; bring one to make two builds identical and let hosts trust one repo key across "
    "releases.",
)
@click.pass_obj
def build_bundle_command(
    output: Output,
    spec: Path,
    out: Path,
    sign_key: Path,
    cache: Path,
    no_cache: bool,
    jobs: int,
    target: str | None,
    force: bool,
    base: Path | None,
    repo_key: Path | None,
) -> None:
    """Fetch, pin and sign everything SPEC names into one bundle directory.

    Validates the whole spec first, then fetches in parallel through a
    sha256-keyed cache: files (resumed and retried), OS packages resolved
    with their dependencies into a signed local apt repository, Python wheels
    for the target, local models, and the Ansible content. Writes a canonical
    manifest.json listing every file, SHA256SUMS, a CycloneDX SBOM and
    install.sh, and signs the manifest. The bundle appears only when complete.

    \b
    Example:
      appliance keygen -o signing-key
      appliance build-bundle examples/demo.yaml -o build/demo --sign-key signing-key
    """
    # Imported here: the build's modules are not needed by the other commands.
    from appliance.build import BuildOptions, build_bundle

    options = BuildOptions(
        spec_path=spec,
        output=out,
        sign_key=sign_key,
        cache=None if no_cache else cache,
        jobs=jobs,
        target=target,
        force=force,
        base=base / "manifest.json" if base is not None and base.is_dir() else base,
        repo_key=repo_key,
    )
    with progress_for(output) as progress:
        report = build_bundle(options, progress)
    for warning in report.warnings:
        output.warning(warning)
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(report.by_kind.items()))
    output.result(
        {
            "ok": True,
            "bundle": str(report.output),
            "name": report.name,
            "release": report.release,
            "files": report.files,
            "bytes": report.bytes,
            "fetched": {"files": report.fetched_count, "bytes": report.fetched_bytes},
            "from_cache": {"files": report.cached_count, "bytes": report.cached_bytes},
            "by_kind": report.by_kind,
            "seconds": round(report.seconds, 2),
            "warnings": report.warnings,
        },
        human=(
            f"built {report.output}: {report.name} {report.release}, {report.files} files, "
            f"{human_bytes(report.bytes)} in {report.seconds:.1f} s\n"
            f"  fetched:    {report.fetched_count} ({human_bytes(report.fetched_bytes)})\n"
            f"  from cache: {report.cached_count} ({human_bytes(report.cached_bytes)})\n"
            f"  contents:   {kinds}"
        ),
    )


@click.command("verify-bundle")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
@_PUBKEY
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--base",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="For a delta: the base bundle directory it names, to check what it does not carry.",
)
@click.pass_obj
def verify_bundle(output: Output, bundle: Path, pubkey: Path, jobs: int, base: Path | None) -> None:
    """Verify BUNDLE (a directory, a packed .tar, or a .parts.json index) offline.

    Checks the layout (no links, device files, or files the manifest does not
    list), the signature over the manifest, then every file's size and sha256.
    Exit codes: 10 bad signature, 11 corrupt content, 12 unsafe layout.

    The same check with stock tools only (run inside the bundle):

    \b
      ssh-keygen -Y verify -f <(echo "appliance-bundle-signer $(cut -d' ' -f1,2 KEY.pub)") \\
        -I appliance-bundle-signer -n appliance-bundle -s SHA256SUMS.sig < SHA256SUMS \\
        && sha256sum -c SHA256SUMS
    """
    from appliance.bundle.verify import open_bundle

    with progress_for(output) as progress, open_bundle(bundle, pubkey, base=base) as opened:
        report = opened.check(jobs=jobs, progress=progress)
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
    output.result(
        {
            "ok": True,
            "bundle": str(bundle),
            "name": report.manifest.name,
            "release": report.manifest.release,
            "files": report.files,
            "bytes": report.bytes,
            "seconds": round(report.seconds, 3),
            "unchecked_from_base": report.unchecked_from_base,
        },
        human=f"{bundle}: verified {report.manifest.name} {report.manifest.release}: signature "
        f"good, {report.files} files, {human_bytes(report.bytes)} intact "
        f"({report.seconds:.1f} s, {rate:.0f} MB/s)"
        + (
            f"\n  delta on {report.manifest.base.release}: {report.unchecked_from_base} files "
            "come from that base and were not checked here (pass --base DIR)"
            if report.manifest.base and report.unchecked_from_base
            else ""
        ),
    )


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--pubkey",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Check the manifest's signature with this key first (the files are not read).",
)
@click.pass_obj
def inspect(output: Output, bundle: Path, pubkey: Path | None) -> None:
    """Show what BUNDLE holds: components, versions, sizes, counts.

    Without --pubkey, reads the manifest without verifying it; run
    verify-bundle before you trust what it says.
    """
    from appliance.bundle.inspect import read_manifest, summary
    from appliance.bundle.verify import open_bundle

    if pubkey is None:
        manifest, trust = read_manifest(bundle), "not verified; see verify-bundle"
    else:
        with open_bundle(bundle, pubkey) as opened:
            manifest, trust = opened.manifest, "signed manifest; files not read"
    info = summary(manifest)
    lines = [
        f"{bundle}: {info['name']} {info['release']} ({info['target']['os']}/"
        f"{info['target']['arch']}), built {info['created']} by appliance "
        f"{info['appliance_version']}",
        f"  {info['files']} files, {human_bytes(info['bytes'])} ({trust})",
        "  by kind:",
        *(
            f"    {kind:<16} {v['files']:>5} files {human_bytes(v['bytes']):>10}"
            for kind, v in sorted(info["kinds"].items())
        ),
        "  components:",
        *(
            f"    {c['kind']:<16} {c['name']:<40} {c['version'] or '-':<28} "
            f"{human_bytes(c['bytes']):>10}{_required_by(c.get('required_by', []))}"
            for c in info["components"]
        ),
    ]
    if info["not_carried"]:
        lines.append("  not in this bundle, the hosts must already have them:")
        lines += [
            f"    {package:<40}{_required_by(roles)}"
            for package, roles in sorted(info["not_carried"].items())
        ]
    if info["models"]:
        lines.append("  models:")
        lines += [
            f"    {m['name']:<24} {m['files']:>5} files {human_bytes(m['bytes']):>10}  "
            f"{m['source']} @ {m['version'] or '-'}"
            for m in info["models"]
        ]
    if info["repo"]:
        lines.append(f"  apt repo: {info['repo']['path']}/, key {info['repo']['fingerprint']}")
    lines += [f"  note: {note}" for note in info["notes"]]
    output.result(
        {"ok": True, "signature_checked": pubkey is not None, **info}, human="\n".join(lines)
    )


def _required_by(roles: list[str]) -> str:
    if not roles:
        return ""
    return f"  required by role{'s' if len(roles) > 1 else ''} {', '.join(roles)}"


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    from appliance.bundle.parts import parse_size

    try:
        return parse_size(value) if value is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("pack")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--output", "out", type=_PATH, required=True, help="Tar file, or - for stdout.")
@click.option(
    "--max-part-size",
    callback=_size,
    metavar="SIZE",
    help="Split into parts of at most SIZE (e.g. 4G) plus OUTPUT.parts.json, for media.",
)
@click.pass_obj
def pack_command(output: Output, bundle: Path, out: Path, max_part_size: int | None) -> None:
    """Pack BUNDLE into one tar file, or into numbered parts, streaming.

    Manifest and signatures come first, so readers verify before payload.
    With --max-part-size, parts OUTPUT.001, .002, ... are written as the
    archive streams, with an index (OUTPUT.parts.json) of each part's size and
    sha256; unpack and verify-bundle take that index and check every part
    before joining.

    \b
    Examples:
      appliance pack build/demo -o demo.tar
      appliance pack build/demo -o /media/usb/demo.tar --max-part-size 4G
    """
    from appliance.bundle.pack import pack
    from appliance.bundle.parts import PartWriter

    if str(out) == "-":
        pack(bundle, sys.stdout.buffer)
        return
    if max_part_size is not None:
        writer = PartWriter(out, max_part_size)
        count = pack(bundle, writer)  # type: ignore[arg-type]
        index = writer.close()
        output.result(
            {
                "ok": True,
                "index": str(index),
                "members": count,
                "parts": [
                    {"name": p.name, "size": p.size, "sha256": p.sha256} for p in writer.parts
                ],
            },
            human=f"packed {bundle} into {len(writer.parts)} parts of at most "
            f"{human_bytes(max_part_size)}: {index}",
        )
        return
    partial = out.with_name(f".{out.name}.partial")
    with partial.open("wb") as handle:
        count = pack(bundle, handle)
    partial.replace(out)
    output.result(
        {"ok": True, "archive": str(out), "members": count, "bytes": out.stat().st_size},
        human=f"packed {bundle} into {out}: {count} files, {human_bytes(out.stat().st_size)}",
    )


@click.command("unpack")
@click.argument("archive", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("-o", "--output", "destination", type=_PATH, required=True)
@_PUBKEY
@click.pass_obj
def unpack_command(output: Output, archive: Path, destination: Path, pubkey: Path) -> None:
    """Verify ARCHIVE (a .tar, or a .parts.json index) and unpack it into a new directory.

    Every member is checked against the signed manifest while it streams,
    into a staging directory; the destination appears only if all verified.
    """
    from appliance.bundle.pack import unpack

    report = unpack(archive, destination, pubkey)
    output.result(
        {"ok": True, "bundle": str(destination), "files": report.files, "bytes": report.bytes},
        human=f"unpacked and verified {archive} into {destination}: {report.files} files, "
        f"{human_bytes(report.bytes)}",
    )
