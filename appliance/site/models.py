"""Site models on the depot: add one from a directory, list them beside the bundle's, remove
one, and hand them to install in the form the runtime roles read (``Manifest.models()``'s).

The site manifest and key live in the site directory, the files in the digest-keyed store:
both outside the release directories, so installing another release keeps every site model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import files_digest
from appliance.errors import SiteModelError
from appliance.site import manifest as site_manifest
from appliance.site import store as s3
from appliance.site.manifest import SiteFile, SiteManifest, SiteModel, check_name
from appliance.store import DEFAULT_CONFIG, PublishReport, S3Store, file_sha256

DEFAULT_SITE_DIR = Path("/var/lib/appliance/site")
# The object store's directory backend (object_store: filesystem) and its layout, as the
# object_store role's appliance_store module_utils defines them: <root>/<bucket>/sha256/<hex>
# for a file's bytes, records such as the site manifest under <root>/<bucket>/site/.
DEFAULT_STORE = Path("/var/lib/appliance/store")
MODELS_BUCKET = "models"
BLOB_PREFIX = "sha256"
RECORD_PREFIX = "site"
CHUNK = 1 << 20
FORMATS = ("gguf", "safetensors")
# A file name inside a model directory: it ends up in a unit's environment file, unquoted.
_FILE_NAME = re.compile(r"^[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*$")
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class SitePaths:
    site_dir: Path = DEFAULT_SITE_DIR
    store: Path = DEFAULT_STORE
    # The depot's S3 store (object_store: minio), where the object_store role configured one:
    # site models then go there (site/store.py), else into the directory ``store``.
    store_config: Path | None = Path(DEFAULT_CONFIG)

    def blob(self, sha256: str) -> Path:
        """Where the store keeps the file of this digest."""
        return self.store / MODELS_BUCKET / BLOB_PREFIX / sha256

    def record(self, name: str) -> Path:
        return self.store / MODELS_BUCKET / RECORD_PREFIX / name


def _put(paths: SitePaths, source: Path) -> SiteFile:
    """Copy ``source`` into the store under its sha256, hashed while it is copied; the object
    appears under its name, by a rename, only once complete (an object there is never
    rewritten: same name, same bytes)."""
    digest = hashlib.sha256()
    bucket = paths.store / MODELS_BUCKET / BLOB_PREFIX
    bucket.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".incoming-", suffix=".partial", dir=bucket)
    partial = Path(name)
    try:
        size = 0
        with source.open("rb") as reader, os.fdopen(fd, "wb") as writer:
            while block := reader.read(CHUNK):
                digest.update(block)
                writer.write(block)
                size += len(block)
            writer.flush()
            os.fsync(writer.fileno())
        final = paths.blob(digest.hexdigest())
        if not final.exists():
            partial.chmod(0o444)
            partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    return SiteFile(name=source.name, sha256=digest.hexdigest(), size=size)


def _publish_records(paths: SitePaths, store: S3Store | None = None) -> None:
    """A copy of the signed site manifest in the store beside the objects it names, so that
    whatever reads the store can check them (the site directory keeps the original)."""
    if store is not None:
        s3.publish_records(store, paths.site_dir)
        return
    target = paths.record(site_manifest.MANIFEST).parent
    target.mkdir(parents=True, exist_ok=True)
    for name in (site_manifest.SIGNATURE, site_manifest.MANIFEST, site_manifest.PUBLIC_KEY):
        shutil.copyfile(paths.site_dir / name, target / f".{name}.partial")
        (target / f".{name}.partial").replace(target / name)


@contextlib.contextmanager
def _locked(site_dir: Path) -> Iterator[None]:
    """One writer at a time: two adds at once would each sign a manifest without the other."""
    try:
        site_dir.mkdir(parents=True, exist_ok=True)
        handle = (site_dir / ".lock").open("a")
    except PermissionError as exc:
        raise SiteModelError(
            f"cannot write {site_dir}: {exc.strerror}",
            hint="site models are the depot's: run appliance models as root there",
        ) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def model_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory``, sorted; links and special files are refused
    (a link could make the store take a file from anywhere)."""
    if not directory.is_dir():
        raise SiteModelError(
            f"{directory} is not a directory",
            hint="pass the directory that holds the model's files (a GGUF file, or a Hugging "
            "Face checkpoint with config.json and *.safetensors)",
        )
    found: list[Path] = []
    for current, dirs, files in os.walk(directory):
        for entry in sorted(dirs + files):
            path = Path(current) / entry
            mode = path.lstat().st_mode
            relative = path.relative_to(directory).as_posix()
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SiteModelError(
                    f"{path} is a link or special file; a model directory holds plain files",
                    hint="copy the files the link points at into the directory instead",
                )
            if stat.S_ISREG(mode):
                if not _FILE_NAME.match(relative):
                    raise SiteModelError(
                        f"{path}: file names in a model directory are letters, digits, "
                        "'.', '_', '+' and '-'",
                        hint="rename the file",
                    )
                found.append(path)
    if not found:
        raise SiteModelError(f"{directory} holds no files", hint="pass the model's directory")
    return sorted(found)


def detect_format(directory: Path, files: Sequence[Path], wanted: str | None) -> str:
    names = [f.name for f in files]
    if wanted is None:
        if any(n.endswith(".gguf") for n in names):
            wanted = "gguf"
        elif any(n.endswith(".safetensors") for n in names):
            wanted = "safetensors"
        else:
            raise SiteModelError(
                f"{directory}: neither a GGUF file nor *.safetensors weights",
                hint="llama.cpp serves GGUF files, vLLM Hugging Face checkpoints (safetensors)",
            )
    for path in files:
        if wanted == "gguf" and path.name.endswith(".gguf"):
            with path.open("rb") as handle:
                if handle.read(4) != _GGUF_MAGIC:
                    raise SiteModelError(
                        f"{path} does not start with the GGUF magic bytes",
                        hint="the file is damaged or not a GGUF model",
                    )
    return wanted


def add(
    directory: Path,
    name: str,
    paths: SitePaths,
    bundle_models: Mapping[str, str],
    fmt: str | None = None,
) -> tuple[SiteModel, bool]:
    """Hash ``directory``'s files into the store and record them as site model ``name``;
    returns the model and whether the site's signing key was made now (``add_to_store`` also
    says what was uploaded)."""
    model, made_key, _ = add_to_store(directory, name, paths, bundle_models, fmt)
    return model, made_key


def add_to_store(
    directory: Path,
    name: str,
    paths: SitePaths,
    bundle_models: Mapping[str, str],
    fmt: str | None = None,
) -> tuple[SiteModel, bool, PublishReport | None]:
    """``add``, and the S3 store's report of the upload (None: the directory store).

    ``bundle_models`` maps the installed bundle's model names to its release: a site model
    never takes one of those names.
    """
    check_name(name)
    if name in bundle_models:
        raise SiteModelError(
            f"model name {name!r} belongs to a model of the installed bundle (release "
            f"{bundle_models[name]})",
            hint="site models take names of their own: pass another --name",
        )
    files = model_files(directory)
    fmt = detect_format(directory, files, fmt)
    store = s3.open_s3(paths.store_config)
    report = None
    with _locked(paths.site_dir):
        made_key = site_manifest.ensure_key(paths.site_dir)
        current = site_manifest.load(paths.site_dir)
        existing = current.model(name)
        if existing is not None:
            raise SiteModelError(
                f"site model {name!r} exists ({existing.digest}, added {existing.added})",
                hint=f"remove it first (appliance models remove {name}), or pass another --name",
            )
        if store is None:
            recorded = [
                _put(paths, p).model_copy(update={"name": p.relative_to(directory).as_posix()})
                for p in files
            ]
        else:
            hashed = [(p, _hashed(p, p.relative_to(directory).as_posix())) for p in files]
            report = s3.publish_files(store, hashed)
            recorded = [f for _, f in hashed]
        model = SiteModel(
            name=name,
            format=fmt,
            digest=files_digest([(f.name, f.sha256) for f in recorded]),
            added=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            files=recorded,
        )
        site_manifest.save(paths.site_dir, SiteManifest(models=[*current.models, model]))
        _publish_records(paths, store)
    return model, made_key, report


def _hashed(path: Path, name: str) -> SiteFile:
    return SiteFile(name=name, sha256=file_sha256(str(path)), size=path.stat().st_size)


def remove(name: str, paths: SitePaths, keep: set[str]) -> SiteModel:
    """Drop site model ``name`` from the manifest, and its files from the store unless another
    model (a site model, or a bundle file in ``keep``) has the same bytes."""
    with _locked(paths.site_dir):
        current = site_manifest.load(paths.site_dir)
        model = current.model(name)
        if model is None:
            known = ", ".join(m.name for m in current.models) or "none"
            raise SiteModelError(
                f"no site model named {name!r} (site models: {known})",
                hint="`appliance models list` shows every model and its origin",
            )
        store = s3.open_s3(paths.store_config)
        if store is not None:
            s3.reachable(store)
        rest = [m for m in current.models if m.name != name]
        site_manifest.save(paths.site_dir, SiteManifest(models=rest))
        _publish_records(paths, store)
        used = keep | {f.sha256 for m in rest for f in m.files}
        unused = {f.sha256 for f in model.files} - used
        for sha256 in unused:
            paths.blob(sha256).unlink(missing_ok=True)
        if store is not None:
            s3.remove_objects(store, unused)
    return model


def for_install(
    paths: SitePaths, bundle_models: Mapping[str, str], object_store: str = "filesystem"
) -> list[dict[str, Any]]:
    """The site's models as the runtime roles read models (``Manifest.models()``'s shape, plus
    ``origin``), from the verified site manifest.

    A file in the directory store carries its ``src`` there (the depot's artifacts read it;
    with an S3 store the object_store role publishes it from there). With ``object_store``
    other than filesystem a file may instead be in the S3 store alone, which every node
    fetches from by digest. Refuses a bundle model that took a site model's name, and a file
    in neither store. The bytes themselves are checked on each host before its runtime starts.
    """
    site = site_manifest.load(paths.site_dir)
    models = []
    store: S3Store | None = None
    for model in site.models:
        if model.name in bundle_models:
            raise SiteModelError(
                f"release {bundle_models[model.name]} has a model named {model.name!r}, the "
                f"name of a site model ({model.digest}, added {model.added})",
                hint=f"remove the site model (appliance models remove {model.name}) and add it "
                "again under another name, then install again; nothing was changed",
            )
        files = []
        for file in model.files:
            entry: dict[str, Any] = {
                "name": file.name,
                "path": f"site/{file.sha256}",
                "sha256": file.sha256,
                "size": file.size,
            }
            blob = paths.blob(file.sha256)
            if blob.is_file() and blob.stat().st_size == file.size:
                entry["src"] = str(blob)
            else:
                if object_store != "filesystem" and store is None:
                    store = s3.open_s3(paths.store_config)
                if store is None or not s3.holds(store, file):
                    where = paths.store if store is None else f"{paths.store} nor {store.endpoint}"
                    raise SiteModelError(
                        f"site model {model.name}: {file.name} (sha256 {file.sha256}) is missing "
                        f"from the store {where} or has another size",
                        hint=f"add the model again (appliance models remove {model.name}; "
                        "appliance models add DIR --name ...), then install again; nothing was "
                        "changed",
                    )
            files.append(entry)
        models.append(
            {
                "name": model.name,
                "version": None,
                "format": model.format,
                "source": "site",
                "origin": "site",
                "digest": model.digest,
                "files": files,
            }
        )
    return models
