"""``appliance models``: site models (fine-tuned inside the boundary) beside the bundle's."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli import options as option
from appliance.cli.output import Output, human_bytes
from appliance.errors import SiteModelError
from appliance.gateway.config import DEFAULT_CONFIG
from appliance.site import listing
from appliance.site import models as site_models
from appliance.site.models import DEFAULT_SITE_DIR, DEFAULT_STORE, FORMATS, SitePaths
from appliance.store import DEFAULT_CONFIG as DEFAULT_STORE_CONFIG
from appliance.store import PublishReport

_SITE_DIR = click.option(
    "--site-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_SITE_DIR,
    show_default=True,
    help="The site manifest and the site's signing key.",
)
_STORE = click.option(
    "--store",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STORE,
    show_default=True,
    help="The object store (filesystem) that keeps model files by digest.",
)
_STORE_CONFIG = click.option(
    "--store-config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path(DEFAULT_STORE_CONFIG),
    show_default=True,
    help="The depot's S3 store (object_store: minio), as install configured it; where this "
    "file is, model files go into that store instead of --store.",
)


@click.group("models")
def models_group() -> None:
    """Serve models fine-tuned inside the boundary (site models) beside the bundle's.

    A site model never travels in a bundle: `models add` hashes its files
    into the store on the depot and records each file's sha256 in the site
    manifest, signed with a key made on this machine at first use (root
    only; the public key lies beside it). The next `appliance install`
    (install.sh with the same bundle, or any later release) serves it like
    a bundle model: the runtime checks every file against the signed
    digests before it starts, the gateway lists it, and every audit record
    of a call to it carries its digest. Site models live outside the release
    directories: upgrades keep them.

    \b
    Examples:
      appliance models add /srv/finetuned/support-v3 --name support-v3
      /media/bundle/install.sh --pubkey signing-key.pub   # serves it
      appliance models list
      appliance models remove support-v3
    """


@models_group.command("add")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--name", required=True, help="The model's name for clients (unique, path-safe).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="gguf (llama.cpp) or safetensors (vLLM). Default: from the files.",
)
@option.root()
@_SITE_DIR
@_STORE
@_STORE_CONFIG
@click.pass_obj
def add_command(
    output: Output,
    directory: Path,
    name: str,
    fmt: str | None,
    root: Path,
    site_dir: Path,
    store: Path,
    store_config: Path,
) -> None:
    """Hash a model directory into the store and record it as a site model.

    Every file of DIRECTORY is copied into the store while it is hashed; the
    site manifest records each file's sha256 and the model's digest, and is
    signed again. The name may not be one of the installed bundle's models.

    \b
    Examples:
      appliance models add ./support-v3 --name support-v3
      appliance models add ./ckpt --name legal-7b --format safetensors --json
    """
    paths = SitePaths(site_dir, store, store_config)
    model, made_key, report = site_models.add_to_store(
        directory, name, paths, listing.bundle_models(root), fmt
    )
    key_note = (
        f"Made the site's signing key {site_dir / 'site-key'} (root only) and its public key "
        f"{site_dir / 'site-key.pub'}.\n"
        if made_key
        else ""
    )
    output.result(
        {
            "ok": True,
            "model": model.model_dump(mode="json"),
            "size": model.size,
            "key_made": made_key,
            "store": None if report is None else report._asdict(),
        },
        human=f"{key_note}Added site model {model.name}: {model.format}, {len(model.files)} "
        f"file(s), {human_bytes(model.size)}, {model.digest}.\n"
        "Run appliance install again (install.sh --pubkey KEY, as before) to serve it."
        + _store_note(report, paths),
    )


def _store_note(report: PublishReport | None, paths: SitePaths) -> str:
    if report is None:
        return ""
    return (
        f"\nS3 store ({paths.store_config}): uploaded {len(report.uploaded)} file(s), each read "
        f"back and matched; {len(report.present)} already there, not uploaded again. Any GPU "
        "node can serve it."
    )


@models_group.command("list")
@option.root()
@_SITE_DIR
@_STORE
@click.option(
    "--gateway-config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The gateway's config, which says where each model is served.",
)
@click.pass_obj
def list_command(
    output: Output, root: Path, site_dir: Path, store: Path, gateway_config: Path
) -> None:
    """List the bundle's and the site's models: origin, digest, size, where served.

    "served" is the runtime the gateway routes the model to, when the
    gateway on this host routes that name to that exact digest; "-" means not
    served yet (run install) or not by this host's gateway. The site
    manifest's signature is checked first.
    """
    rows = listing.list_models(root, SitePaths(site_dir, store), gateway_config)
    table = [("NAME", "ORIGIN", "FORMAT", "SIZE", "DIGEST", "SERVED")] + [
        (
            r["name"],
            f"bundle {r['release']}" if r["origin"] == "bundle" else "site",
            r["format"] or "-",
            human_bytes(r["size"]),
            r["digest"],
            r["served"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    output.result({"ok": True, "models": rows}, human="\n".join(lines) if rows else "no models")


@models_group.command("remove")
@click.argument("name")
@option.root()
@_SITE_DIR
@_STORE
@_STORE_CONFIG
@click.pass_obj
def remove_command(
    output: Output, name: str, root: Path, site_dir: Path, store: Path, store_config: Path
) -> None:
    """Remove a site model from the site manifest, and its files from the store.

    Files that another model shares stay. The runtime stops serving it at
    the next install. Bundle models cannot be removed here: they belong to
    their release.
    """
    if name in listing.bundle_models(root):
        raise SiteModelError(
            f"{name} is a model of the installed bundle, not a site model",
            hint="a bundle model leaves with its release; `appliance models list` shows origins",
        )
    paths = SitePaths(site_dir, store, store_config)
    model = site_models.remove(name, paths, listing.bundle_digests(root))
    output.result(
        {"ok": True, "removed": model.name, "digest": model.digest},
        human=f"Removed site model {model.name} ({model.digest}). Run appliance install again "
        "to stop serving it.",
    )
